"""How `mrc serve` answers concurrent requests with few model calls, and what it counts for /metrics.

`RequestBatcher` is the one seam between HTTP and the model: requests wait in a queue, one worker task gathers them
up to max_batch questions or max_wait_ms and calls the `Reader` once for all of them, in a thread of its own so the
event loop keeps accepting requests meanwhile. Nothing here knows HTTP; `mrc_cli.serve` holds the routes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mrc_cli.reader import Reader

log = logging.getLogger("mrc_cli.serve")


@dataclass
class ServeMetrics:
    """Counts and latencies for /metrics. Updated on the event loop only (middleware and the batch worker), so no
    lock."""

    latency_window: int
    requests: int = 0
    questions: int = 0
    errors: Counter = field(default_factory=Counter)  # status code -> count
    batch_sizes: Counter = field(default_factory=Counter)  # questions per Reader call -> count
    latencies_ms: deque = field(init=False)

    def __post_init__(self):
        self.latencies_ms = deque(maxlen=self.latency_window)

    def snapshot(self) -> dict:
        latencies = np.asarray(self.latencies_ms, dtype=float)
        percentiles = {f"p{q}": float(np.percentile(latencies, q)) if latencies.size else None for q in (50, 95, 99)}
        batches = sum(self.batch_sizes.values())
        return {
            "requests": self.requests,
            "questions": self.questions,
            "errors": sum(self.errors.values()),
            "errors_by_status": {str(code): n for code, n in sorted(self.errors.items())},
            "latency_ms": {**percentiles, "over_requests": int(latencies.size)},
            "batches": batches,
            "batch_size": {"mean": sum(s * n for s, n in self.batch_sizes.items()) / batches if batches else None,
                           "histogram": {str(s): n for s, n in sorted(self.batch_sizes.items())}},
        }


@dataclass
class _Waiting:
    questions: list[str]
    context: str
    future: asyncio.Future
    arrived: float  # loop.time()


# what stops the server; any other BaseException is a failure of one request: a Rust panic in the tokenizers (pyo3's
# PanicException) is not an Exception, and uncaught it would stop the batcher and leave every later request waiting
STOPS = (KeyboardInterrupt, SystemExit, asyncio.CancelledError)


class RequestBatcher:
    """One worker task: it takes the oldest waiting request, adds waiting requests while their questions fit in
    max_batch and until the oldest has waited max_wait_ms, and answers them all with one Reader call. The Reader runs
    in one thread of its own, so the event loop keeps accepting requests meanwhile (they form the next batch)."""

    def __init__(self, max_batch: int, max_wait_ms: float, metrics: ServeMetrics, reader: Reader | None = None):
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000  # seconds, as loop.time()
        self.metrics = metrics
        self.reader = reader  # None until loaded (create_app's `load`)
        self.started = False

    def start(self) -> None:
        """On the serving event loop (the app's startup): the queue, its event and the model's thread."""
        self.started = True
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="mrc-reader")
        self._waiting: deque[_Waiting] = deque()
        self._arrived = asyncio.Event()

    async def answer(self, questions: list[str], context: str) -> list[dict]:
        loop = asyncio.get_running_loop()
        waiting = _Waiting(questions, context, loop.create_future(), loop.time())
        self._waiting.append(waiting)
        self._arrived.set()
        return await waiting.future

    async def run(self) -> None:
        while True:
            batch = await self._gather()
            if batch:
                await self._answer_batch(batch)

    async def _gather(self) -> list[_Waiting]:
        loop = asyncio.get_running_loop()
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        first = self._waiting.popleft()
        batch, size = [first], len(first.questions)
        deadline = first.arrived + self.max_wait
        while size < self.max_batch:
            if not self._waiting:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
                continue
            if size + len(self._waiting[0].questions) > self.max_batch:
                break  # it leads the next batch
            batch.append(self._waiting.popleft())
            size += len(batch[-1].questions)
        return [w for w in batch if not w.future.done()]  # a request cancelled while waiting is skipped

    async def _answer_batch(self, batch: list[_Waiting]) -> None:
        questions = [q for w in batch for q in w.questions]
        contexts = [w.context for w in batch for _ in w.questions]
        call = partial(self.reader, question=questions, context=contexts)
        try:
            answers = await asyncio.get_running_loop().run_in_executor(self.model_thread, call)
        except BaseException as err:
            if isinstance(err, STOPS):
                raise
            if len(batch) > 1:  # one request's failure must not fail the others: each alone decides whose it is
                for waiting in batch:
                    await self._answer_batch([waiting])
                return
            log.exception("the Reader failed on a request of %d questions", len(questions))
            if not batch[0].future.done():
                batch[0].future.set_exception(err)
            return
        self.metrics.batch_sizes[len(questions)] += 1
        offset = 0
        for waiting in batch:
            if not waiting.future.done():  # done: the request was cancelled (its client left) while the model ran
                waiting.future.set_result(answers[offset: offset + len(waiting.questions)])
            offset += len(waiting.questions)
