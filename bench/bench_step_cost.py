"""What a setting costs in training time: the recipe of bench_tricks (MiniLM, SQuAD v1.1 train head, 384/128, batch
16, seed 0) against variants, over the same share of an epoch, each run in its own process, the sides alternating.

    .venv/bin/python bench/bench_step_cost.py --variant nodrop:model.dropout=0 --variant bs8:train.batch_size=8
        [--epochs 0.1] [--repeats 2] [--smoke]

Features/s are the trainer's own (evaluation and saving excluded), the median of the repeats; the ratio to the
baseline is what an equal-time comparison scales a variant's epochs by (a faster setting gets the epochs the baseline's
time buys). The epoch share, not a step count, is the same for every side, so a variant with another batch size
trains on the same features. Writes outputs/bench/step_cost.json (the command, machine with CPU flags, git revision,
date); --smoke: 48 questions, for checking the script.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script: the repository root, for `bench.*` and this checkout's mrc_cli
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_packing import alternate_train_runs  # noqa: E402
from bench.common import (  # noqa: E402
    OUT,
    SQUAD_TRAIN_HEAD,
    command_line,
    describe_machine,
    fresh_dir,
    git_revision,
    machine,
    require_shared,
    run_script,
    write_jsonl,
)


def main() -> None:
    from mrc_cli.compare import Variant
    from mrc_cli.config import load_config
    from mrc_cli.errors import ConfigError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", required=True, help="name:key=value,...")
    parser.add_argument("--epochs", type=float, default=0.1, help="the share of an epoch each run trains")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="48 questions: checks that the script runs")
    args = parser.parse_args()
    require_shared("bench_step_cost", SQUAD_TRAIN_HEAD)
    try:
        variants = [Variant.parse(text) for text in args.variant]
        for variant in variants:  # an unknown key or a bad value: said here, not in a training child's traceback
            load_config(None, sets=list(variant.sets))
    except ConfigError as err:
        parser.error(str(err))
    work = fresh_dir(OUT / "step_cost")
    train_file = write_jsonl(SQUAD_TRAIN_HEAD, work / "train.jsonl", 48 if args.smoke else None)["path"]
    epochs = [f"train.epochs={args.epochs}"]
    sides = {"baseline": epochs, **{v.name: epochs + list(v.sets) for v in variants}}
    report = {"command": command_line(), "machine": machine(), **git_revision(), "smoke": args.smoke,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "epochs": args.epochs, "sides": sides}
    print(f"{describe_machine(report['machine'])}; {args.epochs} epoch per run, {args.repeats} runs per side; "
          f"{report['date']}", flush=True)
    measured = alternate_train_runs(train_file, work / "cache", work, sides, 0, args.repeats)
    base = measured["median"]["baseline"]["features_per_s"]
    report.update(measured, time_ratio={side: base / m["features_per_s"] for side, m in measured["median"].items()})
    print(f"\n  {'side':<20} | {'features/s':>10} | time / baseline's")
    for side, m in measured["median"].items():
        print(f"  {side:<20} | {m['features_per_s']:>10.2f} | {report['time_ratio'][side]:.3f}x")
    path = OUT / "step_cost.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    run_script(main)
