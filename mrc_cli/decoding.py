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
sort that groups the valid pairs by example, best first. The only loop over examples assembles the Prediction
objects; their n-best lists of dicts are cut from shared arrays only when read (`Prediction.nbest`), because building
20 dicts per example costs more than the whole search (docs/benchmarks.md, "Decoding").
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property, partial
from itertools import chain

import numpy as np

from mrc_cli.config import DecodeConfig


@dataclass
class Prediction:
    id: str
    text: str  # "" when the null answer wins or the example has no valid span
    start: int  # char start in the context, -1 for no span
    end: int  # char end (exclusive), -1 for no span
    score: float  # start + end logit of the best span, -inf when there is none
    null_score: float  # min over the example's windows of the CLS start + end logits
    null_odds: float  # null_score - score (+inf without a span): the "na_prob" the official v2 script thresholds
    # Lazy n-best: `decode` passes a function that cuts this example's list from arrays shared by the whole batch, and
    # `nbest` calls it on first read, so callers that only need answers (evaluation) never pay for ~20 dicts per
    # example, which cost more than the whole span search.
    build_nbest: Callable[[], list[dict]] = field(default=list, repr=False, compare=False)

    @cached_property
    def nbest(self) -> list[dict]:
        """{"text", "start", "end", "score", "probability"}, best first; with allow_null the null candidate too."""
        return self.build_nbest()

    def __eq__(self, other: object) -> bool:
        # The generated __eq__ would skip the n-best (it cannot compare build functions); compare the lists.
        if other.__class__ is not self.__class__:
            return NotImplemented
        same = all(getattr(self, f.name) == getattr(other, f.name) for f in fields(self) if f.compare)
        return same and self.nbest == other.nbest


@dataclass
class _Spans:
    """The n-best spans of all examples, grouped by example index and best first within a group."""

    example: np.ndarray  # (S,) example index
    char_start: np.ndarray  # (S,)
    char_end: np.ndarray  # (S,)
    score: np.ndarray  # (S,)


def pad_offsets(offset_mappings, length: int | None = None) -> np.ndarray:
    """Stack per-feature offset mappings into one (F, L, 2) int array, padding with -1 (not context).

    `offset_mappings` is a features `Dataset`'s `offset_mapping` column (`features["offset_mapping"]`, read as Arrow,
    with no Python object per token), a pyarrow list array, or per-feature sequences of [start, end] pairs. `length`
    is the width of the padded logits; it defaults to the longest feature.
    """
    lengths, pairs = _flatten_offsets(offset_mappings)  # (F,), (T, 2)
    longest = int(lengths.max(initial=0))
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"a feature has {longest} tokens but the logits are padded to {length}")
    padded = np.full((len(lengths), length, 2), -1, dtype=np.int64)  # (F, L, 2)
    is_token = np.arange(length) < lengths[:, None]  # (F, L), True cells in row-major order = the rows of `pairs`
    # Each [start, end] pair viewed as one 16-byte item (complex128: no arithmetic is done on it): numpy's masked copy
    # of whole items is about 8 times faster than of 2-element rows.
    padded.view(np.complex128)[..., 0][is_token] = pairs.view(np.complex128)[:, 0]
    return padded


def _flatten_offsets(offset_mappings) -> tuple[np.ndarray, np.ndarray]:
    """(F,) token counts and the (T, 2) [start, end] pairs of all features, concatenated."""
    outer = _arrow_array(offset_mappings)  # one list of [start, end] lists per feature
    if outer is not None:
        pairs = outer.flatten()  # one [start, end] list per token
        if outer.null_count or pairs.null_count:
            raise ValueError("offset_mapping holds None; mark non-context tokens [-1, -1] instead (mrc_cli.features)")
        lengths = outer.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
        values = pairs.flatten().to_numpy(zero_copy_only=False)
    else:
        lengths = np.fromiter(map(len, offset_mappings), dtype=np.int64, count=len(offset_mappings))
        # One flat conversion: per-feature np.asarray calls cost several times more.
        values = np.fromiter(chain.from_iterable(chain.from_iterable(offset_mappings)), dtype=np.int64)
    if len(values) != 2 * lengths.sum():
        raise ValueError(
            f"offset_mapping needs a [start, end] pair per token: {len(values)} values, {lengths.sum()} tokens"
        )
    return lengths, np.ascontiguousarray(values, dtype=np.int64).reshape(-1, 2)


def _arrow_array(values):
    """`values` as one pyarrow Array when they are a pyarrow array or a datasets `Column`, else None."""
    pa = sys.modules.get("pyarrow")  # neither check imports anything: such values exist only once it is imported
    datasets = sys.modules.get("datasets")
    column = getattr(datasets, "Column", None)  # `dataset["name"]` since datasets 4; a plain list before
    if column is not None and isinstance(values, column) and isinstance(values.source, datasets.Dataset):
        # Iterating a Column decodes it row by row into Python lists, 100 times slower than reading it as Arrow.
        values = values.source.with_format("arrow")[values.column_name]
    if pa is not None and isinstance(values, pa.ChunkedArray):
        return values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()  # combine copies even one
    return values if pa is not None and isinstance(values, pa.Array) else None


def decode(
    example_ids: Sequence[str],
    offsets: np.ndarray,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    contexts: Mapping[str, str],
    cfg: DecodeConfig,
) -> dict[str, Prediction]:
    """Decode one prediction per example from its windows' logits; features may come in any order.

    `example_ids` may be a features `Dataset`'s column (`features["example_id"]`, read as Arrow); `offsets` is
    `pad_offsets(...)` for the same features (F, L, 2), logits are (F, L). An example whose windows offer no valid
    span (no context token, or every pair too long or reversed) gets text "", start/end -1 and score -inf.
    Returns {example_id: Prediction} in order of first appearance in `example_ids`.
    """
    column = _arrow_array(example_ids)
    example_ids = example_ids if column is None else column.to_pylist()
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


