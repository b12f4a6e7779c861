"""What a training run computed: forward and backward passes counted in features, and model FLOPs.

A "feature pass" is one forward (or backward) of the model over one feature. A plain step makes one of each per
feature; R-Drop runs the batch twice in one forward (2 of each); FGM adds an adversarial forward and backward to the
clean ones (x2), PGD `adv_steps` of them (x(1 + adv_steps); its climbing backwards compute no weight gradients, about
half a backward, and are counted whole). A step of train.head_warmup on one process (the encoder frozen) makes its
forward passes and no backward: its backward ends at the head, whose FLOPs are not counted (below). The training
loop keeps the counts it needs on the host (features, real tokens and squared lengths of the features it planned), so
counting adds no wait for the device.

Not counted: gradient checkpointing's recomputed forwards (model FLOPs, as MFU counts them: the algorithm's work, not
the implementation's), padding (the FLOPs are of real tokens), distillation's teacher pass (once before training, on
the teacher's own windows), and the head (2 x hidden per token).
"""

from __future__ import annotations

from mrc_cli.config import TrainConfig


def passes_per_feature(train: TrainConfig) -> int:
    """Forward passes per feature in one training step, as many backward passes (see the module docstring)."""
    copies = 2 if train.rdrop_alpha else 1  # R-Drop: the batch twice along the batch axis
    rounds = {"none": 1, "fgm": 2, "pgd": 1 + train.adv_steps}[train.adversarial]  # each round sees the R-Drop batch
    return copies * rounds


def forward_flops(encoder_config, tokens: int, token_pairs: int) -> int:
    """Model FLOPs of one forward pass over features holding `tokens` real tokens, `token_pairs` the sum over those
    features of their length squared.

    Kaplan et al. 2020, "Scaling Laws for Neural Language Models", Table 1: a forward costs 2N FLOPs per token, N the
    non-embedding parameters of the layers, N = 2 d_model n_layer (2 d_attn + d_ff) (the Q, K, V and output
    projections and the two feed-forward matrices; biases and norms left out), plus the attention term. Kaplan's
    table has 2 n_layer n_ctx d_attn per token for it; here every token of a feature of length L attends to all L
    (an encoder, no causal mask), and QK^T and the weighted sum of the values cost 2 L d_attn each per token and
    layer: 4 n_layer d_attn L^2 over the feature. A backward pass costs twice its forward (the "6N" rule: 2N + 4N).
    N comes from the architecture, not from counting tensors: ALBERT's one shared layer is computed n_layer times.
    """
    c = encoder_config
    d_model, layers = c.hidden_size, c.num_hidden_layers
    # DistilBERT names its feed-forward width hidden_dim (transformers maps only hidden_size and the layer count)
    d_ff = getattr(c, "intermediate_size", None) or getattr(c, "hidden_dim", None) or 4 * d_model
    d_attn = d_model  # heads x head size in BERT and ALBERT
    non_embedding = 2 * d_model * layers * (2 * d_attn + d_ff)
    return 2 * non_embedding * tokens + 4 * layers * d_attn * token_pairs


def training_compute(encoder_config, train: TrainConfig, features: int, tokens: int, token_pairs: int,
                     head_only: tuple[int, int, int] = (0, 0, 0)) -> dict:
    """The compute of training steps over `features` features (`tokens` real tokens, `token_pairs` their squared
    lengths summed): forward and backward feature passes, and model FLOPs (a backward at twice its forward).
    `head_only`: (features, tokens, token_pairs) of those among them whose backward ended at the head."""
    passes = passes_per_feature(train)
    head_features, head_tokens, head_pairs = head_only
    return {"forward_passes": passes * features, "backward_passes": passes * (features - head_features),
            "flops": passes * (3 * forward_flops(encoder_config, tokens, token_pairs)
                               - 2 * forward_flops(encoder_config, head_tokens, head_pairs))}
