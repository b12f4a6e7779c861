"""Answer distributions of several models combined on the positions of one of them, through the context's characters.

Each model scores its own positions (tokens of its tokenizer, or whole words) in its own windows. Its scores become
probabilities by one softmax per example, over the CLS position and the context positions of all the example's windows
jointly (question tokens can never be answers and have no characters): log-probabilities then differ from the logits
by one constant per example, so span rankings and null odds are those of the logits. The first model is the
reference: its windows and positions are what the decoder sees. Another model's probabilities reach them in one of
two ways:
- featurized like the reference (same tokenizer and data settings: identical windows and offsets), position by
  position, the competition tools' token average;
- otherwise through characters: a position's start probability sits at its first character, its end probability at
  its last; each goes to the reference position whose characters hold that character (a character between tokens,
  a space, goes to the next reference position for a start, the previous for an end), and is shared equally between
  the windows that hold that position. A joint softmax spreads a model's own belief in a token over its windows'
  copies the same way. The null probability (the sum over the model's windows' CLS) is shared equally between the
  reference's windows. Nothing is lost: each model's mass on the reference positions still sums to 1.
Combination, weighted (weights sum to 1): `prob`, the mean of probabilities; `logprob`, the mean of log-probabilities
(a geometric mean). A reference position that receives no mass from a model (a start inside one of that model's
tokens) gets log(1e-308) from it, not -inf: under `logprob` a span that some model cannot express ranks last instead of
vanishing, and no score becomes -inf or NaN. The decoder gets reference logits + (combined log-probability
- reference log-probability): for one model, or the same one twice, the correction is exactly 0 and decoding is the
model's own to the bit; otherwise it is the combined log-probability plus the reference's per-example constant.

Why so: decoding on the reference's positions keeps one decoder (n-best, null odds, the stored threshold,
max_answer_length) for one model and for many, where decoding on characters would need another one and could not
reproduce a single model. Per-example softmax, not per window: a window without the answer would otherwise claim as
much mass as the window with it. `prob` is the default because it stays sensible where tokenizations disagree (a
position one model cannot express keeps the others' mass), while `logprob` sharpens where the models agree; which
scores better is for measurement to say.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# log of the smallest positive float64: the log-probability a model gives a reference position it puts no mass on
LOG_FLOOR = float(np.log(np.finfo(np.float64).tiny))


@dataclass
class Positions:
    """One model's start/end logits over its features, with the characters of each position."""

    example_ids: list[str]  # (F,) the example of each feature (window)
    offsets: np.ndarray  # (F, L, 2) [start, end) characters of each position in its context; [-1, -1] off the context
    start: np.ndarray  # (F, L) logits
    end: np.ndarray  # (F, L)

    def select(self, rows: list[int]) -> Positions:
        return Positions([self.example_ids[r] for r in rows], self.offsets[rows], self.start[rows], self.end[rows])

    @staticmethod
    def concatenate(parts: list[Positions]) -> Positions:
        """The features of `parts` one after another, in the order given (all of one width L)."""
        return Positions([e for part in parts for e in part.example_ids], np.concatenate([p.offsets for p in parts]),
                         np.concatenate([p.start for p in parts]), np.concatenate([p.end for p in parts]))

    def candidates(self) -> np.ndarray:
        """(F, L) the positions an answer can take: CLS (position 0, "no answer") and the context."""
        candidate = self.offsets[..., 0] >= 0
        candidate[:, 0] = True
        return candidate


def combined_logits(reference: Positions, others: list[Positions], weights: list[float],
                    combination: str = "prob") -> tuple[np.ndarray, np.ndarray]:
    """(F, L) start and end logits for the decoder on the reference's features, from all models' distributions.

    `weights`: one per model, the reference first, summing to 1. Every model must hold the reference's examples
    (checked by the caller, which can name the models).
    """
    if combination not in COMBINATIONS:
        raise ValueError(f"combination must be one of {', '.join(COMBINATIONS)}, not {combination!r}")
    combine = COMBINATIONS[combination]
    candidate = reference.candidates()
    own = own_log_probs(reference)
    member_lps = [own] + [on_reference(reference, other) for other in others]
    w = np.asarray(weights, dtype=np.float64)[:, None]  # (M, 1)
    out = []
    for side, logits in enumerate((reference.start, reference.end)):
        stacked = np.stack([lp[side][candidate] for lp in member_lps])  # (M, C) over the candidate positions
        combined = combine(stacked, w)  # (C,)
        values = logits.astype(np.float64)
        values[candidate] += combined - own[side][candidate]
        out.append(values.astype(logits.dtype))
    return out[0], out[1]


