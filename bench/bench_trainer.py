"""The trainer against an earlier commit of itself (default c62c0a9, before the GPU-ready trainer), side by side:

    .venv/bin/python bench/bench_trainer.py                    # all parts: host, ddp, cpu (~10 min on 2 cores)
    .venv/bin/python bench/bench_trainer.py --part host ddp    # the quick parts
    .venv/bin/python bench/bench_trainer.py --part cpu --steps 30 --repeats 2

  host  host time to make one training batch, per feature, at batch 16/32/64 on the SQuAD train head (MiniLM
        tokenizer, 384/128): the old per-row collation (`rows[i]` reads + per-row padding, before its copy to the
        device) against `FeatureTensors.batch` on the CPU, which there includes the gather itself (on a GPU the host
        only launches it: ~20 small kernels). Median of 5 passes over 40 batches each.
  ddp   share of the computed tokens that are real when the ranks of a step wait for its widest micro-batch, for
        1/2/4/8 processes at 16 per process: the old plan (grouped batches dealt round-robin to the ranks) against
        the new (optimizer steps of processes x batch cut from consecutive sorted features).
  cpu   `train()` of MiniLM on the SQuAD train head for --steps steps (bf16 where native, else fp32), each side in
        its own process, alternating sides --repeats times: features/s from the last log line, as a ratio.

The old side's code comes from `git archive <rev> mrc_cli` into a temporary folder. Writes outputs/bench/trainer.json
and prints tables; the CPU's flags are in the JSON and the header.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script: the repository root, for `bench.*` and this checkout's mrc_cli
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (  # noqa: E402
    OFFLINE_ENV,
    OUT,
    ROOT,
    SQUAD_TRAIN_HEAD,
    command_line,
    describe_machine,
    git_revision,
    machine,
    minilm,
    require_shared,
    run_script,
)


def old_code(rev: str, folder: Path) -> Path:
    """mrc_cli at `rev`, extracted into folder/mrc_cli."""
    archive = subprocess.run(["git", "archive", rev, "mrc_cli"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def old_module(old_root: Path, name: str):
    spec = importlib.util.spec_from_file_location(f"old_{name}", old_root / "mrc_cli" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_features():
    from mrc_cli.config import DataConfig
    from mrc_cli.splits import featurize_file
    from mrc_cli.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(minilm())
    data = DataConfig(cache_dir=str(OUT / "trainer_cache"))
    return featurize_file(str(SQUAD_TRAIN_HEAD), tokenizer, data, "train").features, tokenizer.pad_token_id or 0


def part_host(old_root: Path) -> dict:
    import torch

    from mrc_cli.batching import FeatureTensors, epoch_plan

    old = old_module(old_root, "batching")
    features, pad = train_features()
    rows = features.remove_columns("example_id")  # what the old trainer read rows from
    store = FeatureTensors(features, torch.device("cpu"), pad)
    lengths = store.lengths.tolist()
    results = {}
    for batch_size in (16, 32, 64):
        batches = [step[0] for step in epoch_plan(lengths, batch_size, 1, 0, 0, True)][:40]
        count = sum(len(b) for b in batches)
        ways = {
            "old_collate": lambda: [old.Collator(pad)([rows[i] for i in b]) for b in batches],
            "new": lambda: [store.batch(b) for b in batches],
        }
        results[batch_size] = {}
        for name, make in ways.items():
            make()  # warm-up
            times = []
            for _ in range(5):
                started = time.perf_counter()
                make()
                times.append(time.perf_counter() - started)
            results[batch_size][name] = 1e3 * statistics.median(times) / count  # ms per feature
    return results


def part_ddp(old_root: Path) -> dict:
    import torch

    from mrc_cli.batching import FeatureTensors, epoch_plan

    sys.path.insert(0, str(ROOT / "tests"))
    from test_batching import real_token_share

    old = old_module(old_root, "batching")
    features, pad = train_features()
    lengths = FeatureTensors(features, torch.device("cpu"), pad).lengths.tolist()
    results = {}
    for world in (1, 2, 4, 8):
        dealt = old.epoch_batches(lengths, 16, 0, 0, True)
        dealt = dealt[: len(dealt) // world * world]  # the old trainer's rank r took batches r, r + world, ...
        old_plan = [dealt[i:i + world] for i in range(0, len(dealt), world)]
        new_plan = epoch_plan(lengths, 16, world, 0, 0, True)
        results[world] = {"old": real_token_share(lengths, old_plan, world),
                          "new": real_token_share(lengths, new_plan, world)}
    return results


CPU_SIDE = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import mrc_cli
from pathlib import Path
from mrc_cli.config import RunConfig
from mrc_cli.tracking import read_metrics
from mrc_cli.training import train
assert mrc_cli.__file__.startswith(sys.argv[1]), mrc_cli.__file__
cfg = RunConfig()
cfg.model.name_or_path = sys.argv[6]
cfg.data.train_file, cfg.data.cache_dir = sys.argv[2], sys.argv[3]
cfg.train.output_dir, cfg.train.max_steps = sys.argv[4], int(sys.argv[5])
cfg.train.log_steps, cfg.train.save_steps, cfg.train.eval_steps = int(sys.argv[5]), 0, 0
started = time.perf_counter()
train(cfg)
last = read_metrics(Path(cfg.train.output_dir) / "metrics.jsonl")[-1]
print(json.dumps({"features_per_s": last["features_per_s"], "tokens_per_s": last["tokens_per_s"],
                  "loss": last["loss"], "wall_s": time.perf_counter() - started}))
"""


