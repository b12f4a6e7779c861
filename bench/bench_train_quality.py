"""Quality bar of issue 7: fine-tune the offline MiniLM with `mrc train` on the SQuAD v1.1 train head, score on the
answerable questions of the SQuAD v2.0 dev head with the v1.1 rules, and compare with the Hugging Face recipe's
figures measured on this machine (../shared/MEASURED.md: F1 45.48 / EM 31.21, 3.68 features/s).

    .venv/bin/python bench/bench_train_quality.py [--seeds 0 1] [--lr 1e-4] [--precision auto] [--no-group]

Writes outputs/bench/train_quality.json and prints one line per run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script: the repository root, for `bench.*` and this checkout's mrc_cli
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (  # noqa: E402
    OUT,
    SQUAD_TRAIN_HEAD,
    SQUAD_V2_DEV_HEAD,
    command_line,
    git_revision,
    machine,
    minilm,
    require_shared,
    run_script,
)

RECIPE = {"f1": 45.48, "exact": 31.21, "features_per_s": 3.68, "source": "shared/MEASURED.md"}


def minilm_config(train_file, dev_file, output_dir: Path, seed: int = 0, max_steps: int = 0):
    """The setting of shared/MEASURED.md: offline MiniLM, 384/128 windows, batch 16, one epoch (or max_steps), no
    evaluation or checkpoint before the end; mrc-cli's defaults for everything else."""
    from mrc_cli.config import RunConfig

    cfg = RunConfig()
    cfg.model.name_or_path = minilm()
    cfg.data.train_file, cfg.data.dev_file = str(train_file), str(dev_file)
    cfg.data.max_seq_length, cfg.data.doc_stride = 384, 128
    t = cfg.train
    t.output_dir = str(output_dir)
    t.epochs, t.max_steps, t.batch_size, t.seed, t.eval_steps, t.save_steps = 1, max_steps, 16, seed, 0, 0
    return cfg


def run_and_measure(cfg) -> tuple[dict, object]:
    """Train; return (steps, EM, F1, training features/s, wall seconds) and the TrainResult."""
    from mrc_cli.inference import headline
    from mrc_cli.training import train

    started = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - started
    log = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    figures = headline(result.metrics)
    return {"steps": result.steps, "attention_dropout": cfg.model.attention_dropout, "exact": figures["exact"], "f1": figures["f1"],
            "train_features_per_s": [r["features_per_s"] for r in log if "features_per_s" in r][-1],
            "wall_s_including_eval": wall, "run_dir": str(result.run_dir)}, result


def answerable_dev(out_dir: Path) -> Path:
    """The v2.0 dev head without its unanswerable questions (the v1.1 rules then apply)."""
    data = json.loads(SQUAD_V2_DEV_HEAD.read_text())
    for article in data["data"]:
        for p in article["paragraphs"]:
            p["qas"] = [qa for qa in p["qas"] if not qa.get("is_impossible")]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "squad_v2.0_dev_head_answerable.json"
    path.write_text(json.dumps(data))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--max-grad-norm", type=float, default=0.0)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--attention-dropout", type=float, help="model.attention_dropout (default: mrc-cli's)")
    parser.add_argument("--no-group", action="store_true", help="random batches instead of length-grouped ones")
    parser.add_argument("--out", default=str(OUT / "train_quality.json"))
    args = parser.parse_args()
    require_shared("bench_train_quality", SQUAD_TRAIN_HEAD, SQUAD_V2_DEV_HEAD)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dev = answerable_dev(out.parent)
    runs = []
    for seed in args.seeds:
        cfg = minilm_config(SQUAD_TRAIN_HEAD, dev,
                            out.parent / f"train_quality_seed{seed}_{int(time.time())}", seed)
        t = cfg.train
        t.lr, t.warmup, t.weight_decay, t.max_grad_norm = args.lr, args.warmup, args.weight_decay, args.max_grad_norm
        t.precision, t.group_by_length = args.precision, not args.no_group
        if args.attention_dropout is not None:
            cfg.model.attention_dropout = args.attention_dropout
        run, _ = run_and_measure(cfg)
        run["seed"] = seed
        print(json.dumps(run))
        runs.append(run)
    summary = {
        "command": command_line(), "date": time.strftime("%Y-%m-%d"), "machine": machine(), **git_revision(),
        "settings": vars(args), "recipe": RECIPE, "runs": runs,
        "mean_f1": sum(r["f1"] for r in runs) / len(runs), "mean_exact": sum(r["exact"] for r in runs) / len(runs),
        "speedup_vs_recipe": sum(r["train_features_per_s"] for r in runs) / len(runs) / RECIPE["features_per_s"],
    }
    out.write_text(json.dumps(summary, indent=2))
    print(f"mean F1 {summary['mean_f1']:.2f} EM {summary['mean_exact']:.2f} (recipe 45.48 / 31.21); "
          f"training {summary['speedup_vs_recipe']:.2f}x the recipe's features/s; {out}")


if __name__ == "__main__":
    run_script(main)
