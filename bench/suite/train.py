"""The train part of bench_suite.py: `mrc_cli.training.train` against the recipe's loop (`hf_recipe.recipe_train`),
the same optimizer steps, batch size, data and model: features/s, real tokens/s, model FLOP/s against a big matmul's,
dev EM/F1 and peak memory."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

from bench.common import SQUAD_TRAIN_HEAD, SQUAD_V2_DEV_HEAD, fresh_dir, minilm, peak_rss_mb, write_jsonl
from bench.suite.sides import data_config, golds_of, run_side


def bench_train(args, sizes: dict) -> dict:
    """Per seed: mrc-cli (each --ours-settings) and the recipe, the same steps, batch size, data and model."""
    work = fresh_dir(args.out / "train")
    train = write_jsonl(SQUAD_TRAIN_HEAD, work / "train.jsonl", sizes["train_examples"])
    dev = write_jsonl(SQUAD_V2_DEV_HEAD, work / "dev_answerable.jsonl", sizes["dev_questions"], answerable_only=True)
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


def training_gflop(padded_tokens: int, padded_square: int) -> float:
    """Model FLOPs of training MiniLM on these batches: 3x the forward pass (backward = 2x), the forward being 2 FLOPs
    per weight per computed token (padding included: it is computed) plus QK^T and AV over each batch's width."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(minilm())
    h, layers, inter = c.hidden_size, c.num_hidden_layers, c.intermediate_size
    per_token = 2 * (layers * (4 * h * h + 2 * h * inter) + 2 * h)  # attention projections, MLP, the span head
    attention = 4 * layers * h  # per (token, position it attends to): QK^T and AV
    return 3 * (padded_tokens * per_token + padded_square * attention) / 1e9


def mean_by_side(runs: list[dict]) -> dict:
    keys = ("features_per_s", "real_tokens_per_s", "exact", "f1", "peak_rss_mb", "achieved_gflop_per_s",
            "pct_of_matmul_peak")
    by_side = defaultdict(list)
    for run in runs:
        by_side[run["side"]].append(run)
    return {side: {k: None if any(r[k] is None for r in rs) else sum(r[k] for r in rs) / len(rs) for k in keys}
            for side, rs in by_side.items()}


# -------------------------------------------------------------------------------------------------------------- workers


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
    from transformers import AutoTokenizer

    from bench.hf_recipe import recipe_eval, recipe_featurize, recipe_train
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


WORKERS = (matmul_peak, train_ours, train_recipe)


# ------------------------------------------------------------------------------------------------------------ the table


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
