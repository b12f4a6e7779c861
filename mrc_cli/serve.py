"""`mrc serve`: a trained model behind HTTP. `POST /answer` with one context and its questions; concurrent requests
are gathered into one `Reader` call; `/health`, `/metrics`, the OpenAPI page at `/docs` and a page to try it at `/`.

FastAPI on uvicorn because both are maintained and widely deployed, FastAPI writes the OpenAPI page from the request
and answer models, and pydantic's validation of those models gives 422 answers that name the field and the problem
without code of ours. The server adds no inference of its own: every answer comes from `Reader` (features, decoding,
the stored null threshold), so it is `mrc predict`'s answer to the same question.

From Python: `create_app(Reader.load("runs/a"))` is an ASGI app for any server or test client;
`serve("runs/a", port=8000)` loads the model and runs uvicorn.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from mrc_cli import __version__
from mrc_cli.data import is_blank
from mrc_cli.errors import CheckpointError, ConfigError
from mrc_cli.serve_settings import ServeSettings
from mrc_cli.serve_batching import STOPS, RequestBatcher, ServeMetrics
from mrc_cli.serve_page import PAGE

if TYPE_CHECKING:  # imported where the model loads: torch and transformers take ~10 s, and the server listens first
    from mrc_cli.reader import Reader

log = logging.getLogger("mrc_cli.serve")


# --- the contract ----------------------------------------------------------------------------------------------------


class AnswerRequest(BaseModel):
    """One context and the questions to answer about it."""

    model_config = ConfigDict(extra="forbid")  # {"question": ...} for "questions" is named, not silently ignored

    context: StrictStr = Field(min_length=1, description="The text to answer from.")
    questions: list[StrictStr] = Field(min_length=1, description="Questions about the context, answered in this order.")

    @field_validator("context")
    @classmethod
    def _context_has_text(cls, context: str) -> str:
        if is_blank(context):
            raise ValueError("the context is only whitespace (or invisible characters)")
        return context

    @field_validator("questions")
    @classmethod
    def _questions_have_text(cls, questions: list[str]) -> list[str]:
        empty = [i for i, question in enumerate(questions) if is_blank(question)]
        if empty:  # `mrc predict` leaves such questions out; here the asker learns which
            raise ValueError(f"entries {empty} are empty or only whitespace (or invisible characters)")
        return questions


class Answer(BaseModel):
    question: str
    text: str = Field(description='The answer; "" where the model finds none (SQuAD v2 models) or no span fits.')
    start: int = Field(description="Character offset of the answer in the context; -1 for no answer.")
    end: int = Field(description="Character offset just after the answer (context[start:end] == text); -1 for none.")
    probability: float = Field(description="The n-best probability of the answer given (of the null answer for \"\").")
    no_answer_probability: float | None = Field(
        description="The probability of the null answer; null for models that always answer (SQuAD v1.1).")


class AnswerResponse(BaseModel):
    answers: list[Answer]


# --- the app ---------------------------------------------------------------------------------------------------------


class _BodyLimit:
    """413 for a body over max_body_bytes, from Content-Length before reading, or while reading a chunked body; a
    plain ASGI middleware so the body is never read whole first."""

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = (f"the request body is over {self.max_body_bytes:,} bytes (mrc serve --max-body-bytes); send "
                   "fewer questions or a shorter context")
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            event = await receive()
            received += len(event.get("body", b""))
            if received > self.max_body_bytes:
                raise HTTPException(413, message)  # FastAPI re-raises it from body parsing: a 413 answer
            return event

        await self.app(scope, limited_receive, send)


class _AnswerMetrics:
    """Counts every POST /answer, its status and, when answered, its latency (arrival to first byte)."""

    def __init__(self, app, metrics: ServeMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/answer" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]  # 500: the app raised before answering

        async def send_and_record(event):
            if event["type"] == "http.response.start":
                status[0] = event["status"]
                if status[0] == 200:
                    self.metrics.latencies_ms.append(1000 * (time.perf_counter() - started))
            await send(event)

        self.metrics.requests += 1
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            if status[0] >= 400:
                self.metrics.errors[status[0]] += 1


def create_app(reader: Reader | None = None, settings: ServeSettings | None = None,
               load: Callable[[], Reader] | None = None) -> FastAPI:
    """The ASGI app. Give a loaded `reader`, or `load` (called in the model's thread at startup: /health answers 503
    and /answer 503 until it returns)."""
    if (reader is None) == (load is None):
        raise ValueError("create_app takes a reader or a load function, one of the two")
    settings = settings or ServeSettings()
    metrics = ServeMetrics(settings.latency_window)
    batcher = RequestBatcher(settings.max_batch, settings.max_wait_ms, metrics, reader)
    status = {"load_error": None}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        worker = asyncio.create_task(batcher.run())
        if load is not None:
            asyncio.create_task(_load_in_model_thread(batcher, load, status))
        yield
        worker.cancel()
        batcher.model_thread.shutdown(wait=False)

    # FastAPI's /docs loads Swagger UI from a CDN: a blank page on the offline machines competitions run on
    app = FastAPIOffline(title="mrc serve", lifespan=lifespan, description=__doc__.split("\n\n")[0],
                         version=__version__)
    app.add_middleware(_BodyLimit, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(_AnswerMetrics, metrics=metrics)  # added last, so outermost: it counts the 413s above too
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)  # FastAPI raises Starlette's on a bad body

    @app.post("/answer", response_model=AnswerResponse, responses={
        413: {"description": "The body, the context, a question or the number of questions is over its limit."},
        422: {"description": "Not JSON, or not {\"context\": str, \"questions\": [str, ...]}; `detail` says what."},
        503: {"description": "The model is still loading."}})
    async def answer(request: AnswerRequest) -> AnswerResponse:
        """Answer every question about the context, in the order asked."""
        _check_limits(request, settings)
        if not batcher.started:
            raise HTTPException(503, NOT_STARTED)
        if batcher.reader is None:
            raise HTTPException(503, "the model is still loading; GET /health answers 200 once it is ready")
        try:
            answers = await batcher.answer(request.questions, request.context)
        except BaseException as err:
            if isinstance(err, STOPS):
                raise
            raise HTTPException(500, f"the model failed on this request: {type(err).__name__}: {err}") from err
        metrics.questions += len(answers)
        return AnswerResponse(answers=[
            Answer(question=q, text=a["answer"], start=a["start"], end=a["end"], probability=a["probability"],
                   no_answer_probability=a["no_answer_probability"]) for q, a in zip(request.questions, answers)])

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 once the model is loaded; 503 while it loads or after it failed to load."""
        if not batcher.started:
            return JSONResponse({"status": "not started", "detail": NOT_STARTED}, status_code=503)
        if batcher.reader is not None:
            return JSONResponse({"status": "ready", "backend": batcher.reader.backend})
        if status["load_error"]:
            return JSONResponse({"status": "failed", "detail": status["load_error"]}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.get("/metrics")
    async def metrics_route() -> dict:
        """Requests, questions answered, errors by status, latency percentiles (ms) and Reader batch sizes."""
        return {**metrics.snapshot(), "max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return PAGE

    return app


# the batcher's worker and the model's thread start with the app's lifespan, on the loop that serves the requests
NOT_STARTED = ("the app's startup has not run, so nothing answers: serve it with lifespan events on (uvicorn's "
               "default), or in tests use `with TestClient(app) as client:`")


async def _load_in_model_thread(batcher: RequestBatcher, load: Callable[[], Reader], status: dict) -> None:
    try:
        batcher.reader = await asyncio.get_running_loop().run_in_executor(batcher.model_thread, load)
        log.info("model loaded (backend %s): /health answers 200", batcher.reader.backend)
    except Exception as err:
        status["load_error"] = f"{type(err).__name__}: {err}"
        log.error("the model failed to load: %s", status["load_error"])


def _check_limits(request: AnswerRequest, settings: ServeSettings) -> None:
    """413 for what is over a size limit. The limits are flags, not pydantic constraints, because an oversized
    request is well formed: 413 (too large), not 422 (malformed), and the message names the flag."""
    too_large = None
    if len(request.context) > settings.max_context_chars:
        too_large = (f"the context has {len(request.context):,} characters; this server takes at most "
                     f"{settings.max_context_chars:,} (mrc serve --max-context-chars)")
    elif len(request.questions) > settings.max_questions:
        too_large = (f"{len(request.questions)} questions; this server takes at most {settings.max_questions} a "
                     "request (mrc serve --max-questions)")
    else:
        long = next((i for i, q in enumerate(request.questions) if len(q) > settings.max_question_chars), None)
        if long is not None:
            too_large = (f"question {long} has {len(request.questions[long]):,} characters; this server takes at "
                         f"most {settings.max_question_chars:,} (mrc serve --max-question-chars)")
    if too_large:
        raise HTTPException(413, too_large)


BODY_UNPARSED = {  # what made FastAPI answer 400 "There was an error parsing the body": (error type, message)
    UnicodeDecodeError: ("utf8_invalid", "the body is not UTF-8 text; send a JSON object encoded as UTF-8"),
    RecursionError: ("json_too_deep", "the body's JSON is nested too deeply to read; send a flat JSON object"),
}


async def _http_error(request: Request, exc: StarletteHTTPException):
    """FastAPI's own answers, but for its 400 "There was an error parsing the body" of a body that is not UTF-8
    (valid JSON text is) or JSON nested too deeply for Python's parser: a 422 that says which, like every other
    malformed body."""
    unparsed = next((v for cause, v in BODY_UNPARSED.items() if isinstance(exc.__cause__, cause)), None)
    if exc.status_code == 400 and unparsed:
        kind, what = unparsed
        return JSONResponse({"detail": what, "errors": [{"loc": ["body"], "type": kind, "msg": what}]},
                            status_code=422)
    return await http_exception_handler(request, exc)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one readable line in `detail` and the errors without their `input` (which may be a megabyte)."""
    errors = []
    for error in exc.errors():
        loc = list(error["loc"])
        if error["type"] == "json_invalid":
            reason = error.get("ctx", {}).get("error", error["msg"])
            what = f"the body is not valid JSON: {reason.removesuffix(' at')} at character {loc[-1]}"  # json's own "at"
        elif loc == ["body"] and "json" not in request.headers.get("content-type", ""):
            # FastAPI hands a body not sent as JSON to the model as bytes; "not a dictionary" would not say why
            sent = request.headers.get("content-type")
            what = (f"the body came {f'as {sent}' if sent else 'without a Content-Type'}; send a JSON object with "
                    "Content-Type: application/json")
        else:
            where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc[1:]).lstrip(".")
            what = f"{where or 'the body'}: {error['msg'].removeprefix('Value error, ')}"
        errors.append({"loc": loc, "type": error["type"], "msg": what})
    expected = 'expected {"context": "...", "questions": ["...", ...]}'
    return JSONResponse({"detail": "; ".join(e["msg"] for e in errors) + f" ({expected})", "errors": errors},
                        status_code=422)


def serve(checkpoint: str, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings | None = None,
          backend: str = "auto") -> None:
    """`mrc serve`: listen at once (/health answers 503 while the model loads), load the checkpoint to answer with
    `backend` (mrc_cli.backends), answer until Ctrl-C. A model that fails to load stops the server and raises its
    error."""
    import uvicorn

    if not Path(checkpoint).exists():  # refused before the server starts, not once it loads the model
        raise CheckpointError(f"{checkpoint}: no such checkpoint folder or run directory")
    _check_backend(checkpoint, backend)
    _check_address(host, port)
    _log_like_uvicorn()
    failure: list[BaseException] = []
    server: uvicorn.Server | None = None

    def load() -> Reader:
        log.info("loading %s (backend %s)", checkpoint, backend)
        try:
            import datasets

            from mrc_cli.reader import Reader

            datasets.disable_progress_bars()  # the Reader maps every batch: a progress bar each would flood the log
            return Reader.load(checkpoint, backend=backend)
        except BaseException as err:
            failure.append(err)
            server.should_exit = True  # uvicorn polls it; the error is raised below, after it stopped
            raise

    app = create_app(settings=settings, load=load)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info"))
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn shut down cleanly first, then raised Ctrl-C again: the way to stop it
        log.info("stopped by Ctrl-C")
    if failure:
        raise failure[0]


def _check_backend(checkpoint: str, backend: str) -> None:
    """Refuse before the server starts --backend torch on an ONNX export (mrc_cli.backends.check_loadable says why),
    looking for its onnx.json first: importing mrc_cli.backends takes torch's ~10 s, which the server listens before."""
    if backend == "torch" and (Path(checkpoint) / "onnx.json").is_file():
        from mrc_cli.backends import check_loadable

        check_loadable(checkpoint, backend)


def _check_address(host: str, port: int) -> None:
    """Refuse an address that cannot be listened at before uvicorn tries: it would log the error among its start and
    shutdown lines and exit 3."""
    family, address = (socket.AF_INET6, f"[{host}]:{port}") if ":" in host else (socket.AF_INET, f"{host}:{port}")
    try:  # SO_REUSEADDR, as uvicorn: a port in TIME_WAIT is free
        socket.create_server((host, port), family=family).close()
    except OSError as err:
        why = (f"{address} is in use by another program; choose another --port (0 takes a free one)"
               if err.errno == errno.EADDRINUSE else f"cannot listen at {address} ({err.strerror or err})")
        raise ConfigError(why) from None


def _log_like_uvicorn() -> None:
    """Our few lines (loading, loaded, failed) in uvicorn's format, between its own."""
    from uvicorn.logging import DefaultFormatter

    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
