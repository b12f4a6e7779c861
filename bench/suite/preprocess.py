"""The preprocess part of bench_suite.py: examples/s of building train and eval features, mrc-cli's `featurize_file`
against the recipe's `load_dataset("json")` + `map(prepare_*_features)`, cold and cached; then every train feature's
labels compared window by window, each difference put down to its cause."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path

from bench.common import SQUAD_TRAIN_HEAD, SQUAD_V2_DEV_HEAD, fresh_dir, minilm, write_jsonl
from bench.suite.sides import data_config, run_side


def bench_preprocess(args, sizes: dict) -> dict:
    """Two runs of each side in fresh processes (cold cache, then warm), then the label comparison."""
    work = fresh_dir(args.out / "preprocess")
    train = write_jsonl(SQUAD_TRAIN_HEAD, work / "train.jsonl", sizes["pre_train"])
    dev = write_jsonl(SQUAD_V2_DEV_HEAD, work / "dev.jsonl", sizes["pre_dev"])
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


# -------------------------------------------------------------------------------------------------------------- workers


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
    from transformers import AutoTokenizer

    from bench.hf_recipe import recipe_featurize

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

    from bench.hf_recipe import recipe_featurize
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


WORKERS = (preprocess_ours, preprocess_recipe, compare_labels)


# ------------------------------------------------------------------------------------------------------------ the table


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
