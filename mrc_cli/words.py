"""Whole-word units: which unit each token belongs to, word states pooled from token states, word character spans.

A feature's units are CLS (unit 0, "no answer") and the words of its window, numbered 1.. in order. A word's state is
the mean of its tokens' states: one `index_add_` over the flattened batch (sum) divided by the token count, not a
dense (words x tokens) selection matrix. A word's text is the whole word of the context, also where the window edge
cuts it, so a word-level answer can never begin or end inside a word.
"""

from __future__ import annotations

import numpy as np
import torch

from mrc_cli.errors import ConfigError


def unit_index(word_ids: torch.Tensor) -> torch.Tensor:
    """(batch, seq) word ids (-1 off context) -> unit of each token: 0 for CLS, 1.. for words, -1 for the rest."""
    is_word = word_ids >= 0
    big = torch.iinfo(word_ids.dtype).max
    first = torch.where(is_word, word_ids, big).min(dim=1, keepdim=True).values  # (batch, 1) first word of each window
    units = torch.where(is_word, word_ids - first + 1, -1)
    units[:, 0] = 0  # CLS
    return units


def pool_words(states: torch.Tensor, units: torch.Tensor, num_units: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of each unit's token states: (batch, seq, hidden) -> (batch, units, hidden), and a (batch, units) mask of
    units that have tokens (a feature with fewer words than the batch's widest has empty units at its end).

    `num_units`: units per feature in this batch, known on the host from the features (FeatureTensors); without it
    it is read from `units`, which makes the host wait for the device. Tokens of no unit go to one extra slot per
    feature that is dropped, instead of a boolean selection (whose size the host would have to wait for too).
    """
    batch, _, hidden = states.shape
    if num_units is None:
        num_units = int(units.max()) + 1
    slots = num_units + 1
    rows = torch.arange(batch, device=units.device)[:, None] * slots
    flat = (rows + torch.where(units >= 0, units, num_units)).reshape(-1)  # (batch * seq,)
    # summed in fp32: under bf16 autocast a long word's sum would lose precision
    sums = states.new_zeros(batch * slots, hidden, dtype=torch.float32).index_add_(0, flat, states.reshape(-1, hidden).float())
    counts = states.new_zeros(batch * slots, dtype=torch.float32).index_add_(0, flat, states.new_ones(flat.shape, dtype=torch.float32))
    pooled = (sums / counts.clamp(min=1)[:, None]).view(batch, slots, hidden)[:, :num_units]
    return pooled, (counts > 0).view(batch, slots)[:, :num_units]


def token_to_unit_labels(positions: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Token labels -> unit labels: CLS stays 0, -100 (ignored) stays -100, a token becomes its word's unit."""
    safe = positions.clamp(min=0)
    labels = units.gather(1, safe[:, None]).squeeze(1)
    return torch.where(positions < 0, positions, labels)


def unit_offsets(example_ids, offset_mappings, word_ids, width: int) -> np.ndarray:
    """(features, width, 2) character spans of each feature's units, [-1, -1] for CLS and empty units.

    A word's span runs from the first to the last character of all its tokens in every window of its example, so a
    word cut by a window edge still decodes to the whole word.
    """
    rows, unit_of, example_of, word_of, starts, ends = [], [], [], [], [], []
    example_number = {e: i for i, e in enumerate(dict.fromkeys(example_ids))}
    for f, (example_id, offsets, words) in enumerate(zip(example_ids, offset_mappings, word_ids)):
        words = np.asarray(words)
        context = words >= 0
        if not context.any():
            continue
        offsets = np.asarray(offsets)[context]
        words = words[context]
        rows.append(np.full(len(words), f))
        unit_of.append(words - words.min() + 1)
        example_of.append(np.full(len(words), example_number[example_id]))
        word_of.append(words)
        starts.append(offsets[:, 0])
        ends.append(offsets[:, 1])
    spans = np.full((len(example_ids), width, 2), -1, dtype=np.int64)
    if not rows:
        return spans
    rows, unit_of, example_of, word_of, starts, ends = map(np.concatenate, (rows, unit_of, example_of, word_of, starts, ends))
    # whole-word spans per (example, word), over all windows
    key = example_of * (word_of.max() + 1) + word_of
    uniq, group = np.unique(key, return_inverse=True)
    word_start = np.full(len(uniq), np.iinfo(np.int64).max)
    word_end = np.full(len(uniq), -1)
    np.minimum.at(word_start, group, starts)
    np.maximum.at(word_end, group, ends)
    spans[rows, unit_of, 0] = word_start[group]
    spans[rows, unit_of, 1] = word_end[group]
    return spans


# The mean tokens a word that whole-word spans and masking may take: about 1.3 for English WordPiece or SentencePiece,
# 1 for Chinese by characters (BERT's pre-tokenizer, chars) and 1.5 by jieba; a SentencePiece or byte-level BPE
# tokenizer's own "words" of unspaced Chinese are whole clauses, tens of tokens each
MAX_TOKENS_PER_WORD = 4


def check_word_sizes(tokens: int, words: int, segmenter: str, use: str) -> None:
    """Refuse words too long to be words: what `use` (word-level spans, whole-word masking) would take as one."""
    if words and tokens / words > MAX_TOKENS_PER_WORD:
        raise ConfigError(
            f"data.word_segmenter {segmenter}: its words are {tokens / words:.1f} tokens long on average ({tokens} "
            f"tokens in {words} words), so {use} would take whole phrases as one word. Unspaced text (Chinese) is one "
            "word to a SentencePiece or byte-level BPE tokenizer's pre-tokenizer: set data.word_segmenter=jieba "
            "(Chinese words) or chars (one per character)")


def word_sizes(features) -> tuple[int, int]:
    """(context tokens, words) of features' word_ids: a word cut by a window boundary counts in both windows."""
    words = features.with_format("arrow")[:].column("word_ids").combine_chunks()
    flat = words.flatten().to_numpy()
    context = flat >= 0
    starts = context.copy()
    starts[1:] &= flat[1:] != flat[:-1]
    starts[words.offsets.to_numpy()[:-1]] = context[words.offsets.to_numpy()[:-1]]  # each window's first word
    return int(context.sum()), int(starts.sum())


def _labelled(features, words: bool = True) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]:
    """Training features' word ids (all rows, flat; None unless `words`: gathering them copies every row), the
    positions of each labelled answer's first and last token (flat with `words`, else in their row), and their
    example ids. A label's neighbour token is always in the feature: [SEP] follows the context, and a label is never
    at position 0."""
    import pyarrow.compute as pc

    table = features.with_format("arrow")[:]
    start, end = (table.column(name).to_numpy() for name in ("start_positions", "end_positions"))
    labelled = start > 0
    example_ids = pc.filter(table.column("example_id"), labelled).to_numpy(zero_copy_only=False)
    if not words:
        return None, start[labelled], end[labelled], example_ids
    column = table.column("word_ids").combine_chunks()
    flat, offsets = column.flatten().to_numpy(), column.offsets.to_numpy()[:-1]
    return flat, offsets[labelled] + start[labelled], offsets[labelled] + end[labelled], example_ids


def answers_inside_words(features) -> tuple[int, int]:
    """(questions whose labelled answer starts or ends inside a word, questions with a labelled answer) of training
    features: at model.span_level word these are learnt as the whole words (jieba holds 4.8 % of CMRC's answers
    inside a word)."""
    flat, first, last, example_ids = _labelled(features)
    inside = (flat[first - 1] == flat[first]) | (flat[last + 1] == flat[last])
    return len(set(example_ids[inside])), len(set(example_ids))


def answers_longer_than(features, limit: int, span_level: str) -> tuple[int, int]:
    """(questions whose labelled answer is longer than `limit` as the decoder counts it, decode.max_answer_length: in
    tokens, or in words at model.span_level word; questions with a labelled answer) of training features."""
    flat, first, last, example_ids = _labelled(features, words=span_level == "word")
    lengths = last - first + 1 if flat is None else flat[last] - flat[first] + 1
    return len(set(example_ids[lengths > limit])), len(set(example_ids))
