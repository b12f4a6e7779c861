"""N-best answer spans from start/end logits, with the SQuAD v2 null rule.

The rules are those of `postprocess_qa_predictions` in transformers' examples/pytorch/question-answering/utils_qa.py:
top-k starts and ends per window, a (start, end) pair is a candidate when both are context tokens, end >= start and
the span is at most `max_answer_length` tokens; its score is start logit + end logit; the example keeps the
`n_best_size` best candidates over all its windows; its null score is the minimum over its windows of the CLS score
(every window must want the null answer), and with `allow_null` the answer is "" when
null_score - best_score > null_score_diff_threshold.

Deliberate differences from that loop:
- non-context tokens are masked to -inf before the top-k, so a window always offers its k best context tokens
  (the loop takes the top-k over all tokens and then drops question and special tokens, losing those slots);
- the n-best list is the `n_best_size` best spans plus, with `allow_null`, the null candidate (the loop lets the null
  candidate take one of the n slots when it ranks among them);
- spans with equal scores are ordered by their place in the context (start, then end), whatever the order of the
  windows; the loop keeps them in the order its sorts leave them.

The candidate search is plain numpy over all windows at once: the top-k (F, k) starts and ends, their pair scores
(F, k, k), one sort that groups the valid pairs by example, best first; a loop over examples then builds the
Predictions with their n-best lists. Decoding takes 0.3-0.7 s per 2,000 SQuAD questions, under 1 % of `mrc eval`;
the tricks that made it faster saved under 0.5 % each and were dropped (docs/benchmarks.md, "Decoding, simplified").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

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
    # {"text", "start", "end", "score", "probability"}, best first; with allow_null the null candidate ("", -1, -1) too
    nbest: list[dict] = field(default_factory=list, repr=False)

    @property
    def probability(self) -> float:
        """The n-best probability of the answer given (of the null candidate where the answer is "" by the null rule);
        0 where there is no candidate. Calibrated where `mrc eval --calibrate` stored a temperature and null bias:
        then the chance that the answer is right (mrc_cli/calibration.py)."""
        return next((c["probability"] for c in self.nbest if c["start"] == self.start and c["end"] == self.end), 0.0)

    @property
    def no_answer_probability(self) -> float | None:
        """The null candidate's n-best probability; None where the null answer is not allowed (SQuAD v1.1 models)."""
        return next((c["probability"] for c in self.nbest if c["start"] == -1), None)


@dataclass
class _Spans:
    """The n-best spans of all examples, grouped by example index and best first within a group."""

    example: np.ndarray  # (S,) example index
    char_start: np.ndarray  # (S,)
    char_end: np.ndarray  # (S,)
    score: np.ndarray  # (S,)


def pad_offsets(offset_mappings, length: int | None = None) -> np.ndarray:
    """Stack per-feature offset mappings into one (F, L, 2) int array, padding with -1 (not context).

    `offset_mappings`: per-feature sequences of [start, end] pairs (a features `Dataset`'s `offset_mapping` column
    will do) or a pyarrow array of them. `length` is the width of the padded logits; it defaults to the longest
    feature.
    """
    if isinstance(offset_mappings, (pa.Array, pa.ChunkedArray)):
        offset_mappings = offset_mappings.to_pylist()
    features = [_token_offsets(offsets) for offsets in offset_mappings]  # (tokens_f, 2) each
    longest = max((len(offsets) for offsets in features), default=0)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"a feature has {longest} tokens but the logits are padded to {length}")
    padded = np.full((len(features), length, 2), -1, dtype=np.int64)  # (F, L, 2)
    for f, offsets in enumerate(features):
        padded[f, : len(offsets)] = offsets
    return padded


def _token_offsets(offsets) -> np.ndarray:
    """One feature's offsets as a (tokens, 2) int64 array."""
    try:
        pairs = np.asarray(offsets, dtype=np.int64)
    except (TypeError, ValueError):
        if offsets is None or None in offsets:  # the HF recipe's mark off the context
            message = "offset_mapping holds None; mark non-context tokens [-1, -1] instead (mrc_cli.features)"
        else:
            message = f"offset_mapping needs a [start, end] pair per token; a feature has {offsets!r:.80}"
        raise ValueError(message) from None
    if pairs.size == 0:
        return pairs.reshape(0, 2)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"offset_mapping needs a [start, end] pair per token; a feature's offsets are {pairs.shape}")
    return pairs


