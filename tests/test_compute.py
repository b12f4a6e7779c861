"""Training compute: feature passes per trick and the FLOP estimate, checked against counts made by hand. The counts
of real trainings (baseline, R-Drop, FGM) are checked in test_compare.py, where `mrc compare` records them."""

from __future__ import annotations

import pytest

from mrc_cli.compute import forward_flops, passes_per_feature, training_compute
from mrc_cli.config import TrainConfig


@pytest.mark.parametrize("settings, passes", [
    ({}, 1),
    ({"rdrop_alpha": 1.0}, 2),  # the batch twice in one forward
    ({"adversarial": "fgm"}, 2),  # clean, then adversarial
    ({"adversarial": "fgm", "rdrop_alpha": 1.0}, 4),  # both passes of FGM on the doubled batch
    ({"adversarial": "pgd", "adv_steps": 3}, 4),  # clean, 2 climbing steps, the last step's
    ({"ema_decay": 0.999, "llrd": 0.9}, 1),  # no extra pass
])
def test_passes_per_feature_follow_the_tricks(settings, passes):
    assert passes_per_feature(TrainConfig(**settings)) == passes


def test_forward_flops_are_kaplans_estimate_counted_by_hand_on_a_tiny_bert(tiny_bert_dir):
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(tiny_bert_dir)
    # hidden 32, feed-forward 64, 2 layers. Per layer Q, K, V and output 4 x 32 x 32 = 4096, the feed-forward
    # 2 x 32 x 64 = 4096: N = 2 x 8192 = 16384, the layers' matrices
    assert sum(p.numel() for p in encoder.encoder.parameters() if p.dim() == 2) == 16384
    # features of 10 and 30 tokens: 2N per token; attention QK^T and AV, 2 x 2 x length x 32 per token and layer
    by_hand = 2 * 16384 * 40 + 2 * 2 * 2 * 32 * (10 * 10 + 30 * 30)
    assert forward_flops(encoder.config, 40, 10 ** 2 + 30 ** 2) == by_hand
    compute = training_compute(encoder.config, TrainConfig(rdrop_alpha=1.0), 2, 40, 1000)
    assert compute == {"forward_passes": 4, "backward_passes": 4, "flops": 2 * 3 * by_hand}  # backward: 2x forward
    # DistilBERT's config names the feed-forward width hidden_dim: the same shapes count the same (a traceback at the
    # first log step had ended its runs)
    from transformers import DistilBertConfig

    distil = DistilBertConfig(dim=32, hidden_dim=64, n_layers=2, n_heads=2)
    assert not hasattr(distil, "intermediate_size")
    assert forward_flops(distil, 40, 10 ** 2 + 30 ** 2) == by_hand


def test_albert_s_shared_layer_is_counted_once_per_use(tiny_albert_dir):
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(tiny_albert_dir)
    shared = sum(p.numel() for p in encoder.encoder.albert_layer_groups.parameters() if p.dim() == 2)
    assert shared == 8192  # one layer's matrices, run at both of the 2 depths
    assert forward_flops(encoder.config, 40, 1000) == 2 * 2 * shared * 40 + 2 * 2 * 2 * 32 * 1000


def test_steps_whose_backward_ends_at_the_head_count_their_forward_only(tiny_bert_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_bert_dir)
    full, head = forward_flops(config, 40, 1000), forward_flops(config, 10, 100)
    # 2 of 5 features trained the head alone (train.head_warmup): 5 forwards, 3 backwards at twice their forward
    compute = training_compute(config, TrainConfig(rdrop_alpha=1.0), 5, 40, 1000, head_only=(2, 10, 100))
    assert compute == {"forward_passes": 10, "backward_passes": 6, "flops": 2 * (full + 2 * (full - head))}
