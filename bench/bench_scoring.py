"""Benchmark: the official CMRC 2018 and SQuAD v2.0 scores of a whole dev file, with a cold and a warm segmenter cache.

    .venv/bin/python bench/bench_scoring.py             # 5 repeats of each row
    .venv/bin/python bench/bench_scoring.py --repeats 1

The predictions are the tests' `perturb` pattern (every fifth question missing, the others empty, half an answer,
wrong or right in turn) on ../shared/data/cmrc2018_dev.json (3,219 questions, three gold answers each) and
squad_v2.0_dev_head.json. "cold" clears `segment_cmrc`'s cache first, as a fresh `mrc score` process starts; "warm"
scores again in the same process, as training's repeated evaluations do. Medians and bests in seconds; writes
outputs/bench/scoring.json. tests/test_metrics.py checks that each distinct text is segmented once; the time lives here.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "tests"))

from test_metrics import perturb, read_squad_json  # noqa: E402

from mrc_cli.metrics import score  # noqa: E402
from mrc_cli.metrics.rules import segment_cmrc  # noqa: E402


def _timed(fn, repeats: int, before=lambda: None) -> dict:
    seconds = []
    for _ in range(repeats):
        before()
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return {"median_s": statistics.median(seconds), "best_s": min(seconds), "repeats": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "scoring.json")
    args = parser.parse_args(argv)
    rows = {}
    for name, metric in (("cmrc2018_dev.json", "cmrc2018"), ("squad_v2.0_dev_head.json", "squad_v2")):
        if not (SHARED / name).is_file():
            print(f"skipped {name}: {SHARED / name} is absent")
            continue
        golds = read_squad_json(SHARED / name)
        predictions = perturb(golds)
        run = lambda: score(golds, predictions, metric=metric)  # noqa: E731
        rows[f"{metric} cold"] = _timed(run, args.repeats, before=segment_cmrc.cache_clear)
        rows[f"{metric} warm"] = _timed(run, args.repeats)
        rows[f"{metric} cold"]["questions"] = rows[f"{metric} warm"]["questions"] = len(golds)
    for name, row in rows.items():
        print(f"{name:16} {row['questions']:5} questions  median {row['median_s']:.3f} s  best {row['best_s']:.3f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "python": platform.python_version(),
                                    "machine": platform.platform()}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
