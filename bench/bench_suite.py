"""mrc-cli against the Hugging Face recipe (run_qa_no_trainer.py) side by side: preprocessing, training, inference.

    .venv/bin/python bench/bench_suite.py --quick                      # every part, minutes on 2 CPU cores
    .venv/bin/python bench/bench_suite.py --quick --only train         # one part: preprocess | train | inference
    .venv/bin/python bench/bench_suite.py                              # the full runs (SIZES["full"])
    .venv/bin/python bench/bench_suite.py --ours-settings defaults recipe --seeds 0 1   # as the figures are reported
    .venv/bin/python bench/bench_suite.py --smoke                      # a few examples and steps: checks the script

Both sides get the same model (the offline MiniLM), the same data (../shared/data, written once as flat JSON lines
that both sides read), max_seq_length 384, doc_stride 128, the same batch sizes and step counts. Each measured side
runs in its own Python process, so its peak resident memory (VmHWM, reported by the process itself) is its own; the
clocks start after the imports. The recipe side is `bench/hf_recipe.py`, our code for the recipe's default flags;
each part's code is in `bench/suite/<part>.py`, the worker processes' plumbing in `bench/suite/sides.py`.

  preprocess  examples/s of train and eval features: mrc-cli's `featurize_file` (read, validate, tokenize, label,
              fingerprint) against the recipe's `load_dataset("json")` + `map(prepare_*_features)`; a cold run, then a
              second run in a new process served from each side's cache. Then every train feature's start/end labels
              are compared window by window, and each difference is put down to its cause.
  train       `mrc_cli.training.train` against `hf_recipe.recipe_train`, the same optimizer steps and batch size:
              features/s and real (non-pad) tokens/s of the loop, dev EM/F1 with the v1.1 rules on the answerable
              questions of the v2.0 dev head. mrc-cli runs with its defaults (`--ours-settings defaults`) and/or the
              recipe's hyper-parameters (`recipe`: lr 5e-5, no warm-up, no decay, fp32, random batches).
  inference   one checkpoint for both sides: the recipe model trained by this run's train part, --checkpoint, or a
              fresh QA head on MiniLM. Questions/s of `mrc eval` end to end (`evaluate_file`: features, logits,
              answers, metrics) and of the `Reader` API against the recipe's `load_dataset` + features + eval loop +
              post-processing + scores, at fp32 and at mrc-cli's auto precision; % identical answer texts, and the
              same against the recipe's post-processing with the non-context tokens masked before its top-k (mrc-cli's
              one deliberate rule change): 100% there means every other difference is that rule's.

Estimated on 2 CPU cores: --quick 8-10 minutes; the full runs about 35 minutes (20 of them the recipe's 279 fp32
steps), about 90 with `--ours-settings defaults recipe --seeds 0 1`.

Writes outputs/bench/{preprocess,train,inference}.json, outputs/bench/suite.json (every part file found there) and
prints a table. The recipe's `--pad_to_max_length` is off by default (dynamic padding); `--recipe-padding max_length`
gives the padded mode, the default of the Trainer version run_qa.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib import metadata
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
    require_shared,
    run_script,
)
from bench.suite import inference, preprocess, train  # noqa: E402
from bench.suite.sides import run_worker  # noqa: E402

PARTS = ("preprocess", "train", "inference")
WORKERS = {worker.__name__: worker for part in (preprocess, train, inference) for worker in part.WORKERS}

# None: every question of the file. pre_*: preprocessing; train_examples/steps/batch_size/dev_questions: training (dev
# questions are the answerable ones); infer_questions: inference on the v2.0 dev head, unanswerable ones included.
SIZES = {
    "smoke": {"pre_train": 64, "pre_dev": 32, "train_examples": 96, "steps": 2, "batch_size": 4,
              "dev_questions": 16, "infer_questions": 24},
    "quick": {"pre_train": None, "pre_dev": None, "train_examples": None, "steps": 30, "batch_size": 16,
              "dev_questions": 200, "infer_questions": 200},
    "full": {"pre_train": None, "pre_dev": None, "train_examples": None, "steps": 279, "batch_size": 16,
             "dev_questions": None, "infer_questions": None},  # 279 steps = 1 epoch of the 4,457 train features
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=PARTS, nargs="+", default=list(PARTS), help="parts to run (default: all)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="minutes on 2 CPU cores (SIZES['quick'])")
    size.add_argument("--smoke", action="store_true", help="seconds of work per side: checks that the script runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (both sides, each seed)")
    parser.add_argument("--ours-settings", nargs="+", choices=("defaults", "recipe"), default=["defaults"],
                        help="mrc-cli's hyper-parameters in the train part: its defaults and/or the recipe's")
    parser.add_argument("--recipe-padding", choices=("dynamic", "max_length"), default="dynamic",
                        help="the recipe's padding: dynamic (its default) or --pad_to_max_length")
    parser.add_argument("--eval-batch-size", type=int, default=64, help="inference batch size of both sides")
    parser.add_argument("--checkpoint", type=Path, help="a Hugging Face QA model folder for the inference part")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one measured side (JSON spec)
    args = parser.parse_args()
    if args.worker:
        return run_worker(json.loads(args.worker), WORKERS)
    require_shared("bench_suite", SQUAD_TRAIN_HEAD, SQUAD_V2_DEV_HEAD, skip=True)  # `make bench` on a fresh clone
    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = SIZES[size]
    args.out.mkdir(parents=True, exist_ok=True)
    meta = environment(size)
    trained_checkpoint = None
    for part in PARTS:
        if part not in args.only:
            continue
        print(f"== {part} ({meta['size']})", flush=True)
        if part == "preprocess":
            result = preprocess.bench_preprocess(args, sizes)
        elif part == "train":
            result = train.bench_train(args, sizes)
            trained_checkpoint = result["recipe_checkpoint"]
        else:
            result = inference.bench_inference(args, sizes, trained_checkpoint)
        report = {"part": part, **meta, "sizes": sizes, **result}
        (args.out / f"{part}.json").write_text(json.dumps(report, indent=2))
        print(format_part(report), flush=True)
    suite = {part: json.loads((args.out / f"{part}.json").read_text())
             for part in PARTS if (args.out / f"{part}.json").is_file()}
    (args.out / "suite.json").write_text(json.dumps(suite, indent=2))
    # parts from earlier runs are merged too: their size and date say which run each is from
    print(f"wrote {args.out / 'suite.json'}: " + ", ".join(f"{p} ({r['size']}, {r['date']})" for p, r in suite.items()))


def environment(size: str) -> dict:
    """Machine, date, library versions, git revision and the exact command, recorded beside every figure."""
    return {
        "size": size,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": command_line(),
        "machine": machine() | {"load_average_at_start": os.getloadavg()},
        "versions": {name: metadata.version(name) for name in
                     ("torch", "transformers", "datasets", "accelerate", "tokenizers", "mrc-cli")}
                    | {"python": platform.python_version()},
        **git_revision(),
    }


def format_part(report: dict) -> str:
    rows = {"preprocess": preprocess.preprocess_rows, "train": train.train_rows,
            "inference": inference.inference_rows}[report["part"]](report)
    width = max(len(r[0]) for r in rows)
    lines = [f"  {'':{width}}  {'mrc-cli':>10}  {'recipe':>10}  {'ratio':>6}"]
    for name, ours, theirs, *note in rows:
        ratio = f"{ours / theirs:6.2f}" if isinstance(ours, float) and isinstance(theirs, float) and theirs else ""
        lines.append(f"  {name:{width}}  {cell(ours):>10}  {cell(theirs):>10}  {ratio:>6}  {''.join(note)}")
    return "\n".join(lines)


def cell(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    run_script(main)