def part_cpu(old_root: Path, steps: int, repeats: int) -> dict:
    env = {**os.environ, **OFFLINE_ENV}
    runs = {"old": [], "new": []}
    with tempfile.TemporaryDirectory() as work:
        for repeat in range(repeats):
            for side, code in (("old", old_root), ("new", ROOT)):  # alternating: drifts of the machine hit both
                out = Path(work) / f"{side}_{repeat}"
                done = subprocess.run([sys.executable, "-c", CPU_SIDE, str(code), str(SQUAD_TRAIN_HEAD),
                                       str(Path(work) / f"cache_{side}"), str(out), str(steps), minilm()],
                                      cwd=work, env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    raise RuntimeError(f"{side} side failed:\n{done.stderr[-3000:]}")
                runs[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(f"  cpu {side} #{repeat}: {runs[side][-1]['features_per_s']:.2f} features/s", flush=True)
    median = {side: statistics.median(r["features_per_s"] for r in rs) for side, rs in runs.items()}
    return {"steps": steps, "runs": runs, "median_features_per_s": median, "new_over_old": median["new"] / median["old"],
            "same_loss": [a["loss"] == b["loss"] for a, b in zip(runs["old"], runs["new"])]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", choices=("host", "ddp", "cpu"), default=["host", "ddp", "cpu"])
    parser.add_argument("--rev", default="c62c0a9", help="the old side's commit")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    require_shared("bench_trainer", SQUAD_TRAIN_HEAD)
    OUT.mkdir(parents=True, exist_ok=True)
    report = {"command": command_line(), "machine": machine(), **git_revision(), "rev": args.rev,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(f"{describe_machine(report['machine'])}; old side: {args.rev}; {report['date']}")
    with tempfile.TemporaryDirectory() as folder:
        old_root = old_code(args.rev, Path(folder))
        if "host" in args.part:
            report["host_ms_per_feature"] = host = part_host(old_root)
            print("\nhost ms per feature | old collate | new (cut on the device) | old / new")
            for batch_size, r in host.items():
                print(f"  batch {batch_size:>2}          | {r['old_collate']:.4f}      | {r['new']:.4f}                  "
                      f"| {r['old_collate'] / r['new']:.0f}x")
        if "ddp" in args.part:
            report["real_token_share"] = ddp = part_ddp(old_root)
            print("\nreal share of computed tokens | " + " | ".join(f"{w} proc" for w in ddp))
            for side in ("old", "new"):
                print(f"  {side:<27} | " + " | ".join(f"{ddp[w][side]:.3f}" for w in ddp))
        if "cpu" in args.part:
            report["cpu_training"] = cpu = part_cpu(old_root, args.steps, args.repeats)
            m = cpu["median_features_per_s"]
            print(f"\ncpu training, {args.steps} steps, median of {args.repeats}: old {m['old']:.2f}, new {m['new']:.2f} "
                  f"features/s = {cpu['new_over_old']:.3f}x; same final loss: {cpu['same_loss']}")
    path = OUT / "trainer.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    run_script(main)
