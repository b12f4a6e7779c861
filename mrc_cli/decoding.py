"""N-best answer spans from start/end logits, with the SQuAD v2 null rule, vectorised over all windows at once.

The rules are those of `postprocess_qa_predictions` in transformers' examples/pytorch/question-answering/utils_qa.py:
top-k starts and ends per window, a (start, end) pair is a candidate when both are context tokens, end >= start and
the span is at most `max_answer_length` tokens; its score is start logit + end logit; the example keeps the
`n_best_size` best candidates over all its windows; its null score is the minimum over its windows of the CLS score
(every window must want the null answer), and with `allow_null` the answer is "" when
null_score - best_score > null_score_diff_threshold.

Two deliberate differences from that loop:
- non-context tokens are masked to -inf before the top-k, so a window always offers its k best context tokens
  (the loop takes the top-k over all tokens and then drops question and special tokens, losing those slots);
- the n-best list is the `n_best_size` best spans plus, with `allow_null`, the null candidate (the loop lets the null
  candidate take one of the n slots when it ranks among them).

Candidate search is array work over all windows at once: a masked top-k (F, k), the pair scores (F, k, k), then one
sort that groups the valid pairs by example, best first. The only loop over examples assembles the output objects,
and with n-best lists of 20 dicts per example that assembly, not the search, is most of the run time
(docs/benchmarks.md, "Decoding").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mrc_cli.errors import ConfigError


@dataclass
class DecodeConfig:
    n_best_size: int = 20
    max_answer_length: int = 30  # in tokens
    null_score_diff_threshold: float = 0.0  # higher: fewer null answers
    allow_null: bool = False  # SQuAD v2: an example may be answered with ""

    def __post_init__(self) -> None:
        for name in ("n_best_size", "max_answer_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"decode.{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class Prediction:
    id: str
    text: str  # "" when the null answer wins or the example has no valid span
    start: int  # char start in the context, -1 for no span
    end: int  # char end (exclusive), -1 for no span
    score: float  # start + end logit of the best span, -inf when there is none
    null_score: float  # min over the example's windows of the CLS start + end logits
    null_odds: float  # null_score - score (+inf without a span): the "na_prob" the official v2 script thresholds
    nbest: list[dict] = field(default_factory=list)  # {"text", "start", "end", "score", "probability"}, best first


@dataclass
class _Spans:
    """The n-best spans of all examples, grouped by example index and best first within a group."""

    example: np.ndarray  # (S,) example index
    char_start: np.ndarray  # (S,)
    char_end: np.ndarray  # (S,)
    score: np.ndarray  # (S,)


def pad_offsets(offset_mappings: Sequence[Sequence[Sequence[int]]], length: int | None = None) -> np.ndarray:
    """Stack per-feature offset mappings into one (F, L, 2) int array, padding with -1 (not context).

    `length` is the width of the padded logits; it defaults to the longest feature.
    """
    longest = max((len(offsets) for offsets in offset_mappings), default=0)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"a feature has {longest} tokens but the logits are padded to {length}")
    padded = np.full((len(offset_mappings), length, 2), -1, dtype=np.int64)  # (F, L, 2)
    for i, offsets in enumerate(offset_mappings):
        if len(offsets):
            padded[i, : len(offsets)] = offsets
    return padded


def decode(
    example_ids: Sequence[str],
    offsets: np.ndarray,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    contexts: Mapping[str, str],
    cfg: DecodeConfig,
) -> dict[str, Prediction]:
    """Decode one prediction per example from its windows' logits; features may come in any order.

    `offsets` is `pad_offsets(...)` for the same features (F, L, 2), logits are (F, L). An example whose windows offer
    no valid span (no context token, or every pair too long or reversed) gets text "", start/end -1 and score -inf.
    Returns {example_id: Prediction} in order of first appearance in `example_ids`.
    """
    start_logits, end_logits, offsets = np.asarray(start_logits), np.asarray(end_logits), np.asarray(offsets)
    _check_shapes(example_ids, offsets, start_logits, end_logits)
    if len(example_ids) == 0:
        return {}
    example_index, ids = _index_examples(example_ids)
    spans = _nbest_spans(example_index, offsets, start_logits, end_logits, cfg)
    null_scores = _null_scores(example_index, len(ids), start_logits, end_logits)
    return _build_predictions(ids, contexts, spans, null_scores, cfg)


def predictions_to_json(
    predictions: Mapping[str, Prediction],
) -> tuple[dict[str, str], dict[str, list[dict]], dict[str, float]]:
    """The three files of the SQuAD recipe: answers {id: text}, n-best lists {id: nbest}, null odds {id: odds}."""
    answers = {pid: p.text for pid, p in predictions.items()}
    nbest = {pid: p.nbest for pid, p in predictions.items()}
    null_odds = {pid: p.null_odds for pid, p in predictions.items()}
    return answers, nbest, null_odds


def _check_shapes(example_ids: Sequence[str], offsets: np.ndarray, start_logits, end_logits) -> None:
    num_features = len(example_ids)
    if start_logits.shape != end_logits.shape or start_logits.ndim != 2:
        raise ValueError(f"start/end logits must both be (F, L); got {start_logits.shape} and {end_logits.shape}")
    if start_logits.shape[0] != num_features or offsets.shape != (*start_logits.shape, 2):
        raise ValueError(
            f"{num_features} example ids, offsets {offsets.shape} and logits {start_logits.shape} disagree; "
            "pad offsets to the logits width with pad_offsets(offset_mappings, length=L)"
        )


def _index_examples(example_ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Example index of every feature, numbered by first appearance, and the ids in that order."""
    index_of: dict[str, int] = {}
    example_index = np.fromiter(
        (index_of.setdefault(eid, len(index_of)) for eid in example_ids), dtype=np.int64, count=len(example_ids)
    )
    return example_index, list(index_of)


