"""The batching and request limits of `mrc serve`, apart from the server so that the CLI reads their defaults
without importing FastAPI."""

from __future__ import annotations

import math
from dataclasses import dataclass

from mrc_cli.errors import ConfigError


@dataclass
class ServeSettings:
    """Batching and request limits of the server (the flags of `mrc serve`)."""

    max_batch: int = 32  # questions per Reader call; a request with more than this runs alone
    max_wait_ms: float = 10.0  # how long the oldest waiting request waits for others before its batch runs
    max_context_chars: int = 20_000  # ~5,000 English tokens: ~22 windows of 384 at stride 128, for every question
    max_questions: int = 64
    max_question_chars: int = 1_000  # the Reader cuts questions to data.max_query_length tokens anyway
    max_body_bytes: int = 1_000_000  # above the other limits together, even \\u-escaped (6 bytes a character)
    latency_window: int = 10_000  # /metrics percentiles over the latest this many answered requests

    def __post_init__(self):
        for name in ("max_batch", "max_context_chars", "max_questions", "max_question_chars", "max_body_bytes",
                     "latency_window"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve setting {name} is {getattr(self, name)}; it must be at least 1")
        if not (math.isfinite(self.max_wait_ms) and self.max_wait_ms >= 0):  # NaN and inf pass typer's min=0
            raise ConfigError(f"serve setting max_wait_ms is {self.max_wait_ms}; it must be a finite number, 0 or more")
