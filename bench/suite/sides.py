"""The plumbing of bench_suite.py: each measured side runs in a fresh Python process (its peak memory its own, its
clock started after the imports) and hands back its result as JSON on one line of its output."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time

from bench.common import OFFLINE_ENV, ROOT, peak_rss_mb

SUITE = ROOT / "bench" / "bench_suite.py"  # the entry script: `--worker SPEC` runs one side
RESULT = "BENCH_RESULT "  # prefix of the line a worker process prints its result on
MAX_SEQ_LENGTH, DOC_STRIDE = 384, 128


def run_side(task: str, **spec) -> dict:
    """Run one measured side in a new Python process; its result is the JSON on its BENCH_RESULT line."""
    print(f"  {task} ...", end="", flush=True)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(SUITE), "--worker", json.dumps({"task": task, **spec})],
                          capture_output=True, text=True, env={**os.environ, **OFFLINE_ENV}, cwd=ROOT, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        print(" failed")
        sys.exit(f"bench_suite: worker {task} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    print(f" {time.perf_counter() - started:.0f}s", flush=True)
    return json.loads(lines[-1][len(RESULT):])


def run_worker(spec: dict, workers: dict) -> None:
    """In the worker process: run `workers[spec["task"]]` and print its result on the BENCH_RESULT line."""
    # The libraries both sides use, imported before any clock starts (mrc-cli imports some of them lazily; transformers
    # loads each Auto class on first use).
    for module in ("datasets", "torch"):
        importlib.import_module(module)
    transformers = importlib.import_module("transformers")
    for name in ("AutoConfig", "AutoModel", "AutoModelForQuestionAnswering", "AutoTokenizer"):
        getattr(transformers, name)

    task = spec.pop("task")
    result = workers[task](**spec)
    result.setdefault("peak_rss_mb", peak_rss_mb())
    print(RESULT + json.dumps(result, ensure_ascii=False), flush=True)


def data_config(cache_dir: str | None = None):
    from mrc_cli.config import DataConfig

    return DataConfig(max_seq_length=MAX_SEQ_LENGTH, doc_stride=DOC_STRIDE, cache_dir=cache_dir)


def golds_of(examples) -> list[dict]:
    """Gold records for mrc_cli.metrics.score from the recipe's examples."""
    return [{"id": ex["id"], "answers": ex["answers"]["text"], "is_impossible": not ex["answers"]["text"]}
            for ex in examples]
