"""Resident memory of one process that trains again and again, as `mrc compare`, `mrc kfold` and the benchmarks do:
with the heap a finished run freed given back to the system (training.run_task does, through glibc's malloc_trim)
against kept (as before). Each arm is a fresh process running `--runs` short MiniLM trainings (`--steps` optimizer
steps, the setting of shared/MEASURED.md, evaluated on the answerable v2 dev head); after each run it records VmRSS
and its anonymous part (RssAnon; RssFile is the mapped libraries and Arrow caches) and the run's training speed.

    .venv/bin/python bench/bench_memory.py [--runs 4] [--steps 40]

Writes OUT/memory/bench_memory.json (command, machine with CPU flags, git revision, date, every run of both arms).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script: the repository root, for `bench.*` and this checkout's mrc_cli
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_train_quality import answerable_dev, minilm_config  # noqa: E402
from bench.common import (OUT, SQUAD_TRAIN_HEAD, SQUAD_V2_DEV_HEAD, command_line, fresh_dir, git_revision,  # noqa: E402
                          machine, peak_rss_mb, proc_status_mb, require_shared)

ARMS = ("kept", "given_back")
MEMORY = ("VmRSS", "RssAnon", "RssFile")  # resident, and its anonymous (heap) and file-backed parts


def one_arm(arm: str, runs: int, steps: int, out: Path) -> list[dict]:
    """`runs` trainings in this process; memory after each."""
    from mrc_cli import training
    from mrc_cli.tracking import read_metrics

    if arm == "kept":
        training._give_back_freed_memory = lambda: None  # the behaviour before: glibc keeps what a run freed
    dev = answerable_dev(out)
    rows = [{"run": 0, **proc_status_mb(*MEMORY)}]
    for run in range(1, runs + 1):
        cfg = minilm_config(SQUAD_TRAIN_HEAD, dev, out / f"run-{run}", seed=run, max_steps=steps)
        training.train(cfg)
        speed = next(r["features_per_s"] for r in reversed(read_metrics(out / f"run-{run}" / "metrics.jsonl"))
                     if "features_per_s" in r)
        rows.append({"run": run, **proc_status_mb(*MEMORY), "peak_rss": peak_rss_mb(), "features_per_s": speed})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # a child process: one arm
    args = parser.parse_args()
    out = OUT / "memory"
    if args.arm:
        rows = one_arm(args.arm, args.runs, args.steps, fresh_dir(out / args.arm))
        (out / args.arm / "rows.json").write_text(json.dumps(rows))
        return
    require_shared("bench_memory", SQUAD_TRAIN_HEAD, SQUAD_V2_DEV_HEAD)
    out.mkdir(parents=True, exist_ok=True)
    arms = {}
    for arm in ARMS:  # one after the other: side by side they would share the cores
        subprocess.run([sys.executable, __file__, "--arm", arm, "--runs", str(args.runs), "--steps", str(args.steps)],
                       check=True)
        arms[arm] = json.loads((out / arm / "rows.json").read_text())
    record = {"command": command_line(), "date": time.strftime("%Y-%m-%d"), "machine": machine(), **git_revision(),
              "arms": arms}
    (out / "bench_memory.json").write_text(json.dumps(record, indent=2))
    print("| run | " + " | ".join(f"{arm} RSS MB (anon) | {arm} features/s" for arm in ARMS) + " |")
    for run in range(args.runs + 1):
        cells = []
        for arm in ARMS:
            row = arms[arm][run]
            cells += [f"{row['VmRSS']:.0f} ({row['RssAnon']:.0f})", f"{row.get('features_per_s', 0):.1f}"]
        print(f"| {run} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