def own_log_probs(positions: Positions, ids: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(F, L) start and end log-probabilities of a model on its own positions (-inf off the candidates); `ids`
    numbers the examples (by first appearance when None)."""
    example_index, ids = _index_examples(positions.example_ids, ids)
    candidate = positions.candidates()
    return tuple(log_probs(logits, candidate, example_index, len(ids)) for logits in (positions.start, positions.end))


def on_reference(reference: Positions, other: Positions) -> tuple[np.ndarray, np.ndarray]:
    """(F, L) another model's start and end log-probabilities on the reference's positions: position by position
    where it is featurized like the reference, else through characters (each sums to 1 per example)."""
    example_index, ids = _index_examples(reference.example_ids)
    lp = own_log_probs(other, ids)
    if _aligned(reference, other):
        return lp
    other_index, _ = _index_examples(other.example_ids, ids)
    spans = _ReferenceSpans(reference, example_index, len(ids), _stride(reference, other))
    return spans.receive(other, other_index, *lp)


def window_distributions(reference: Positions, other: Positions) -> tuple[np.ndarray, np.ndarray]:
    """(F, L) another model's start and end distributions on the reference's positions, one per reference window,
    each row summing to 1 (what a window's softmax learns in distillation): a context position gets the whole mass
    of its characters (on_reference shares it between the windows that hold it), CLS the null mass plus the mass
    outside the window, as a window's gold label is CLS when the answer lies outside it."""
    example_index, _ = _index_examples(reference.example_ids)
    rows, cols, _, copy_of, receives = _by_start_character(reference, example_index, _stride(reference))
    out = []
    for lp in on_reference(reference, other):
        mass = np.bincount(copy_of, weights=np.exp(lp[rows, cols]))  # a character's mass over all its positions
        p = np.zeros(reference.offsets.shape[:2])
        p[rows[receives], cols[receives]] = mass[copy_of[receives]]
        p[:, 0] = np.clip(1 - p.sum(axis=1), 0, None)
        out.append(p)
    return out[0], out[1]


def _stride(*positions: Positions) -> int:
    """More than any character offset: (example, character) as one int, example * stride + character."""
    return int(max(p.offsets.max() for p in positions)) + 2


def _by_start_character(reference: Positions, example_index: np.ndarray, stride: int):
    """Every context position of the reference (rows, cols), grouped by (example, start character): the sorted
    keys, each position's key index, and the one position per window that receives its key's mass. The windows of
    an example cut one tokenization, so a position and its copies in the other windows share a start character."""
    rows, cols = np.nonzero(reference.offsets[..., 0] >= 0)
    keys, key_of = np.unique(example_index[rows] * stride + reference.offsets[rows, cols, 0], return_inverse=True)
    return rows, cols, keys, key_of, _one_per_window(rows, key_of)


def _one_per_window(rows: np.ndarray, span: np.ndarray) -> np.ndarray:
    """(N,) True for the position that receives a span's mass in each window: the last of those starting at its
    character, as a labelled answer starts at the last token starting at or before it. A SentencePiece "▁" alone
    (a word boundary) shares its character with the next piece: counted as a copy in its own window, it would take
    half of that character's mass, or (as a target) double it. `rows` ascending, positions in a row ascending."""
    pair = rows.astype(np.int64) * (int(span.max(initial=0)) + 1) + span
    last = len(pair) - 1 - np.unique(pair[::-1], return_index=True)[1]
    receives = np.zeros(len(pair), dtype=bool)
    receives[last] = True
    return receives


def log_probs(logits: np.ndarray, candidate: np.ndarray, example_index: np.ndarray, num_examples: int) -> np.ndarray:
    """(F, L) float64 log-softmax over all candidate positions of each example's windows jointly; -inf elsewhere.

    Computed as logit - logsumexp (never exp, then log), so for the reference the correction is exactly 0 when the
    combination returns its own log-probabilities.
    """
    x = np.where(candidate, logits.astype(np.float64), -np.inf)  # (F, L)
    example_max = np.full(num_examples, -np.inf)  # (E,) finite: CLS is always a candidate
    np.maximum.at(example_max, example_index, x.max(axis=1))
    shifted = x - example_max[example_index, None]
    totals = np.bincount(example_index, weights=np.exp(shifted).sum(axis=1), minlength=num_examples)  # (E,)
    return shifted - np.log(totals)[example_index, None]


def _mean_probs(log_p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """log(sum_m w_m p_m) from (M, C) log-probabilities, shifted by the max: for one model log(1 * exp(0)) is 0."""
    top = log_p.max(axis=0)  # (C,) finite: the reference's log-probabilities are
    return top + np.log((w * np.exp(log_p - top)).sum(axis=0))


def _mean_log_probs(log_p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """sum_m w_m log p_m: the log of a weighted geometric mean (unnormalised, which only shifts each example)."""
    return (w * log_p).sum(axis=0)


# name -> (M, C) log-probabilities and (M, 1) weights -> (C,) combined log-probabilities
COMBINATIONS = {"prob": _mean_probs, "logprob": _mean_log_probs}


def _aligned(reference: Positions, other: Positions) -> bool:
    """Same windows and the same characters at every position: combine position by position."""
    return other.example_ids == reference.example_ids and np.array_equal(other.offsets, reference.offsets)


def _index_examples(example_ids: list[str], ids: dict[str, int] | None = None) -> tuple[np.ndarray, dict[str, int]]:
    """The example number of every feature, and the numbering: `ids`, else by first appearance."""
    if ids is not None:
        return np.array([ids[e] for e in example_ids], dtype=np.int64), ids
    ids = {}
    return np.array([ids.setdefault(e, len(ids)) for e in example_ids], dtype=np.int64), ids


class _ReferenceSpans:
    """The distinct character spans of the reference's context positions, per example, in character order, and the
    positions (one per window holding the span) that share each span's mass."""

    def __init__(self, reference: Positions, example_index: np.ndarray, num_examples: int, stride: int):
        # a span is a start character
        rows, cols, self.keys, span_of, receives = _by_start_character(reference, example_index, stride)
        self.stride = stride
        self.example = self.keys // self.stride
        span_end = np.zeros(len(self.keys), dtype=np.int64)
        np.maximum.at(span_end, span_of, reference.offsets[rows, cols, 1])
        rows, cols, self.span_of = rows[receives], cols[receives], span_of[receives]
        self.copies = np.bincount(self.span_of, minlength=len(self.keys))  # the windows holding each span
        # sorted as the spans are when they do not overlap; the running max keeps searchsorted valid when they do
        self.end_keys = np.maximum.accumulate(self.example * self.stride + span_end)
        self.rows, self.cols, self.example_index = rows, cols, example_index
        self.windows = np.bincount(example_index, minlength=num_examples)  # (E,)
        self.shape = reference.offsets.shape[:2]

    def receive(self, other: Positions, other_index: np.ndarray, start_lp: np.ndarray, end_lp: np.ndarray):
        """(F, L) log-probabilities on the reference's positions of another model's start and end distributions."""
        rows, cols = np.nonzero(other.offsets[..., 0] >= 0)
        example = other_index[rows]
        first = other.offsets[rows, cols, 0]
        last = np.maximum(other.offsets[rows, cols, 1] - 1, first)
        starts = self._to_position(self._span_from(example, first), np.exp(start_lp[rows, cols]), other_index, start_lp)
        ends = self._to_position(self._span_to(example, last), np.exp(end_lp[rows, cols]), other_index, end_lp)
        return starts, ends

    def _span_from(self, example: np.ndarray, char: np.ndarray) -> np.ndarray:
        """The span holding each character, else the next one in its example (else its example's last)."""
        span = np.minimum(np.searchsorted(self.end_keys, example * self.stride + char, side="right"), len(self.keys) - 1)
        return np.where(self.example[span] == example, span, span - 1)

    def _span_to(self, example: np.ndarray, char: np.ndarray) -> np.ndarray:
        """The span holding each character, else the previous one in its example (else its example's first)."""
        span = np.searchsorted(self.keys, example * self.stride + char, side="right") - 1
        return np.where((span >= 0) & (self.example[np.maximum(span, 0)] == example), span, span + 1)

    def _to_position(self, span: np.ndarray, mass: np.ndarray, other_index: np.ndarray, lp: np.ndarray) -> np.ndarray:
        span_mass = np.bincount(span, weights=mass, minlength=len(self.keys))
        null_mass = np.bincount(other_index, weights=np.exp(lp[:, 0]), minlength=len(self.windows))  # (E,)
        share = np.zeros(self.shape)
        share[self.rows, self.cols] = span_mass[self.span_of] / self.copies[self.span_of]
        share[:, 0] = null_mass[self.example_index] / self.windows[self.example_index]
        with np.errstate(divide="ignore"):
            return np.maximum(np.log(share), LOG_FLOOR)
