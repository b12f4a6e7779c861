"""Benchmark: `mrc_cli.decoding.decode` against the decoder before it and the Hugging Face recipe's loop, side by side.

    .venv/bin/python bench/bench_decoding.py                 # 2,000 SQuAD v1-like questions, windows of 384
    .venv/bin/python bench/bench_decoding.py --allow-null    # SQuAD v2-like: half the questions unanswerable
    .venv/bin/python bench/bench_decoding.py --bf16-logits   # logits rounded to bf16, as a bf16 forward gives: ties
    .venv/bin/python bench/bench_decoding.py --quick         # 200 questions, a smoke run
    .venv/bin/python bench/bench_decoding.py --checkpoint outputs/run   # + a model's logits on the SQuAD v2 dev head

All decoders see the same synthetic logits, shaped like a trained model's (see `_context_logits`): question and
special tokens low, a few plausible spans lifted above noisy context tokens, CLS high only when unanswerable. The
examples and features are real `datasets.Dataset`s with mrc_cli's columns (`to_datasets`), built before any timing.
Rows, each the median of its repeats, run round-robin:
  recipe                   `hf_recipe.recipe_postprocess` on the datasets, reading them as the HF recipe does
                           (row iteration, a row decode per window): what users of the recipe run
  classic                  `hf_recipe.classic_postprocess`: the same loop from Python lists, a lower bound
  decode before / now      from the datasets and the logits, as `inference.decode_features` reads them: contexts
                           (read as Arrow), `pad_offsets` on the `offset_mapping` column, `decode` with the
                           `example_id` column; "before" is mrc_cli/decoding.py at --before (default 525bc50, the
                           micro-optimised decoder, which read both columns as Arrow), loaded with `git show`
  ... + every n-best read  then `predictions_to_json`, which reads every n-best list: `mrc eval` writes them all
Answers must agree with both loops and the n-best lists with the decoder before (exit status 1 otherwise; with
--bf16-logits equal scores may be ordered differently, and that is counted instead). With --checkpoint, the same
two decoders also run on real logits: the checkpoint's on the SQuAD v2 dev head (../shared/data), in fp32 and in
bf16 where the machine runs it natively, with the forward pass timed so that decoding can be put in proportion
(the `mrc eval` of that file is this forward pass, plus rechecks, loading and scoring). Writes the result,
machine, versions and command to --out.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import datasets
import numpy as np
import pyarrow
import torch

if __name__ == "__main__":  # run as a script: the repository root, for `bench.*` and this checkout's mrc_cli
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    OUT,
    ROOT,
    SQUAD_V2_DEV_HEAD,
    command_line,
    git_revision,
    machine,
    require_shared,
    run_script,
)
from bench.hf_recipe import classic_postprocess, recipe_postprocess  # noqa: E402
from mrc_cli import __version__, decoding  # noqa: E402
from mrc_cli.config import DecodeConfig  # noqa: E402
from mrc_cli.data import to_dataset  # noqa: E402

PAD_LOGIT = -100.0  # the value the HF recipe pads logits with
SPECIAL_TOKENS = 3  # [CLS] question [SEP] context [SEP]
BEFORE = "525bc50"  # the last revision of the micro-optimised decoder (complex128 views, bit-packed sort keys)
# row: the rows its speed-ups are measured against
SPEEDUP_BASELINES = {
    "decode now": ("recipe", "classic", "decode before"),
    "decode now + every n-best read": ("recipe", "classic", "decode before + every n-best read"),
}


@dataclass
class Batch:
    example_ids: list[str]  # (F,) one per window
    offset_mappings: list[list[list[int]]]  # (F, tokens_f, 2), [-1, -1] off the context
    start_logits: np.ndarray  # (F, L) float32
    end_logits: np.ndarray  # (F, L) float32
    contexts: dict[str, str]
    answers: dict[str, tuple[int, int] | None]  # gold [start, end) characters, None when unanswerable


def synthetic_batch(
    rng: np.random.Generator,
    num_examples: int,
    seq_lengths: tuple[int, int] = (384, 384),
    window_weights: tuple[float, ...] = (0.85, 0.12, 0.03),
    null_fraction: float = 0.5,
) -> Batch:
    """Windowed examples with model-like logits; window_weights[i] is the share of examples with i + 1 windows."""
    windows = []  # (example_id, offsets, start_logits, end_logits)
    contexts, answers = {}, {}
    for e in range(num_examples):
        example_id = f"q{e}"
        max_len = int(rng.integers(seq_lengths[0], seq_lengths[1] + 1))
        num_windows = 1 + int(rng.choice(len(window_weights), p=window_weights))
        context, word_offsets = _random_context(rng, max_len, num_windows)
        contexts[example_id] = context
        gold = None if rng.random() < null_fraction else _random_span(rng, len(word_offsets))
        answers[example_id] = None if gold is None else (int(word_offsets[gold[0], 0]), int(word_offsets[gold[1], 1]))
        for offsets, start, end in _windows(rng, word_offsets, max_len, gold):
            windows.append((example_id, offsets, start, end))

    width = max(len(w[1]) for w in windows)
    start_logits = np.full((len(windows), width), PAD_LOGIT, dtype=np.float32)  # (F, L)
    end_logits = np.full((len(windows), width), PAD_LOGIT, dtype=np.float32)  # (F, L)
    for f, (_, offsets, start, end) in enumerate(windows):
        start_logits[f, : len(offsets)] = start
        end_logits[f, : len(offsets)] = end
    return Batch([w[0] for w in windows], [w[1] for w in windows], start_logits, end_logits, contexts, answers)


def to_datasets(batch: Batch) -> tuple[datasets.Dataset, datasets.Dataset, datasets.Dataset]:
    """(examples, features, recipe_features): the batch as the datasets an evaluation holds.

    Examples have mrc_cli's canonical columns; features have those of mrc_cli's evaluation features (input ids,
    token types, attention mask, example id, offsets with [-1, -1] off the context, whole-word ids and labels), so
    a row access decodes as much as it would in a real run. `recipe_features` is the same with None off the context,
    the recipe's convention.
    """
    records = [
        {
            "id": example_id,
            "title": "synthetic",
            "context": context,
            "question": f"Which words of the context answer synthetic question {example_id}?",
            "answers": {"text": [], "answer_start": []} if span is None else
            {"text": [context[span[0] : span[1]]], "answer_start": [span[0]]},
            "is_impossible": span is None,
        }
        for (example_id, context), span in zip(batch.contexts.items(), batch.answers.values())
    ]
    columns = _feature_columns(batch)
    recipe_offsets = [[None if pair[0] < 0 else pair for pair in offsets] for offsets in batch.offset_mappings]
    return (
        to_dataset(records),
        datasets.Dataset.from_dict(columns),
        datasets.Dataset.from_dict({**columns, "offset_mapping": recipe_offsets}),
    )


def _feature_columns(batch: Batch) -> dict[str, list]:
    rng = np.random.default_rng(0)  # input ids only: decoding never reads them
    word_starts = {}  # example id -> char start of every word (words are single-space separated)
    for example_id, context in batch.contexts.items():
        spaces = np.flatnonzero(np.frombuffer(context.encode(), dtype=np.uint8) == ord(" "))
        word_starts[example_id] = np.concatenate([[0], spaces + 1])
    columns = {name: [] for name in ("input_ids", "token_type_ids", "attention_mask", "word_ids")}
    columns.update(start_positions=[], end_positions=[])
    for example_id, offsets in zip(batch.example_ids, batch.offset_mappings):
        offsets = np.asarray(offsets)  # (T, 2)
        is_context = offsets[:, 0] >= 0
        words = np.where(is_context, np.searchsorted(word_starts[example_id], offsets[:, 0], side="right") - 1, -1)
        start, end = _label_window(offsets, is_context, batch.answers[example_id])
        columns["input_ids"].append(rng.integers(1000, 30000, size=len(offsets)).tolist())
        columns["token_type_ids"].append((np.arange(len(offsets)) >= np.argmax(is_context)).astype(int).tolist())
        columns["attention_mask"].append([1] * len(offsets))
        columns["word_ids"].append(words.tolist())
        columns["start_positions"].append(start)
        columns["end_positions"].append(end)
    return {"example_id": batch.example_ids, "offset_mapping": batch.offset_mappings, **columns}


def _label_window(offsets: np.ndarray, is_context: np.ndarray, span: tuple[int, int] | None) -> tuple[int, int]:
    """The answer's first and last token, or CLS (0, 0) when the window does not hold it."""
    if span is None:
        return 0, 0
    starts = np.flatnonzero(is_context & (offsets[:, 0] == span[0]))
    ends = np.flatnonzero(is_context & (offsets[:, 1] == span[1]))
    return (int(starts[0]), int(ends[0])) if len(starts) and len(ends) else (0, 0)


