"""One inference path for in-training evaluation, `mrc eval`, `mrc predict` and the Reader API.

features -> logits (length-sorted batches, autocast, gathered across processes) -> n-best answers -> official scores.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from torch.nn import functional as F
from tqdm.auto import tqdm

from mrc_cli.attention import varlen_missing
from mrc_cli.batching import FeatureTensors, inference_batch_size, inference_batches, token_budget
from mrc_cli.config import DecodeConfig, RunConfig, TrainConfig
from mrc_cli.decoding import Prediction, decode, pad_offsets, predictions_to_json
from mrc_cli.features import column
from mrc_cli.files import to_json, write_text_atomically
from mrc_cli.metrics import score
from mrc_cli.precision import autocast, resolve_precision
from mrc_cli.thresholds import null_threshold_sweep
from mrc_cli.words import unit_offsets

NEG = torch.finfo(torch.float32).min
RECHECK_MAX_SHARE = 0.1  # of the windows rerun in fp32 at most (decode.recheck_margin) ...
RECHECK_MIN_WINDOWS = 32  # ... or this many: a Reader call or a served batch of a few windows rechecks its close calls


@dataclass
class Logits:
    start: np.ndarray  # (features, max_seq_length)
    end: np.ndarray  # (features, max_seq_length)
    loss: float | None  # mean loss over the features with labels (-100 labels excluded)


@dataclass(frozen=True)
class OneProcess:
    """A state for predict_logits that runs every batch in this process and gathers nothing: for work the caller
    has already shared between the processes (each process its own examples)."""

    device: torch.device
    process_index: int = 0
    num_processes: int = 1


@torch.no_grad()
def predict_logits(model, features, accelerator, batch_size: int | str, precision: str, width: int,
                   tokens_per_batch: int | str = 0) -> Logits:
    """Logits of every feature, padded to `width`; in batches of `batch_size` features (train.eval_batch_size, auto
    resolved for the device) or, with `tokens_per_batch`
    (eval_token_budget's setting), packed rows of that many tokens: the same logits (tests/test_packing.py).

    `accelerator`: anything with device, process_index and num_processes (an Accelerator or a PartialState). Each
    process runs every world-th length-sorted batch and the results are gathered once at the end, placed by feature
    index: no feature is dropped or counted twice however unevenly the batches divide (accelerate's
    gather_for_metrics needs equal batch shapes on every process, which length-sorted batches do not have).
    """
    pad_id = getattr(model.config, "pad_token_id", None) or 0
    store = FeatureTensors(features, accelerator.device, pad_id, full_rows=False)
    lengths = store.lengths.tolist()
    batch_size = inference_batch_size(batch_size, accelerator.device)
    # feature batches for an encoder that cannot run packed rows (mrc_cli.attention.PACKABLE): the same logits; and
    # for auto where packed rows would not run on varlen attention (fp32, an older torch): no faster
    packs = model.packs and not (tokens_per_batch == "auto" and varlen_missing(accelerator.device, precision))
    store.tokens_per_batch = token_budget(tokens_per_batch if packs else 0, batch_size, lengths, accelerator.device)
    mine = inference_batches(lengths, batch_size, store.tokens_per_batch)[accelerator.process_index::accelerator.num_processes]
    results = []  # (feature indices, start logits, end logits, per-feature loss or None)
    was_training = model.training
    model.eval()
    # a bar for a file's features (cached, as ensembles tell a file from a Reader call's few questions), on one process
    shown = bool(getattr(features, "cache_files", None)) and accelerator.process_index == 0
    with autocast(accelerator.device, precision):  # one context for all batches: the weights are cast once
        for index in tqdm(mine, desc="Answering", unit="batch", leave=False, disable=not shown):
            out = model(**store.batch(index))
            pad = (0, width - out.start_logits.shape[1])
            losses = None if out.feature_loss is None else (out.feature_loss.cpu().numpy(), out.labelled.cpu().numpy())
            results.append((np.asarray(index), F.pad(out.start_logits, pad, value=NEG).cpu().numpy(),
                            F.pad(out.end_logits, pad, value=NEG).cpu().numpy(), losses))
    model.train(was_training)
    if accelerator.num_processes > 1:
        results = gather_object(results)
    start = np.zeros((len(features), width), dtype=np.float32)
    end = np.zeros((len(features), width), dtype=np.float32)
    loss = np.zeros(len(features))
    valid = np.zeros(len(features), dtype=bool)
    for index, s, e, losses in results:
        start[index], end[index] = s, e
        if losses is not None:
            loss[index], valid[index] = losses
    return Logits(start, end, float(loss[valid].mean()) if valid.any() else None)


def eval_token_budget(train_cfg: TrainConfig, width: int, device: torch.device) -> int | str:
    """The inference setting of train.tokens_per_batch: auto stays auto, a training budget is scaled from batch_size
    to the device's eval_batch_size features (and holds a window of `width` tokens)."""
    setting = train_cfg.tokens_per_batch
    if setting in ("auto", 0):
        return setting
    features = inference_batch_size(train_cfg.eval_batch_size, device)
    return max(-(-setting * features // train_cfg.batch_size), width)


def position_offsets(features, width: int, span_level: str = "token") -> np.ndarray:
    """(features, width, 2) characters of each scored position in its context, [-1, -1] off the context: tokens, or
    at word level the units (CLS, then the window's whole words)."""
    if span_level == "word":
        return unit_offsets(list(features["example_id"]), features["offset_mapping"], features["word_ids"], width)
    return pad_offsets(features["offset_mapping"], width)


def decode_features(features, logits: Logits, contexts: dict[str, str], cfg: DecodeConfig,
                    span_level: str = "token") -> dict[str, Prediction]:
    """Answers from logits over tokens, or over words (max_answer_length then counts words)."""
    offsets = position_offsets(features, logits.start.shape[1], span_level)
    return decode(features["example_id"], offsets, logits.start, logits.end, contexts, cfg)


def evaluate_predictions(golds: list[dict], predictions: dict[str, Prediction], cfg: DecodeConfig,
                         metric: str = "auto") -> dict:
    """Official scores (by `metric`, data.metric; auto: the one the golds call for) at the configured null threshold;
    for SQuAD v2 also the threshold that maximises F1."""
    metrics = score(golds, {pid: p.text for pid, p in predictions.items()}, metric)
    if cfg.allow_null:
        nbest = {pid: p.nbest for pid, p in predictions.items()}
        metrics.update(null_threshold_sweep(golds, nbest, {pid: p.null_odds for pid, p in predictions.items()}))
    return metrics


def predict_answers(model, split, cfg: RunConfig, accelerator, precision: str) -> tuple[Logits, dict[str, Prediction]]:
    """Logits and answers of every question of a featurized split.

    Under bf16/fp16 a close call (decode.recheck_margin) is decided again from fp32 logits of its windows: the
    lower precision moves logits by ~0.01 (0.15 at most, measured), enough to swap near-tied spans on ~1.5 % of
    SQuAD questions; rerunning the few close calls keeps nearly all answers those of fp32 at most of bf16's speed.
    """
    batch_size, width = cfg.train.eval_batch_size, cfg.data.max_seq_length
    budget = eval_token_budget(cfg.train, width, accelerator.device)
    logits = predict_logits(model, split.features, accelerator, batch_size, precision, width, budget)
    predictions = decode_features(split.features, logits, split.contexts, cfg.decode, cfg.model.span_level)
    if precision != "no":
        def decide_in_fp32(rows: list[int]) -> dict[str, Prediction]:
            windows = split.features.select(rows)
            exact = predict_logits(model, windows, accelerator, batch_size, "no", width, budget)
            return decode_features(windows, exact, split.contexts, cfg.decode, cfg.model.span_level)

        recheck_close_calls(predictions, column(split.features, "example_id"), cfg.decode, decide_in_fp32)
    return logits, predictions


def recheck_close_calls(predictions: dict[str, Prediction], example_ids: list[str], cfg: DecodeConfig,
                        decide_in_fp32: Callable[[list[int]], dict[str, Prediction]]) -> None:
    """Replace the answers of the close calls (decode.recheck_margin) by `decide_in_fp32(rows)`: the answers of the
    examples of those feature rows (`example_ids` is the features' column) from fp32 logits."""
    if cfg.recheck_margin <= 0:
        return
    close = _closest_calls(predictions, Counter(example_ids), cfg)
    rows = [i for i, qid in enumerate(example_ids) if qid in close]
    if rows:
        predictions.update(decide_in_fp32(rows))


def _closest_calls(predictions: dict[str, Prediction], windows_of: Counter, cfg: DecodeConfig) -> set[str]:
    """Questions within recheck_margin of another answer, closest first, up to RECHECK_MAX_SHARE of the windows or
    RECHECK_MIN_WINDOWS, whichever is more: an undertrained model has close calls everywhere, and rerunning them all
    would cost more than fp32 alone; without the floor, a call of fewer than 10 windows (one question to the Reader)
    would recheck none, and its answer would differ from mrc predict's."""
    margins = {qid: _decision_margin(p, cfg) for qid, p in predictions.items()}
    budget = max(RECHECK_MAX_SHARE * sum(windows_of.values()), RECHECK_MIN_WINDOWS)
    chosen, used = set(), 0
    for qid in sorted((q for q, m in margins.items() if m < cfg.recheck_margin), key=margins.__getitem__):
        if used + windows_of[qid] > budget:
            break
        chosen.add(qid)
        used += windows_of[qid]
    return chosen


def _decision_margin(p: Prediction, cfg: DecodeConfig) -> float:
    """How little the scores must move to change the answer: the gap from the best span to the best one with another
    text and, with allow_null, the distance of the null odds from the threshold."""
    spans = [c for c in p.nbest if c["start"] >= 0]
    runner_up = next((c["score"] for c in spans[1:] if c["text"] != spans[0]["text"]), None)
    margin = spans[0]["score"] - runner_up if runner_up is not None else math.inf
    if cfg.allow_null:
        margin = min(margin, abs(p.null_odds - cfg.null_score_diff_threshold))
    return margin


def place_for_inference(model, cfg: RunConfig):
    """(the model on its device, the PartialState, the precision) for inference with a loaded model's run config.

    A PartialState only places the model: an Accelerator would inherit this process's mixed-precision state (a
    notebook after training) and bake its autocast into the model; precision comes from the checkpoint's config.
    """
    state = PartialState(cpu=cfg.train.cpu or not torch.cuda.is_available())
    return model.to(state.device), state, resolve_precision(cfg.train.precision, state.device)


def evaluate_split(model, split, cfg: RunConfig, accelerator, precision: str):
    """(metrics with dev_loss, predictions) of a model on a featurized split."""
    logits, predictions = predict_answers(model, split, cfg, accelerator, precision)
    metrics = evaluate_predictions(split.golds, predictions, cfg.decode, cfg.data.metric) if split.golds else {}
    metrics["dev_loss"] = logits.loss
    return metrics, predictions


def write_prediction_files(out_dir: Path, predictions, metrics: dict | None = None) -> None:
    """predictions.json {id: answer}, nbest.json, null_odds.json (and metrics.json when scored)."""
    write_answer_files(out_dir, *predictions_to_json(predictions), metrics)


def write_answer_files(out_dir: Path, answers: dict, nbest: dict, null_odds: dict, metrics: dict | None = None) -> None:
    """The files of write_prediction_files from their JSON contents (k-fold merges the folds' so)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"predictions.json": answers, "nbest.json": nbest, "null_odds.json": null_odds}
    if metrics:
        files["metrics.json"] = metrics
    for name, obj in files.items():  # each whole or the one before: a full disk had left half an nbest.json
        write_text_atomically(out_dir / name, to_json(obj, ensure_ascii=False, indent=1))
    # an earlier run's files that this one does not write (eval --calibrate writes its two after these): beside the new
    # answers they would pass for theirs
    for name in ({"metrics.json"} - set(files)) | {"calibration.json", "reliability.png"}:
        (out_dir / name).unlink(missing_ok=True)


def headline(metrics: dict) -> dict:
    """EM and F1 under one name whatever the metric (squad: exact_match, squad_v2: exact, cmrc2018: EM/F1)."""
    exact = next((metrics[k] for k in ("exact_match", "exact", "EM") if k in metrics), None)
    f1 = next((metrics[k] for k in ("f1", "F1") if k in metrics), None)
    return {"exact": exact, "f1": f1}