def decode(
    example_ids: Sequence[str],
    offsets: np.ndarray,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    contexts: Mapping[str, str],
    cfg: DecodeConfig,
) -> dict[str, Prediction]:
    """Decode one prediction per example from its windows' logits; features may come in any order.

    `example_ids` has one id per feature (a features `Dataset`'s `example_id` column will do); `offsets` is
    `pad_offsets(...)` for the same features (F, L, 2), logits are (F, L). An example whose windows offer no valid
    span (no context token, or every pair too long or reversed) gets text "", start/end -1 and score -inf.
    Returns {example_id: Prediction} in order of first appearance in `example_ids`.
    """
    example_ids = list(example_ids)  # a datasets Column iterates into str
    start_logits, end_logits, offsets = np.asarray(start_logits), np.asarray(end_logits), np.asarray(offsets)
    _check_shapes(example_ids, offsets, start_logits, end_logits)
    if not example_ids:
        return {}
    index_of = {}  # example id -> example index, numbered by first appearance
    example_index = np.array([index_of.setdefault(eid, len(index_of)) for eid in example_ids])  # (F,)
    missing = [eid for eid in index_of if eid not in contexts]
    if missing:  # a KeyError from deep inside would not say which argument lacks what
        raise ValueError(f"decode: contexts has no context for {len(missing)} example id(s) of the features (the "
                         f"first: {missing[0]!r}); give {{example id: context}} for every example")
    spans = _nbest_spans(example_index, offsets, start_logits, end_logits, cfg)
    null_scores = _null_scores(example_index, len(index_of), start_logits, end_logits)
    return _build_predictions(list(index_of), contexts, spans, null_scores, cfg)


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


def _check_shapes(example_ids: list[str], offsets: np.ndarray, start_logits, end_logits) -> None:
    num_features = len(example_ids)
    if start_logits.shape != end_logits.shape or start_logits.ndim != 2:
        raise ValueError(f"start/end logits must both be (F, L); got {start_logits.shape} and {end_logits.shape}")
    if start_logits.shape[0] != num_features or offsets.shape != (*start_logits.shape, 2):
        raise ValueError(
            f"{num_features} example ids, offsets {offsets.shape} and logits {start_logits.shape} disagree; "
            "pad offsets to the logits width with pad_offsets(offset_mappings, length=L)"
        )