def _random_context(rng: np.random.Generator, max_len: int, num_windows: int) -> tuple[str, np.ndarray]:
    """Random lowercase words, one token each, enough for num_windows windows; returns (text, (T, 2) offsets)."""
    chunk = _chunk_size(max_len)
    # The last window is partly filled, so window lengths vary as they do with real contexts.
    num_tokens = chunk + (num_windows - 1) * _stride(chunk) - int(rng.integers(0, _stride(chunk)))
    num_tokens = max(num_tokens, 1)
    lengths = rng.integers(1, 9, size=num_tokens)
    starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
    ends = starts + lengths
    chars = rng.integers(ord("a"), ord("z") + 1, size=ends[-1] + 1).astype(np.uint8)
    chars[ends] = ord(" ")
    return chars[: ends[-1]].tobytes().decode(), np.stack([starts, ends], axis=1)


def _chunk_size(max_len: int) -> int:
    """Context tokens per window: what the question (at most a quarter, up to 30) and specials leave."""
    return max_len - min(30, max_len // 4) - SPECIAL_TOKENS


def _stride(chunk: int) -> int:
    """Step between windows: half a chunk, so neighbouring windows overlap by half."""
    return max(chunk // 2, 1)


def _random_span(rng: np.random.Generator, num_tokens: int) -> tuple[int, int]:
    start = int(rng.integers(0, num_tokens))
    return start, min(num_tokens - 1, start + int(rng.geometric(0.3)) - 1)


def _windows(rng: np.random.Generator, word_offsets: np.ndarray, max_len: int, gold):
    """Yield (offsets, start_logits, end_logits) per window, windows overlapping by half a chunk."""
    question_len = min(30, max_len // 4)
    prefix = 2 + question_len  # CLS, question, SEP
    chunk = _chunk_size(max_len)
    num_tokens = len(word_offsets)
    for first in range(0, max(num_tokens - chunk, 0) + _stride(chunk), _stride(chunk)):
        last = min(first + chunk, num_tokens)
        length = prefix + (last - first) + 1
        offsets = [[-1, -1]] * prefix + word_offsets[first:last].tolist() + [[-1, -1]]
        start, end = rng.normal(-6.0, 1.0, size=(2, length)).astype(np.float32)  # question and specials: low
        start[prefix : prefix + last - first], end[prefix : prefix + last - first] = _context_logits(
            rng, first, last, gold
        )
        cls = rng.normal(-4.0, 1.0) if gold is not None else rng.normal(6.0, 1.5)
        start[0], end[0] = cls, cls
        yield offsets, start, end
        if last == num_tokens:
            return


def _context_logits(rng: np.random.Generator, first: int, last: int, gold) -> np.ndarray:
    """(2, last - first) start and end logits over one window's context tokens.

    A trained model spreads its mass over a few plausible spans (entities, dates) rather than over all tokens, so its
    top starts and ends cluster: besides noise, 2-6 distractor spans lift their start and end tokens (the inner
    tokens half as much), and the gold span, when inside the window, is lifted more.
    """
    num_tokens = last - first
    logits = rng.normal(-1.0, 1.0, size=(2, num_tokens))  # (2, T)
    distractor_starts = rng.integers(0, num_tokens, size=rng.integers(2, 7))
    spans = [(int(p), int(p) + int(rng.integers(0, 6)), rng.uniform(1.0, 5.0)) for p in distractor_starts]
    if gold is not None and first <= gold[0] and gold[1] < last:
        spans.append((gold[0] - first, gold[1] - first, rng.uniform(4.0, 9.0)))
    for span_start, span_end, height in spans:
        span_end = min(span_end, num_tokens - 1)
        logits[0, span_start : span_end + 1] += height / 2
        logits[1, span_start : span_end + 1] += height / 2
        logits[0, span_start] += height / 2
        logits[1, span_end] += height / 2
    return logits


def _time_interleaved(runs: dict, repeats: dict[str, int]) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Seconds of every repeat of every run, and each run's last result.

    Repeats go round-robin over the runs, so a burst of load from other jobs on a shared machine slows every run
    alike instead of the one that happened to be timed then.
    """
    times, results = {name: [] for name in runs}, {}
    for round_number in range(max(repeats.values())):
        for name, fn in runs.items():
            if round_number < repeats[name]:
                gc.collect()  # start from the same heap, so a collection owed by the last run does not land here
                began = time.perf_counter()
                results[name] = fn()
                times[name].append(time.perf_counter() - began)
    return times, results


def _summary(times: list[float], num_examples: int, baselines: dict[str, dict]) -> dict:
    best, median = min(times), statistics.median(times)
    summary = {"seconds": times, "best_s": best, "median_s": median, "questions_per_s": num_examples / median}
    if baselines:
        summary["speedup"] = {
            # best against best: the less disturbed figure on a shared machine
            name: {"median": baseline["median_s"] / median, "best": baseline["best_s"] / best}
            for name, baseline in baselines.items()
        }
    return summary


def decoder_at(rev: str):
    """mrc_cli/decoding.py as of git revision `rev`, imported as a module of its own (its mrc_cli imports are ours)."""
    source = subprocess.run(["git", "show", f"{rev}:mrc_cli/decoding.py"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout
    path = Path(tempfile.mkdtemp()) / f"decoding_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run(args: argparse.Namespace) -> dict:
    cfg = DecodeConfig(allow_null=args.allow_null)
    # SQuAD v1 questions all have answers; in v2 dev about half have none.
    null_fraction = 0.5 if args.allow_null else 0.0
    batch = synthetic_batch(np.random.default_rng(args.seed), args.examples, null_fraction=null_fraction)
    if args.bf16_logits:  # what a bf16 forward hands over: fp32 logits with bf16's 8 significant bits
        batch.start_logits, batch.end_logits = (torch.from_numpy(side).bfloat16().float().numpy()
                                                for side in (batch.start_logits, batch.end_logits))
    examples, features, recipe_features = to_datasets(batch)
    num_examples, num_features = len(batch.contexts), len(batch.example_ids)
    width = batch.start_logits.shape[1]
    logits = (batch.start_logits, batch.end_logits)
    loop_args = (cfg.n_best_size, cfg.max_answer_length, cfg.allow_null, cfg.null_score_diff_threshold)
    before = decoder_at(args.before)

    def decode_with(module):  # from the datasets and the logits, as inference.decode_features reads them
        example_columns = examples.with_format("arrow")
        contexts = dict(zip(example_columns["id"].to_pylist(), example_columns["context"].to_pylist()))
        offsets = module.pad_offsets(features["offset_mapping"], width)
        return module.decode(features["example_id"], offsets, *logits, contexts, cfg)

    runs = {
        "recipe": lambda: recipe_postprocess(examples, recipe_features, *logits, *loop_args),
        "classic": lambda: classic_postprocess(
            batch.example_ids, batch.offset_mappings, *logits, batch.contexts, *loop_args
        ),
        "decode before": lambda: decode_with(before),
        "decode before + every n-best read": lambda: before.predictions_to_json(decode_with(before)),
        "decode now": lambda: decode_with(decoding),
        "decode now + every n-best read": lambda: decoding.predictions_to_json(decode_with(decoding)),
    }
    repeats = {name: args.decode_repeats if name.startswith("decode") else args.classic_repeats for name in runs}
    times, results = _time_interleaved(runs, repeats)
    timings = {}
    for name in runs:  # baselines come first in `runs`
        baselines = {baseline: timings[baseline] for baseline in SPEEDUP_BASELINES.get(name, ())}
        timings[name] = _summary(times[name], num_examples, baselines)

    predictions = results["decode now"]
    agreement = {loop: _agreement(predictions, *results[loop]) for loop in ("recipe", "classic")}
    agreement["before"] = _agreement_before(predictions, decode_with(before))
    real = run_checkpoint(args.checkpoint, before, args.decode_repeats) if args.checkpoint else None
    return {
        "benchmark": "decoding",
        "command": command_line(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        **git_revision(),
        "before": args.before,
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "datasets": datasets.__version__,
            "pyarrow": pyarrow.__version__,
            "mrc_cli": __version__,
        },
        "workload": {
            "examples": num_examples,
            "features": num_features,
            "seq_length": width,
            "windows_per_example": num_features / num_examples,
            "feature_columns": features.column_names,
            "bf16_logits": args.bf16_logits,
            "seed": args.seed,
            **vars(cfg),
        },
        "timings": timings,
        "agreement": agreement,
        "checkpoint": real,
    }


def run_checkpoint(checkpoint: str, before, repeats: int) -> dict:
    """Both decoders on a checkpoint's logits for the SQuAD v2 dev head, every n-best read (as `mrc eval` writes
    them), against the forward pass that made the logits; per precision."""
    from accelerate import PartialState

    from mrc_cli.inference import predict_logits
    from mrc_cli.loading import load_trained
    from mrc_cli.precision import resolve_precision
    from mrc_cli.splits import featurize_file

    loaded, state = load_trained(checkpoint), PartialState()
    split = featurize_file(str(SQUAD_V2_DEV_HEAD), loaded.tokenizer, loaded.cfg.data, "eval")
    cfg, width = replace(loaded.cfg.decode, allow_null=True), loaded.cfg.data.max_seq_length
    result = {"checkpoint": checkpoint, "questions": len(split.golds), "features": len(split.features)}
    for precision in dict.fromkeys(("no", resolve_precision("auto", state.device))):
        began = time.perf_counter()
        logits = predict_logits(loaded.model, split.features, state, loaded.cfg.train.eval_batch_size, precision, width)
        forward_s = time.perf_counter() - began

        def decode_with(module):  # as inference.decode_features, then every n-best list read
            offsets = module.pad_offsets(split.features["offset_mapping"], width)
            predictions = module.decode(split.features["example_id"], offsets, logits.start, logits.end,
                                        split.contexts, cfg)
            module.predictions_to_json(predictions)
            return predictions

        runs = {"decode before": lambda: decode_with(before), "decode now": lambda: decode_with(decoding)}
        times, results = _time_interleaved(runs, dict.fromkeys(runs, repeats))
        medians = {name: statistics.median(seconds) for name, seconds in times.items()}
        result[precision] = {
            "forward_s": forward_s,
            **{f"{name}_s": median for name, median in medians.items()},
            **{f"{name}_share_of_forward": median / forward_s for name, median in medians.items()},
            "agreement": _agreement_before(results["decode now"], results["decode before"]),
        }
    return result


def _agreement(predictions, answers: dict[str, str], _nbest, null_odds: dict[str, float]) -> dict:
    """Mismatched answers; null odds counted equal, lower (decode found a better span: its masked top-k saw more
    context tokens) or higher (a bug)."""
    mismatches = [eid for eid, text in answers.items() if predictions[eid].text != text]
    counts = {"identical": 0, "lower_better_span": 0, "higher": 0}
    for example_id, odds in null_odds.items():
        ours = predictions[example_id].null_odds
        counts["identical" if ours == odds else "lower_better_span" if ours < odds else "higher"] += 1
    identical = not mismatches and answers.keys() == predictions.keys()
    return {"identical_answers": identical, "mismatched_ids": mismatches[:20], "null_odds": counts}


def _agreement_before(predictions, before) -> dict:
    """Questions whose answer, scores or n-best list differ from the decoder before; n-best lists that hold the
    same candidates in another order of equal scores are counted apart (the order of ties was the sort's before)."""
    def by_score(nbest):
        return sorted((-c["score"], c["start"], c["end"], c["probability"]) for c in nbest)

    counts = {"questions": len(predictions), "answers": 0, "scores": 0, "nbest": 0, "nbest_only_ties_reordered": 0}
    for example_id, now in predictions.items():
        then = before[example_id]
        counts["answers"] += (now.text, now.start, now.end) != (then.text, then.start, then.end)
        counts["scores"] += (now.score, now.null_score, now.null_odds) != (then.score, then.null_score, then.null_odds)
        if now.nbest != then.nbest:
            reordered = by_score(now.nbest) == by_score(then.nbest)
            counts["nbest_only_ties_reordered" if reordered else "nbest"] += 1
    counts["identical"] = not any(counts[name] for name in ("answers", "scores", "nbest", "nbest_only_ties_reordered"))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="200 examples, fewer repeats: a smoke run")
    parser.add_argument("--allow-null", action="store_true", help="SQuAD v2 decoding (null answers allowed)")
    parser.add_argument("--bf16-logits", action="store_true", help="logits rounded to bf16 (many equal scores)")
    parser.add_argument("--before", default=BEFORE, help=f"git revision of the decoder to compare with ({BEFORE})")
    parser.add_argument("--classic-repeats", type=int, default=5, help="repeats of the recipe and classic rows")
    parser.add_argument("--decode-repeats", type=int, default=20, help="repeats of the decode rows")
    parser.add_argument("--checkpoint", help="also decode this checkpoint's logits on the SQuAD v2 dev head")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="result JSON (default outputs/bench/decoding[_quick].json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.examples, args.classic_repeats, args.decode_repeats = 200, 3, 5
    # A smoke run must not overwrite the full run's result.
    args.out = args.out or OUT / ("decoding_quick.json" if args.quick else "decoding.json")
    if args.checkpoint:
        require_shared("bench_decoding.py", SQUAD_V2_DEV_HEAD)

    result = run(args)
    work = result["workload"]
    print(
        f"{work['examples']} examples, {work['features']} windows of <= {work['seq_length']} tokens, "
        f"allow_null={work['allow_null']}; median of repeats (best), speed-ups median (best against best)"
    )
    for name, timing in result["timings"].items():
        median_ms, best_ms, rate = timing["median_s"] * 1e3, timing["best_s"] * 1e3, timing["questions_per_s"]
        speedups = ", ".join(
            f"{ratio['median']:.1f}x ({ratio['best']:.1f}x) vs {baseline}"
            for baseline, ratio in timing.get("speedup", {}).items()
        )
        print(f"  {name:34s} {median_ms:8.1f} ms ({best_ms:7.1f}) {rate:9,.0f} questions/s  {speedups}")
    agreement = result["agreement"]
    for loop in ("recipe", "classic"):
        answers, null_odds = agreement[loop]["identical_answers"], agreement[loop]["null_odds"]
        print(f"agreement with {loop}: identical answers {answers}; null odds {null_odds}")
    print(f"against the decoder before ({result['before']}), questions that differ: {agreement['before']}")
    real = result["checkpoint"]
    for precision, part in (real or {}).items():
        if isinstance(part, dict):
            print(f"{real['checkpoint']}, {real['questions']} questions ({real['features']} windows) of the SQuAD v2 "
                  f"dev head, precision {precision}: forward {part['forward_s']:.1f} s; decode with every n-best read: "
                  f"before {part['decode before_s'] * 1e3:.0f} ms ({part['decode before_share_of_forward']:.2%}), now "
                  f"{part['decode now_s'] * 1e3:.0f} ms ({part['decode now_share_of_forward']:.2%}); questions that "
                  f"differ: {part['agreement']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if work["bf16_logits"]:  # equal scores: the loops, the decoder before and this one each order them their own way
        return 0
    agreed = all(agreement[loop]["identical_answers"] and not agreement[loop]["null_odds"]["higher"]
                 for loop in ("recipe", "classic"))
    return 0 if agreed and agreement["before"]["identical"] else 1


if __name__ == "__main__":
    run_script(main)
