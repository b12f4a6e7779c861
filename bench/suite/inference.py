"""The inference part of bench_suite.py: questions/s of `mrc eval` end to end and of the `Reader` API against the
recipe's load_dataset + features + eval loop + post-processing + scores on one checkpoint, and how often the answers
agree (also against the recipe with mrc-cli's one rule change: non-context tokens masked before the top-k)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from bench.common import SQUAD_V2_DEV_HEAD, fresh_dir, minilm, peak_rss_mb, write_jsonl
from bench.suite.sides import DOC_STRIDE, MAX_SEQ_LENGTH, golds_of, run_side


def bench_inference(args, sizes: dict, trained_checkpoint: str | None) -> dict:
    """One checkpoint, read by the recipe as a Hugging Face folder and by mrc-cli as an `mrc export` folder."""
    import torch

    from mrc_cli.precision import resolve_precision

    work = fresh_dir(args.out / "inference")
    dev = write_jsonl(SQUAD_V2_DEV_HEAD, work / "dev.jsonl", sizes["infer_questions"])
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


def make_export(checkpoint: Path, folder: Path, precision: str, eval_batch_size: int | str, cache_dir: Path,
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


# -------------------------------------------------------------------------------------------------------------- workers


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
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from bench.hf_recipe import recipe_featurize, recipe_logits, recipe_postprocess
    from mrc_cli.inference import headline
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
    metrics = headline(score(golds_of(examples), answers))  # v1.1 rules name EM exact_match, v2.0 exact
    clock.append(time.perf_counter())
    seconds, peak = clock[-1] - clock[0], peak_rss_mb()
    for f, offsets in enumerate(features["offset_mapping"]):
        off_context = [t for t, o in enumerate(offsets) if o is None]
        start[f, off_context] = end[f, off_context] = -1e9
    masked, _, _ = recipe_postprocess(examples, features, start, end, allow_null=with_null)
    return {"seconds": seconds, "load_model_s": clock[1] - clock[0], "features_s": clock[2] - clock[1],
            "forward_s": clock[3] - clock[2], "postprocess_s": clock[4] - clock[3], "score_s": clock[5] - clock[4],
            "features": len(features), **metrics, "precision": "no",
            "peak_rss_mb": peak, "answers": answers, "answers_masked_topk": masked}


def infer_ours_eval(export, dev_file, out) -> dict:
    from mrc_cli.inference import headline
    from mrc_cli.reader import evaluate_file

    started = time.perf_counter()
    metrics = headline(evaluate_file(export, dev_file, out))
    seconds = time.perf_counter() - started
    answers = json.loads((Path(out) / "predictions.json").read_text(encoding="utf-8"))
    return {"seconds": seconds, **metrics, "answers": answers}


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


WORKERS = (fresh_checkpoint, infer_recipe, infer_ours_eval, infer_ours_reader)


# ------------------------------------------------------------------------------------------------------------ the table


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