def _top_context_tokens(logits: np.ndarray, is_context: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Token indices and logits of the k best context tokens per window (unordered); -inf fills short windows.
    Of logits tied for the k-th place, argpartition keeps one of its choosing (bf16 logits tie often)."""
    masked = np.where(is_context, logits, -np.inf)  # (F, L)
    top = np.argpartition(masked, -k, axis=1)[:, -k:]  # (F, k)
    return top, np.take_along_axis(masked, top, axis=1)


def _window_candidates(
    offsets: np.ndarray, start_logits: np.ndarray, end_logits: np.ndarray, cfg: DecodeConfig
) -> tuple[np.ndarray, ...]:
    """(feature, start token, end token, score) of every valid pair of every window's top-k starts and ends."""
    k = min(cfg.n_best_size, start_logits.shape[1])
    is_context = offsets[..., 0] >= 0  # (F, L)
    starts, start_scores = _top_context_tokens(start_logits, is_context, k)  # (F, k)
    ends, end_scores = _top_context_tokens(end_logits, is_context, k)  # (F, k)

    scores = start_scores[:, :, None] + end_scores[:, None, :]  # (F, k, k)
    span_length = ends[:, None, :] - starts[:, :, None] + 1  # (F, k, k)
    # A masked (non-context) start or end made its scores -inf.
    valid = np.isfinite(scores) & (span_length >= 1) & (span_length <= cfg.max_answer_length)  # (F, k, k)
    feature, i, j = np.nonzero(valid)  # (C,) each: window, its start slot, its end slot
    return feature, starts[feature, i], ends[feature, j], scores[feature, i, j]


def _nbest_spans(
    example_index: np.ndarray, offsets: np.ndarray, start_logits: np.ndarray, end_logits: np.ndarray, cfg: DecodeConfig
) -> _Spans:
    """Each example's n_best_size best spans over all its windows, as character offsets."""
    feature, start, end, score = _window_candidates(offsets, start_logits, end_logits, cfg)
    example = example_index[feature]  # (C,)
    char_start, char_end = offsets[feature, start, 0], offsets[feature, end, 1]  # (C,) each
    # By example, then best first; equal scores by place in the context, so the order never depends on the windows'.
    order = np.lexsort((char_end, char_start, -score, example))  # (C,)
    order = order[_first_of_each_span(example[order], char_start[order], char_end[order])]
    sizes = np.bincount(example[order])  # candidates per example
    rank_in_example = np.arange(len(order)) - (np.cumsum(sizes) - sizes)[example[order]]  # (C,)
    keep = order[rank_in_example < cfg.n_best_size]  # (S,)
    return _Spans(example[keep], char_start[keep], char_end[keep], score[keep])


def _first_of_each_span(example: np.ndarray, char_start: np.ndarray, char_end: np.ndarray) -> np.ndarray:
    """Positions (in order) of the first candidate of each (example, character span): windows overlap, and at word
    level a word cut by a window's edge widens to the same whole word in both, so one span comes from several windows.
    Listed once, with its best score, it holds one n-best slot and the softmax runs over distinct spans (BERT's
    reference decoder keeps the first of each answer text)."""
    width = int(char_end.max(initial=0)) + 1
    if (int(example.max(initial=0)) + 1) * width * width < 2**62:  # one int64 key per span: 15x faster than rows
        spans = (example.astype(np.int64) * width + char_start) * width + char_end
        _, first = np.unique(spans, return_index=True)
    else:
        _, first = np.unique(np.stack([example, char_start, char_end], axis=1), axis=0, return_index=True)
    return np.sort(first)


def _null_scores(example_index: np.ndarray, num_examples: int, start_logits, end_logits) -> np.ndarray:
    """Min over each example's windows of the CLS (token 0) score: every window must want the null answer."""
    window_null = start_logits[:, 0] + end_logits[:, 0]  # (F,)
    null_scores = np.full(num_examples, np.inf, dtype=window_null.dtype)  # (E,)
    np.minimum.at(null_scores, example_index, window_null)
    return null_scores


def _build_predictions(
    ids: list[str], contexts: Mapping[str, str], spans: _Spans, null_scores: np.ndarray, cfg: DecodeConfig
) -> dict[str, Prediction]:
    """One Prediction per example, its n-best list included."""
    sizes = np.bincount(spans.example, minlength=len(ids))  # (E,) spans per example
    has_span = sizes > 0  # (E,)
    first = np.cumsum(sizes) - sizes  # (E,) the row of each example's best span, where it has one
    best_scores = np.full(len(ids), -np.inf, dtype=null_scores.dtype)  # (E,)
    best_scores[has_span] = spans.score[first[has_span]]
    # In the logits' dtype, so the threshold test agrees bit for bit with the classic loop's.
    null_odds = null_scores - best_scores  # (E,)
    answered = has_span & ~(cfg.allow_null & (null_odds > cfg.null_score_diff_threshold))  # (E,)
    probabilities, null_probabilities = nbest_probabilities(spans.example, spans.score, null_scores, best_scores,
                                                            cfg.allow_null, cfg.temperature, cfg.null_bias)

    # Python numbers, not numpy scalars, in the Predictions and n-best dicts.
    span_rows = list(zip(spans.char_start.tolist(), spans.char_end.tolist(), spans.score.tolist(),
                         probabilities.tolist()))
    example_rows = zip(ids, first.tolist(), sizes.tolist(), answered.tolist(), best_scores.tolist(),
                       null_scores.tolist(), null_odds.tolist(), null_probabilities.tolist())
    predictions = {}
    for example_id, first_row, size, is_answered, score, null_score, odds, null_probability in example_rows:
        context = contexts[example_id]
        nbest = [{"text": context[s:t], "start": s, "end": t, "score": span_score, "probability": p}
                 for s, t, span_score, p in span_rows[first_row : first_row + size]]
        start, end = (nbest[0]["start"], nbest[0]["end"]) if is_answered else (-1, -1)
        if cfg.allow_null:  # after every span that scores at least as high
            null_at = sum(c["score"] >= null_score for c in nbest)
            nbest.insert(null_at, {"text": "", "start": -1, "end": -1, "score": null_score,
                                   "probability": null_probability})
        text = context[start:end] if is_answered else ""
        predictions[example_id] = Prediction(example_id, text, start, end, score, null_score, odds, nbest)
    return predictions


def nbest_probabilities(span_example: np.ndarray, span_scores: np.ndarray, null_scores: np.ndarray,
                        best_scores: np.ndarray, allow_null: bool, temperature: float = 1.0,
                        null_bias: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Softmax over each example's n-best list, in float64: (S,) span probabilities and (E,) null candidate
    probabilities (the null candidate is in the list with allow_null; without, its probability is 0).

    The one place where decode.temperature and decode.null_bias act (`mrc eval --calibrate` fits them through this
    function, mrc_cli/calibration.py): a span's logit is score / temperature, the null candidate's
    (null_score + null_bias) / temperature. Only probabilities move: the answers and the null decision are taken from
    the raw scores and null odds. `span_example` (S,) is each span's example index, `best_scores` (E,) the best span
    score of each example (-inf where it has none).
    """
    null_logits = (np.asarray(null_scores, dtype=np.float64) + null_bias) / temperature  # (E,)
    best_logits = np.asarray(best_scores, dtype=np.float64) / temperature  # (E,)
    top = np.maximum(best_logits, null_logits) if allow_null else best_logits  # (E,) so that every exp <= 1
    weights = np.exp(np.asarray(span_scores, dtype=np.float64) / temperature - top[span_example])  # (S,)
    null_weights = np.exp(null_logits - top) if allow_null else np.zeros(len(top))  # (E,)
    totals = np.bincount(span_example, weights=weights, minlength=len(top)) + null_weights  # (E,)
    # An example with neither spans nor null candidate has an empty list: a total of 0, no probability to give.
    null_probabilities = np.divide(null_weights, totals, out=np.zeros(len(top)), where=totals > 0)  # (E,)
    return weights / totals[span_example], null_probabilities
