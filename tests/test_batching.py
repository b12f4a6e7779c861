"""Batch order: every feature once per epoch, a pure function of (seed, epoch), and far less padding when grouped."""

import random

from mrc_cli.batching import Collator, epoch_batches, inference_batches


def _padding(lengths, batches):
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


def test_epoch_batches_cover_every_feature_once_and_repeat_exactly():
    rng = random.Random(0)
    lengths = [rng.randint(40, 384) for _ in range(2000)]
    for grouped in (False, True):
        batches = epoch_batches(lengths, 16, seed=1, epoch=0, group_by_length=grouped)
        assert sorted(i for b in batches for i in b) == list(range(2000))
        assert batches == epoch_batches(lengths, 16, seed=1, epoch=0, group_by_length=grouped)  # resumable: no state
        assert batches != epoch_batches(lengths, 16, seed=1, epoch=1, group_by_length=grouped)
        assert batches != epoch_batches(lengths, 16, seed=2, epoch=0, group_by_length=grouped)


def test_grouped_batches_pad_far_less_but_keep_the_order_random():
    rng = random.Random(0)
    lengths = [rng.randint(40, 384) for _ in range(3000)]
    grouped = epoch_batches(lengths, 16, seed=0, epoch=0, group_by_length=True)
    shuffled = epoch_batches(lengths, 16, seed=0, epoch=0, group_by_length=False)
    assert _padding(lengths, grouped) < 0.2 * _padding(lengths, shuffled)
    longest = [max(lengths[i] for i in b) for b in grouped]
    assert longest != sorted(longest, reverse=True) and longest != sorted(longest)  # batch order is shuffled


def test_inference_batches_are_longest_first():
    lengths = [5, 50, 20, 40, 10]
    assert inference_batches(lengths, 2) == [[1, 3], [2, 4], [0]]


def test_collator_pads_every_column_with_its_own_value():
    rows = [{"input_ids": [1, 2, 3], "word_ids": [-1, 0, 1], "start_positions": 1},
            {"input_ids": [4], "word_ids": [-1], "start_positions": 0}]
    batch = Collator(pad_token_id=9, multiple_of=4)(rows)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 9], [4, 9, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["word_ids"].tolist() == [[-1, 0, 1, -1], [-1, -1, -1, -1]]
    assert batch["start_positions"].tolist() == [1, 0]
