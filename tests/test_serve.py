"""`mrc serve` on a tiny trained model: the answers of `mrc predict`, in the order asked; concurrent requests batched
into one Reader call; 413/422 answers that say what was wrong, with the server answering correctly after each; /health
before and after the model loads; a real uvicorn server on loopback; the page at / in headless Chromium."""

import asyncio
import html
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
from contextlib import contextmanager

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conftest import tiny_run_config
from mrc_cli import Reader
from mrc_cli.cli import app as cli_app
from mrc_cli.errors import CheckpointError, ConfigError
from mrc_cli.serve import ServeSettings, create_app
from mrc_cli.serve_batching import RequestBatcher, ServeMetrics
from mrc_cli.training import train

DEV = "data/quickstart/en_dev.json"


@pytest.fixture(scope="module")
def trained_run(tiny_bert_dir, tmp_path_factory):
    cfg = tiny_run_config(tiny_bert_dir, str(tmp_path_factory.mktemp("run") / "run"), max_steps=4, save_steps=2, eval_steps=2)
    return train(cfg).run_dir


@pytest.fixture(scope="module")
def reader(trained_run):
    return Reader.load(trained_run)


@pytest.fixture(scope="module")
def paragraphs():
    """[(context, [(question id, question), ...]), ...] of the quickstart dev file."""
    data = json.load(open(DEV, encoding="utf-8"))["data"]
    return [(p["context"], [(qa["id"], qa["question"]) for qa in p["qas"]]) for a in data for p in a["paragraphs"]]