def best_span_text(nbest: Sequence[Mapping]) -> str:
    """The text of the best span of an n-best list, passing over the null candidate ("" when there is no span): the
    answer at any null threshold the question's null odds do not exceed."""
    return next((candidate["text"] for candidate in nbest if candidate["start"] >= 0), "")


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
    feature, pair = np.divmod(flat, k * k)
    i, j = np.divmod(pair, k)
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
    # One argsort of an int64 key, group in the high 32 bits and the score's order in the low 32, is several times
    # faster than lexsort((-score, group)), whose float key goes through a slow indirect merge sort.
    order = np.argsort((group.astype(np.int64) << 32) | _descending_order_key(score))
    sizes = np.bincount(group)
    rank_in_group = np.arange(len(order)) - (np.cumsum(sizes) - sizes)[group[order]]
    return order[rank_in_group < n]


def _descending_order_key(score: np.ndarray) -> np.ndarray:
    """Integers in [0, 2**32) that sort ascending as `score` sorts descending (NaN-free scores)."""
    if score.dtype.itemsize > 4:  # float64 bits do not fit: rank the scores instead (one more sort)
        rank = np.empty(len(score), dtype=np.int64)
        rank[np.argsort(-score)] = np.arange(len(score))
        return rank
    bits = score.astype(np.float32).view(np.int32)
    # IEEE 754 is sign and magnitude: flipping the magnitude bits of negatives makes the int order the float order.
    ascending = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (~ascending).astype(np.int64) + 2**31


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
    has_span = sizes > 0  # (E,)
    first = np.cumsum(sizes) - sizes  # (E,) the row of each example's best span, where it has one
    best_scores = np.full(len(ids), -np.inf, dtype=null_scores.dtype)  # (E,)
    best_scores[has_span] = spans.score[first[has_span]]
    # In the logits' dtype, so the threshold test agrees bit for bit with the classic loop's.
    null_odds = null_scores - best_scores  # (E,)
    answered = has_span & ~(cfg.allow_null & (null_odds > cfg.null_score_diff_threshold))  # (E,)
    answer_start, answer_end = np.full((2, len(ids)), -1, dtype=np.int64)  # (E,) each, -1 where the answer is ""
    answer_start[answered] = spans.char_start[first[answered]]
    answer_end[answered] = spans.char_end[first[answered]]
    example_contexts = [contexts[example_id] for example_id in ids]
    nbest_of = _NbestColumns(example_contexts, spans, sizes, null_scores, best_scores, cfg.allow_null).nbest

    # Plain lists: indexing numpy arrays element by element would cost more than the rest of the loop.
    columns = (answer_start, answer_end, best_scores, null_scores, null_odds)
    rows = zip(ids, example_contexts, *(column.tolist() for column in columns))
    predictions = {}
    for e, (example_id, context, start, end, score, null_score, odds) in enumerate(rows):
        text = context[start:end] if start >= 0 else ""
        build_nbest = partial(nbest_of, e)
        predictions[example_id] = Prediction(example_id, text, start, end, score, null_score, odds, build_nbest)
    return predictions


class _NbestColumns:
    """The n-best lists of all examples of one `decode` call as arrays; `nbest(e)` builds example e's list of dicts.

    Probabilities are the softmax over each example's list, the null candidate included when allow_null; like the
    dicts, they are computed only once some n-best list is read.
    """

    def __init__(self, contexts: list[str], spans: _Spans, sizes, null_scores, best_scores, allow_null: bool):
        self.contexts, self.spans, self.null_scores, self.best_scores = contexts, spans, null_scores, best_scores
        self.allow_null = allow_null
        self.bounds = [0, *np.cumsum(sizes).tolist()]  # example e's spans are rows bounds[e]:bounds[e + 1]

    @cached_property
    def probabilities(self) -> tuple[np.ndarray, tuple[list, list, list] | None]:
        """(S,) span probabilities and, with allow_null, the null candidates' (E,) places, scores, probabilities."""
        spans, null_scores, num_examples = self.spans, self.null_scores, len(self.contexts)
        top = np.maximum(self.best_scores, null_scores) if self.allow_null else self.best_scores  # (E,) exp <= 1
        top = top.astype(np.float64)
        weights = np.exp(spans.score - top[spans.example])  # (S,)
        null_weights = np.exp(null_scores - top) if self.allow_null else np.zeros(num_examples)  # (E,)
        totals = np.bincount(spans.example, weights=weights, minlength=num_examples) + null_weights  # (E,)
        if not self.allow_null:
            return weights / totals[spans.example], None
        # Spans are best first, so the null candidate goes after every span that scores at least as high.
        ahead = spans.score >= null_scores[spans.example]  # (S,)
        null_at = np.bincount(spans.example, weights=ahead, minlength=num_examples).astype(int)  # (E,)
        null = (null_at.tolist(), null_scores.tolist(), (null_weights / totals).tolist())
        return weights / totals[spans.example], null

    def nbest(self, e: int) -> list[dict]:
        probability, null = self.probabilities
        context, rows = self.contexts[e], slice(self.bounds[e], self.bounds[e + 1])
        columns = (self.spans.char_start, self.spans.char_end, self.spans.score, probability)
        nbest = [
            {"text": context[s:t], "start": s, "end": t, "score": score, "probability": p}
            for s, t, score, p in zip(*(column[rows].tolist() for column in columns))
        ]
        if null is not None:
            at, score, p = (column[e] for column in null)
            nbest.insert(at, {"text": "", "start": -1, "end": -1, "score": score, "probability": p})
        return nbest
