"""Resident memory over many trainings, as `mrc compare`, `mrc kfold` and the benchmarks run them. Each arm is a fresh
process running `--runs` short MiniLM trainings (`--steps` optimizer steps, the setting of shared/MEASURED.md,
evaluated on the answerable v2 dev head):
- kept: every run in that process, the heap a finished run freed kept by glibc (as before issue 16);
- given_back: every run in that process, that heap given back (training.run_task, through glibc's malloc_trim);
- own_process: every run a `mrc train` process of its own, as compare and kfold train now (runs.train_in_own_process).
After each run the arm's process records its VmRSS and its anonymous part (RssAnon; RssFile is the mapped libraries
and Arrow caches), the run's training speed and a peak: its own (VmHWM), or for own_process the largest child's so
far (getrusage RUSAGE_CHILDREN gives the largest of the children ended, not each one's).

    .venv/bin/python bench/bench_memory.py [--runs 6] [--steps 40] [--arms kept given_back own_process]
    .venv/bin/python bench/bench_memory.py --runs 2 --steps 2 --arms own_process   # smoke: the pieces run

Writes OUT/memory/bench_memory.json (command, machine with CPU flags, git revision, date, every run of every arm).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script: the repository root, for `bench.*` and this checkout's mrc_cli
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_train_quality import answerable_dev, minilm_config  # noqa: E402
from bench.common import (OUT, SQUAD_TRAIN_HEAD, SQUAD_V2_DEV_HEAD, command_line, fresh_dir, git_revision,  # noqa: E402
                          machine, peak_rss_mb, proc_status_mb, require_shared, run_script)

ARMS = ("kept", "given_back", "own_process")
PEAK = {"kept": "peak_rss", "given_back": "peak_rss", "own_process": "largest_child_peak_rss"}
MEMORY = ("VmRSS", "RssAnon", "RssFile")  # resident, and its anonymous (heap) and file-backed parts


def one_arm(arm: str, runs: int, steps: int, out: Path) -> list[dict]:
    """`runs` trainings, in this process or each in a child; memory after each."""
    from mrc_cli import training
    from mrc_cli.runs import train_in_own_process
    from mrc_cli.tracking import read_metrics

    if arm == "kept":
        training._give_back_freed_memory = lambda: None  # the behaviour before: glibc keeps what a run freed
    dev = answerable_dev(out)
    rows = [{"run": 0, **proc_status_mb(*MEMORY)}]
    for run in range(1, runs + 1):
        cfg = minilm_config(SQUAD_TRAIN_HEAD, dev, out / f"run-{run}", seed=run, max_steps=steps)
        if arm == "own_process":
            train_in_own_process(cfg, None, "bench")
            peak = {PEAK[arm]: resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}  # kB on Linux
        else:
            training.train(cfg)
            peak = {PEAK[arm]: peak_rss_mb()}
        speed = next(r["features_per_s"] for r in reversed(read_metrics(out / f"run-{run}" / "metrics.jsonl"))
                     if "features_per_s" in r)
        rows.append({"run": run, **proc_status_mb(*MEMORY), **peak, "features_per_s": speed})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
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
    for arm in args.arms:  # one after the other: side by side they would share the cores
        subprocess.run([sys.executable, __file__, "--arm", arm, "--runs", str(args.runs), "--steps", str(args.steps)],
                       check=True)
        arms[arm] = json.loads((out / arm / "rows.json").read_text())
    record = {"command": command_line(), "date": time.strftime("%Y-%m-%d"), "machine": machine(), **git_revision(),
              "arms": arms}
    (out / "bench_memory.json").write_text(json.dumps(record, indent=2))
    print("| run | " + " | ".join(f"{arm} RSS MB (anon) | {arm} peak MB | {arm} features/s"
                                  for arm in args.arms) + " |")
    for run in range(args.runs + 1):
        cells = []
        for arm in args.arms:
            row = arms[arm][run]
            cells += [f"{row['VmRSS']:.0f} ({row['RssAnon']:.0f})", f"{row.get(PEAK[arm], 0):.0f}",
                      f"{row.get('features_per_s', 0):.1f}"]
        print(f"| {run} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    run_script(main)