def _top_context_tokens(logits: np.ndarray, is_context: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Token indices and logits of the k best context tokens per window (unordered); -inf fills short windows."""
    masked = np.where(is_context, logits, -np.inf)  # (F, L)
    # int32 indices halve the memory traffic of the (F, k, k) span arithmetic that follows.
    top = np.argpartition(masked, -k, axis=1)[:, -k:].astype(np.int32)  # (F, k)
    return top, np.take_along_axis(masked, top, axis=1)


def _window_candidates(
    offsets: np.ndarray, start_logits: np.ndarray, end_logits: np.ndarray, cfg: DecodeConfig
) -> tuple[np.ndarray, ...]:
    """(feature, start token, end token, score) of every valid pair of every window's top-k starts and ends."""
    num_features, length = start_logits.shape
    k = min(cfg.n_best_size, length)
    is_context = offsets[..., 0] >= 0  # (F, L)
    starts, start_scores = _top_context_tokens(start_logits, is_context, k)  # (F, k)
    ends, end_scores = _top_context_tokens(end_logits, is_context, k)  # (F, k)

    scores = start_scores[:, :, None] + end_scores[:, None, :]  # (F, k, k)
    span_length = ends[:, None, :] - starts[:, :, None] + 1  # (F, k, k)
    # A masked (non-context) start or end made its scores -inf.
    valid = np.isfinite(scores) & (span_length >= 1) & (span_length <= cfg.max_answer_length)  # (F, k, k)
    flat = np.flatnonzero(valid)  # (C,) indices into (F, k, k)
    feature, i, j = flat // (k * k), flat // k % k, flat % k
    return feature, starts[feature, i], ends[feature, j], scores.reshape(-1)[flat]


def _nbest_spans(
    example_index: np.ndarray, offsets: np.ndarray, start_logits: np.ndarray, end_logits: np.ndarray, cfg: DecodeConfig
) -> _Spans:
    """Each example's n_best_size best spans over all its windows, as character offsets."""
    feature, start, end, score = _window_candidates(offsets, start_logits, end_logits, cfg)
    keep = _first_n_per_group(example_index[feature], score, cfg.n_best_size)
    return _Spans(
        example=example_index[feature[keep]],
        char_start=offsets[feature[keep], start[keep], 0],
        char_end=offsets[feature[keep], end[keep], 1],
        score=score[keep],
    )


def _first_n_per_group(group: np.ndarray, score: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n best scores of every group, ordered by group, then best first (ties in any order)."""
    score_rank = np.empty(len(score), dtype=np.int64)
    score_rank[np.argsort(-score)] = np.arange(len(score))
    # One argsort of a unique integer key (group major, score rank minor) is several times faster than
    # lexsort((-score, group)), whose float key goes through a slow indirect merge sort.
    order = np.argsort(group * len(score) + score_rank)
    sizes = np.bincount(group)
    rank_in_group = np.arange(len(order)) - (np.cumsum(sizes) - sizes)[group[order]]
    return order[rank_in_group < n]


def _null_scores(example_index: np.ndarray, num_examples: int, start_logits, end_logits) -> np.ndarray:
    """Min over each example's windows of the CLS (token 0) score: every window must want the null answer."""
    window_null = start_logits[:, 0] + end_logits[:, 0]  # (F,)
    null_scores = np.full(num_examples, np.inf, dtype=window_null.dtype)  # (E,)
    np.minimum.at(null_scores, example_index, window_null)
    return null_scores


def _build_predictions(
    ids: list[str], contexts: Mapping[str, str], spans: _Spans, null_scores: np.ndarray, cfg: DecodeConfig
) -> dict[str, Prediction]:
    """One Prediction per example: the numbers are array work, the loop only assembles objects."""
    sizes = np.bincount(spans.example, minlength=len(ids))  # (E,) spans per example
    first = np.cumsum(sizes) - sizes  # (E,) where each example's spans begin, best first
    best_scores = np.full(len(ids), -np.inf, dtype=null_scores.dtype)  # (E,)
    best_scores[sizes > 0] = spans.score[first[sizes > 0]]
    # In the logits' dtype, so the threshold test agrees bit for bit with the classic loop's.
    null_odds = null_scores - best_scores  # (E,)
    answered = (sizes > 0) & ~(cfg.allow_null & (null_odds > cfg.null_score_diff_threshold))  # (E,)
    nbests = _nbest_lists(ids, contexts, spans, sizes, null_scores, best_scores, cfg.allow_null)

    # Plain lists: indexing numpy arrays element by element would cost more than the rest of the loop.
    char_start, char_end = spans.char_start.tolist(), spans.char_end.tolist()
    columns = (first.tolist(), answered.tolist(), best_scores.tolist(), null_scores.tolist(), null_odds.tolist())
    predictions = {}
    for example_id, i, has_answer, score, null_score, odds, nbest in zip(ids, *columns, nbests):
        start, end = (char_start[i], char_end[i]) if has_answer else (-1, -1)
        text = contexts[example_id][start:end] if has_answer else ""
        predictions[example_id] = Prediction(example_id, text, start, end, score, null_score, odds, nbest)
    return predictions


def _nbest_lists(
    ids: list[str], contexts: Mapping[str, str], spans: _Spans, sizes, null_scores, best_scores, allow_null: bool
) -> list[list[dict]]:
    """Each example's n-best as dicts, with the softmax probability over its list (the null candidate included)."""
    top = np.maximum(best_scores, null_scores) if allow_null else best_scores  # (E,) so that exp cannot overflow
    top = top.astype(np.float64)
    weights = np.exp(spans.score - top[spans.example])  # (S,)
    null_weights = np.exp(null_scores - top) if allow_null else np.zeros(len(ids))  # (E,)
    totals = np.bincount(spans.example, weights=weights, minlength=len(ids)) + null_weights  # (E,)

    example_contexts = [contexts[example_id] for example_id in ids]
    columns = (spans.char_start.tolist(), spans.char_end.tolist(), spans.score.tolist())
    probabilities = (weights / totals[spans.example]).tolist()
    entries = [
        {"text": example_contexts[e][s:t], "start": s, "end": t, "score": score, "probability": p}
        for e, s, t, score, p in zip(spans.example.tolist(), *columns, probabilities)
    ]
    bounds = np.cumsum(sizes).tolist()
    nbests = [entries[lo:hi] for lo, hi in zip([0, *bounds], bounds)]
    if allow_null:
        # Spans are best first, so the null candidate goes after every span that scores at least as high.
        null_at = np.bincount(spans.example, weights=spans.score >= null_scores[spans.example], minlength=len(ids))
        nulls = zip(null_at.astype(int).tolist(), null_scores.tolist(), (null_weights / totals).tolist())
        for nbest, (at, score, p) in zip(nbests, nulls):
            nbest.insert(at, {"text": "", "start": -1, "end": -1, "score": score, "probability": p})
    return nbests
