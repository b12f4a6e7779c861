"""Masked-language-model inputs: which tokens a sequence predicts and what the model sees in their place.

BERT's recipe (Devlin et al., 2019): `mask_prob` of the units are selected; each selected token is replaced by
[MASK] 80 % of the time, by a random token 10 %, and left unchanged 10 %, and is predicted. Whole-word masking
(masking="word", the units are data.word_segmenter's words) selects all sub-tokens of a word together, each
then replaced on its own as in Google's whole-word release; token masking (masking="token") selects tokens
independently. Special tokens (word id -1) are never selected. Each unit is selected independently (a Bernoulli draw),
so a sequence's count varies around mask_prob of its units.

Every draw is an integer hash of (seed, epoch, sequence index, word or position, purpose), computed on the batch's
device: the masks are a pure function of those, not of a random stream whose position would depend on the batch
plan, so a resumed run, any process count and any batch composition see the same masks, and no RNG state is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # of the selected tokens; the rest stay unchanged
IGNORE_INDEX = -100  # the label of a token that is not predicted
_BITS = 0x7FFFFFFF  # hashes are 31-bit: every product below stays under 2^63, no int64 overflow on any device
_SELECT, _REPLACE, _TOKEN = 1, 2, 3  # the purposes of a draw


@dataclass(frozen=True)
class MaskingRule:
    whole_word: bool
    mask_prob: float
    mask_token_id: int
    vocab_size: int  # random replacements are drawn from [0, vocab_size)
    seed: int


def mask_tokens(input_ids: torch.Tensor, word_ids: torch.Tensor, sequences: torch.Tensor, positions: torch.Tensor,
                epoch: int, rule: MaskingRule) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs the model sees, labels: the original token where predicted, else -100), each shaped as input_ids.

    `word_ids`: each token's word (-1: special or padding, never selected); `sequences` and `positions`: each token's
    sequence index and position in it, broadcastable to input_ids ((batch, 1) and (1, width) for a batch).
    """
    eligible = word_ids >= 0
    units = word_ids if rule.whole_word else positions
    selected = eligible & (_draw(rule.seed, epoch, sequences, units, _SELECT) < _threshold(rule.mask_prob))
    replace = _draw(rule.seed, epoch, sequences, positions, _REPLACE)
    to_mask = selected & (replace < _threshold(MASK_SHARE))
    to_random = selected & ~to_mask & (replace < _threshold(MASK_SHARE + RANDOM_SHARE))
    random_ids = _draw(rule.seed, epoch, sequences, positions, _TOKEN) % rule.vocab_size
    inputs = torch.where(to_mask, rule.mask_token_id, torch.where(to_random, random_ids, input_ids))
    return inputs, torch.where(selected, input_ids, IGNORE_INDEX)


def _threshold(share: float) -> int:
    return round(share * (_BITS + 1))


def _draw(seed: int, epoch: int, sequences: torch.Tensor, units: torch.Tensor, purpose: int) -> torch.Tensor:
    """A uniform integer in [0, 2^31) per token, a hash of the keys chained one at a time."""
    base = _mix(_mix(seed & _BITS) ^ epoch)  # Python ints: the same arithmetic
    h = _mix(sequences.long() ^ base)
    h = _mix(h ^ (units.long() & _BITS))
    return _mix(h ^ purpose)


def _mix(x):
    """A bijection of 31-bit integers with good avalanche: the "hash32" finaliser (xor-shift, multiply by 0x45d9f3b,
    twice) kept to 31 bits, so that the products fit in int64 (under 2^58)."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _BITS
    x = ((x >> 16) ^ x) * 0x45D9F3B & _BITS
    return (x >> 16) ^ x