@pytest.fixture(scope="module")
def submission(trained_run, tmp_path_factory):
    """`mrc predict`'s answers {id: text} on the dev file."""
    out = tmp_path_factory.mktemp("predict") / "submission.json"
    result = CliRunner().invoke(cli_app, ["predict", "--checkpoint", str(trained_run), "--data", DEV, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


@contextmanager
def running(app):
    """`app` on a real uvicorn server on 127.0.0.1 at a free port (port 0: the kernel picks it, no race), in a
    thread; stopped at the end."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive(), "uvicorn did not stop"


def _answer(client, context: str, questions: list[str]) -> list[dict]:
    response = client.post("/answer", json={"context": context, "questions": questions})
    assert response.status_code == 200, response.text
    return response.json()["answers"]


def test_answers_are_mrc_predicts_in_the_order_asked(reader, paragraphs, submission):
    with TestClient(create_app(reader)) as client:
        for context, qas in paragraphs:
            questions = [q for _, q in qas]
            answers = _answer(client, context, questions)
            assert [a["question"] for a in answers] == questions
            assert [a["text"] for a in answers] == [submission[qid] for qid, _ in qas]
            for a, direct in zip(answers, reader(question=questions, context=[context] * len(questions))):
                assert (a["start"], a["end"]) == (direct["start"], direct["end"])
                assert a["probability"] == pytest.approx(direct["probability"]) and 0 < a["probability"] <= 1
                # the quickstart data has unanswerable questions: a SQuAD v2 model gives the null's probability
                assert a["no_answer_probability"] == pytest.approx(direct["no_answer_probability"])
                if a["text"]:
                    assert context[a["start"]:a["end"]] == a["text"]
                else:
                    assert (a["start"], a["end"]) == (-1, -1)


def test_an_app_whose_startup_did_not_run_says_so_rather_than_ready(reader, paragraphs):
    """A TestClient used without `with` (or uvicorn --lifespan off) runs no startup: no batcher answers. /health must
    not say ready and /answer not blame the model."""
    client = TestClient(create_app(reader))
    context, qas = paragraphs[0]
    for response in (client.get("/health"), client.post("/answer", json={"context": context, "questions": [qas[0][1]]})):
        assert response.status_code == 503 and "startup has not run" in response.text
        assert "with TestClient(app) as client" in response.text


def test_many_questions_keep_their_order_past_max_batch(reader, paragraphs):
    """50 questions over 3 contexts' questions in a scrambled order; max_batch 8, so the request runs alone in one
    larger Reader call and the answers must still line up with the questions."""
    context, qas = max(paragraphs, key=lambda p: len(p[1]))
    pool = [q for _, qs in paragraphs[:3] for _, q in qs]
    questions = [pool[(7 * i) % len(pool)] + ("?" * (i % 3)) for i in range(50)]
    settings = ServeSettings(max_batch=8, max_questions=64)
    with TestClient(create_app(reader, settings)) as client:
        answers = _answer(client, context, questions)
        one_by_one = [_answer(client, context, [q])[0] for q in questions[:10]]
        metrics = client.get("/metrics").json()
    assert [a["question"] for a in answers] == questions
    expected = reader(question=questions, context=[context] * len(questions))
    assert [(a["text"], a["start"]) for a in answers] == [(e["answer"], e["start"]) for e in expected]
    # alone or among 50 the same answer; the probability only to float precision (other padding in the batch)
    assert [(a["text"], a["start"], a["end"]) for a in one_by_one] == [(a["text"], a["start"], a["end"]) for a in answers[:10]]
    assert [a["probability"] for a in one_by_one] == pytest.approx([a["probability"] for a in answers[:10]], rel=1e-5)
    assert metrics["batch_size"]["histogram"] == {"1": 10, "50": 1}


def test_concurrent_requests_are_batched_on_a_real_server(reader, paragraphs, submission):
    """16 clients at once on uvicorn: fewer Reader calls than requests (batches of several requests), every
    client gets its own answers, and /metrics says so."""
    asked = [(context, qid, q) for context, qas in paragraphs for qid, q in qas][:16]
    settings = ServeSettings(max_batch=32, max_wait_ms=300)  # generous: all 16 arrive within the first wait on 2 cores

    async def ask_all(url):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            responses = await asyncio.gather(*(client.post("/answer", json={"context": c, "questions": [q]})
                                               for c, _, q in asked))
            return responses, (await client.get("/metrics")).json(), (await client.get("/health"))

    with running(create_app(reader, settings)) as url:
        responses, metrics, health = asyncio.run(ask_all(url))
    assert health.status_code == 200 and health.json() == {"status": "ready", "backend": "torch"}
    assert [r.status_code for r in responses] == [200] * len(asked)
    assert [r.json()["answers"][0]["text"] for r in responses] == [submission[qid] for _, qid, _ in asked]
    sizes = {int(size): n for size, n in metrics["batch_size"]["histogram"].items()}
    assert sum(size * n for size, n in sizes.items()) == len(asked) == metrics["questions"] == metrics["requests"]
    assert max(sizes) > 1 and metrics["batches"] < len(asked) and metrics["batch_size"]["mean"] > 1
    assert metrics["errors"] == 0 and metrics["latency_ms"]["over_requests"] == len(asked)
    assert 0 < metrics["latency_ms"]["p50"] <= metrics["latency_ms"]["p95"] <= metrics["latency_ms"]["p99"]


BAD_REQUESTS = [
    # (what, request keywords, status, words the message must hold)
    ("malformed JSON", {"content": b'{"context": "The cat.", "questions": ["Who?"', "headers": {"content-type": "application/json"}},
     422, "not valid JSON"),
    ("an unterminated string", {"content": b'{"context": "Paris', "headers": {"content-type": "application/json"}},
     422, "the body is not valid JSON: Unterminated string starting at character 12"),
    ("not UTF-8", {"content": '{"context": "Le café.", "questions": ["Où?"]}'.encode("latin-1"),
                   "headers": {"content-type": "application/json"}}, 422, "the body is not UTF-8 text"),
    ("nested too deeply", {"content": b"[" * 3000, "headers": {"content-type": "application/json"}}, 422,
     "nested too deeply"),
    ("not sent as JSON", {"content": b"context=The cat.", "headers": {"content-type": "application/x-www-form-urlencoded"}},
     422, "Content-Type: application/json"),
    ("questions a string", {"json": {"context": "The cat.", "questions": "Who?"}}, 422, "questions: Input should be a valid list"),
    ("a question a number", {"json": {"context": "The cat.", "questions": ["Who?", 3]}}, 422, "questions[1]: Input should be a valid string"),
    ("context a list", {"json": {"context": ["The cat."], "questions": ["Who?"]}}, 422, "context: Input should be a valid string"),
    ("question for questions", {"json": {"context": "The cat.", "question": "Who?"}}, 422, "question: Extra inputs are not permitted"),
    ("empty questions list", {"json": {"context": "The cat.", "questions": []}}, 422, "at least 1 item"),
    ("blank question", {"json": {"context": "The cat.", "questions": ["Who?", "  "]}}, 422, "entries [1] are empty"),
    ("blank context", {"json": {"context": " \n", "questions": ["Who?"]}}, 422, "context: the context is only whitespace"),
    ("invisible question", {"json": {"context": "The cat.", "questions": ["\u200b", "Who?"]}}, 422, "entries [0] are empty"),
    ("invisible context", {"json": {"context": "\ufeff\u200b", "questions": ["Who?"]}}, 422, "only whitespace (or invisible"),
    ("a JSON list", {"json": [["The cat.", "Who?"]]}, 422, "Input should be a valid dictionary"),
    ("huge context", {"json": {"context": "The cat sat. " * 200, "questions": ["Who?"]}}, 413, "--max-context-chars"),
    ("too many questions", {"json": {"context": "The cat.", "questions": ["Who?"] * 9}}, 413, "9 questions; this server takes at most 8"),
    ("huge question", {"json": {"context": "The cat.", "questions": ["Who " * 100]}}, 413, "--max-question-chars"),
    ("huge body", {"json": {"context": "The cat.", "questions": ["Who?"], "pad": "x" * 5000}}, 413, "--max-body-bytes"),
    ("huge chunked body", {"content": iter([b'{"context": "', b"x" * 3000, b"x" * 3000, b'", "questions": ["Who?"]}']),
                           "headers": {"content-type": "application/json"}}, 413, "over 4,000 bytes"),
]


def test_bad_requests_get_413_or_422_saying_what_was_wrong_and_the_server_goes_on(reader, paragraphs, submission):
    settings = ServeSettings(max_context_chars=2000, max_questions=8, max_question_chars=200, max_body_bytes=4000)
    context, qas = paragraphs[0]
    expected = [submission[qid] for qid, _ in qas]
    with TestClient(create_app(reader, settings)) as client:
        for what, request, status, message in BAD_REQUESTS:
            response = client.post("/answer", **request)
            assert response.status_code == status, (what, response.text)
            assert message in response.json()["detail"], (what, response.json())
            assert [a["text"] for a in _answer(client, context, [q for _, q in qas])] == expected, what
        metrics = client.get("/metrics").json()
    assert metrics["errors_by_status"] == {"413": 5, "422": 15}
    assert metrics["requests"] == 2 * len(BAD_REQUESTS) and metrics["questions"] == len(BAD_REQUESTS) * len(qas)


def test_a_client_that_leaves_mid_request_does_not_stop_the_server(reader, paragraphs, submission):
    context, qas = paragraphs[0]
    body = json.dumps({"context": context, "questions": [q for _, q in qas]}).encode()
    with running(create_app(reader)) as url:
        port = int(url.rsplit(":", 1)[1])
        head = f"POST /answer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        for sent in (head.encode() + body[: len(body) // 2], head.encode() + body):  # half a body; all, then gone
            with socket.create_connection(("127.0.0.1", port), timeout=10) as leaving:
                leaving.sendall(sent)
        time.sleep(0.5)  # the full request reaches the model and its answer meets a closed socket
        answers = httpx.post(f"{url}/answer", json={"context": context, "questions": [q for _, q in qas]}, timeout=60)
    assert [a["text"] for a in answers.json()["answers"]] == [submission[qid] for qid, _ in qas]


class PanicException(BaseException):
    """What a Rust panic in the tokenizers raises (pyo3): not an Exception."""


class _FailsOnBoom:
    """The Reader, except that a batch with a question holding "boom" raises: a model failure we can aim."""

    def __init__(self, reader, error=RuntimeError):
        self.reader, self.error = reader, error

    def __call__(self, question, context):
        if any("boom" in q for q in question):
            raise self.error("boom")
        return self.reader(question=question, context=context)


@pytest.mark.parametrize("error", [RuntimeError, PanicException])
def test_a_request_the_model_fails_on_fails_alone(reader, paragraphs, submission, error):
    """Batched with two good requests, a failing one makes its batch fail; each request is then asked alone, so the
    good ones get their answers and only the bad one its error (a 500 naming it over HTTP), also where the error is
    a BaseException (a Rust panic), which would have stopped the batcher and left every later request waiting."""
    context, qas = paragraphs[0]

    async def three_at_once():
        batcher = RequestBatcher(max_batch=32, max_wait_ms=500, metrics=ServeMetrics(100),
                                 reader=_FailsOnBoom(reader, error))
        batcher.start()
        worker = asyncio.create_task(batcher.run())
        results = await asyncio.gather(batcher.answer([qas[0][1]], context), batcher.answer(["boom?"], context),
                                       batcher.answer([qas[1][1]], context), return_exceptions=True)
        worker.cancel()
        return results, batcher.metrics.batch_sizes

    (first, failed, third), batch_sizes = asyncio.run(three_at_once())
    assert [first[0]["answer"], third[0]["answer"]] == [submission[qas[0][0]], submission[qas[1][0]]]
    assert isinstance(failed, error) and batch_sizes == {1: 2}  # the failed batch of 3 is not counted

    with TestClient(create_app(_FailsOnBoom(reader, error))) as client:
        response = client.post("/answer", json={"context": context, "questions": ["boom?"]})
        assert response.status_code == 500
        assert response.json()["detail"] == f"the model failed on this request: {error.__name__}: boom"
        assert _answer(client, context, [qas[0][1]])[0]["text"] == submission[qas[0][0]]
        assert client.get("/metrics").json()["errors_by_status"] == {"500": 1}


def test_health_is_503_until_the_model_has_loaded(reader, paragraphs):
    loaded = threading.Event()

    def slow_load():
        assert loaded.wait(30)
        return reader

    context, qas = paragraphs[0]
    with TestClient(create_app(load=slow_load)) as client:
        assert client.get("/health").status_code == 503 and client.get("/health").json()["status"] == "loading"
        early = client.post("/answer", json={"context": context, "questions": [qas[0][1]]})
        assert early.status_code == 503 and "still loading" in early.json()["detail"]
        loaded.set()
        deadline = time.monotonic() + 30
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert _answer(client, context, [qas[0][1]])[0]["question"] == qas[0][1]

    def broken_load():
        raise CheckpointError("/nowhere: no checkpoint here")

    with TestClient(create_app(load=broken_load)) as client:
        deadline = time.monotonic() + 30
        while client.get("/health").json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        health = client.get("/health")
        assert health.status_code == 503 and health.json() == {"status": "failed",
                                                               "detail": "CheckpointError: /nowhere: no checkpoint here"}


def test_metrics_openapi_and_page_routes(reader, paragraphs):
    context, qas = paragraphs[0]
    with TestClient(create_app(reader)) as client:
        empty = client.get("/metrics").json()
        _answer(client, context, [q for _, q in qas])
        metrics = client.get("/metrics").json()
        schema = client.get("/openapi.json").json()
        docs, page = client.get("/docs"), client.get("/")
    assert empty["requests"] == 0 and empty["latency_ms"]["p50"] is None and empty["batch_size"]["mean"] is None
    assert (metrics["requests"], metrics["questions"], metrics["batches"]) == (1, len(qas), 1)
    assert metrics["batch_size"] == {"mean": float(len(qas)), "histogram": {str(len(qas)): 1}}
    assert set(metrics["latency_ms"]) == {"p50", "p95", "p99", "over_requests"}
    assert set(schema["components"]["schemas"]["AnswerRequest"]["properties"]) == {"context", "questions"}
    assert {"413", "422"} <= set(schema["paths"]["/answer"]["post"]["responses"])
    assert docs.status_code == 200 and "swagger" in docs.text.lower() and "cdn" not in docs.text
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<form id="ask">' in page.text and "http" not in re.sub(r'href="[^"]*"', "", page.text)  # nothing fetched from afar


def test_mrc_serve_hands_its_flags_to_serve(monkeypatch):
    calls = []
    monkeypatch.setattr("mrc_cli.serve.serve", lambda *args: calls.append(args))
    result = CliRunner().invoke(cli_app, ["serve", "--checkpoint", "runs/a", "--port", "0", "--max-batch", "4",
                                          "--max-wait-ms", "25", "--max-questions", "3", "--backend", "onnx-int8"])
    assert result.exit_code == 0, result.output
    assert calls == [("runs/a", "127.0.0.1", 0, ServeSettings(max_batch=4, max_wait_ms=25.0, max_questions=3), "onnx-int8")]


def test_a_wait_that_is_no_finite_number_is_refused(tmp_path):
    result = CliRunner().invoke(cli_app, ["serve", "--checkpoint", str(tmp_path), "--max-wait-ms", "inf"])  # typer's
    assert result.exit_code == 1, result.output  # min=0 lets it through: the oldest request had waited for ever
    assert "serve setting max_wait_ms is inf; it must be a finite number, 0 or more" in result.stderr
    with pytest.raises(ConfigError, match="max_wait_ms is nan"):
        ServeSettings(max_wait_ms=float("nan"))


def test_mrc_serve_stops_with_the_error_when_the_model_does_not_load(tmp_path):
    result = CliRunner().invoke(cli_app, ["serve", "--checkpoint", str(tmp_path), "--port", "0"])  # no checkpoint
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]  # after uvicorn stopped, the CLI's one line
    assert last.startswith(f"Error: {tmp_path}") and "Uvicorn running" in result.output
    # a checkpoint that is not there at all: refused before the server starts
    result = CliRunner().invoke(cli_app, ["serve", "--checkpoint", str(tmp_path / "missing"), "--port", "0"])
    assert result.exit_code == 1 and result.output == (f"Error: {tmp_path / 'missing'}: no such checkpoint folder or "
                                                       "run directory\n")


def test_mrc_serve_with_torch_on_an_onnx_export_is_refused_before_the_server_starts(tmp_path):
    (tmp_path / "onnx.json").write_text("{}")  # what makes a folder an ONNX export
    result = CliRunner().invoke(cli_app, ["serve", "--checkpoint", str(tmp_path), "--port", "0", "--backend", "torch"])
    assert result.exit_code == 1 and "Uvicorn" not in result.output, result.output
    assert result.output.startswith(f"Error: {tmp_path} is an ONNX export, without PyTorch weights")
    assert len(result.output.strip().splitlines()) == 1


def test_mrc_serve_listens_before_the_model_loads_and_stops_on_ctrl_c_without_a_word_of_training(trained_run):
    """The model's imports and load come after the server listens (/health 503 meanwhile); Ctrl-C, the way to stop
    it, ends it cleanly (exit 0) without the advice for an interrupted training run."""
    import signal
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mrc_cli", "serve", "--checkpoint", str(trained_run), "--port",
                               str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        statuses, deadline = [], time.monotonic() + 120
        while (not statuses or statuses[-1] != 200) and time.monotonic() < deadline and server.poll() is None:
            try:
                statuses.append(httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code)
            except httpx.TransportError:
                time.sleep(0.05)
        assert statuses and statuses[0] == 503 and statuses[-1] == 200  # listening while the model loaded
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=60)
    finally:
        server.kill()
    assert server.returncode == 0 and "stopped by Ctrl-C" in output, output
    assert "training run" not in output and "Traceback" not in output, output


def test_mrc_serve_on_a_port_in_use_says_so_in_one_line(tmp_path):
    """uvicorn would log the error among its start and shutdown lines and exit 3."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli_app, ["serve", "--checkpoint", str(tmp_path), "--port", str(port)])
    assert result.exit_code == 1 and result.output == (f"Error: 127.0.0.1:{port} is in use by another program; choose "
                                                       "another --port (0 takes a free one)\n")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium here, so the page at / is not tested in a browser (Debian: apt-get install chromium)")


def _page_in_chromium(url: str, tmp_path) -> str:
    """The DOM of `url` after its scripts ran and its fetches answered (virtual time waits for pending fetches)."""
    result = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--dump-dom", url],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_openapi_page_renders_offline_in_a_headless_browser(reader, tmp_path):
    """/docs with its scripts served by the server itself: Swagger UI lists the routes without a network."""
    with running(create_app(reader)) as url:
        dom = _page_in_chromium(f"{url}/docs", tmp_path)
    assert 'data-path="/answer"' in dom and 'data-path="/health"' in dom, dom[-3000:]


def test_the_page_marks_the_answer_in_a_headless_browser(reader, paragraphs, submission, tmp_path):
    context, qid, question = next((c, qid, q) for c, qas in paragraphs for qid, q in qas if submission[qid])
    answer = reader(question=question, context=context)
    with running(create_app(reader, ServeSettings(max_context_chars=len(context)))) as url:
        dom = _page_in_chromium(f"{url}/?" + urllib.parse.urlencode({"context": context, "question": question}), tmp_path)
        too_long = _page_in_chromium(f"{url}/?" + urllib.parse.urlencode({"context": context + "!", "question": question}),
                                     tmp_path)
    assert '<body data-state="answered">' in dom, dom[-3000:]
    mark = re.search(r'<div id="passage">(.*?)<mark id="answer">(.*?)</mark>', dom, re.S)
    assert mark and html.unescape(mark.group(2)) == submission[qid] == answer["answer"]
    assert html.unescape(mark.group(1)) == context[:answer["start"]]
    assert f'<span id="answer-text">{html.escape(submission[qid], quote=False)}</span>' in dom
    # the page shows the server's message when the server refuses
    assert '<body data-state="failed">' in too_long and "--max-context-chars" in too_long
