"""Attention that stays inside each feature of a packed row, plugged into transformers' attention interface by name
(`ATTENTION`), so BERT, ALBERT, RoBERTa and ELECTRA run packed rows without a change to their code
(`first_position`: which encoders can).

A forward without a `Packing` (padded batches) is transformers' own SDPA attention, unchanged. With one, the tokens
of all rows are one flat sequence cut into segments (mrc_cli.batching.Packing): on a CUDA device in bf16/fp16
without attention dropout, torch's varlen attention (FlashAttention) computes each segment alone; elsewhere (CPU,
fp32, attention dropout, which varlen attention lacks) the features are gathered into a padded (features, width)
batch for SDPA and scattered back, which is what a padded batch computes, at the cost of two gathers per layer.
"""

from __future__ import annotations

import importlib.util
import inspect

import torch
from torch.nn import functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

ATTENTION = "mrc_packed"  # the name a model is built with (mrc_cli.model.build_model)

# The encoders whose attention goes through the interface with no mask of its own and whose positions come from
# position_ids, each checked against padded batches (tests/test_packing.py). Others would let a packed row's features
# see each other: MPNet and DeBERTa compute attention in their own code, with positions relative over the whole row;
# ModernBERT adds sliding windows this attention does not apply.
PACKABLE = ("bert", "albert", "electra", "roberta", "xlm-roberta", "camembert")
COUNTS_FROM_PAD = ("roberta", "xlm-roberta", "camembert")  # fairseq's positions: pad_token_id + 1 is the first


def first_position(config) -> int | None:
    """The position id of a feature's first token in a packed row for a model of `config`, or None where the model
    cannot run packed rows (not in PACKABLE)."""
    if config.model_type not in PACKABLE:
        return None
    return config.pad_token_id + 1 if config.model_type in COUNTS_FROM_PAD else 0


def packing_refusal(config, task_packs: bool = True) -> str | None:
    """Why a run of this model (and task) cannot use packed rows, or None where it can."""
    if not task_packs:
        return "this task cannot be trained on packed rows yet"
    if first_position(config) is None:
        return (f"{config.model_type} is not among the encoders checked to keep a packed row's features apart "
                f"({', '.join(PACKABLE)}); one with attention of its own (MPNet, DeBERTa) would let them see each "
                "other")
    return None


def _varlen_with_scale() -> bool:
    """torch's varlen attention with a `scale` argument (torch >= 2.11; 2.10's has none and BERT passes one)."""
    if importlib.util.find_spec("torch.nn.attention.varlen") is None:
        return False
    from torch.nn.attention.varlen import varlen_attn

    return "scale" in inspect.signature(varlen_attn).parameters


_HAS_VARLEN = _varlen_with_scale()


def packed_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                     dropout: float = 0.0, scaling: float | None = None, packing=None, **kwargs):
    """query/key/value (rows, heads, tokens, head_dim) -> ((rows, tokens, heads, head_dim), None), as transformers'
    attention functions return."""
    if packing is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    rows, heads, tokens, dim = query.shape
    flat = [x.transpose(1, 2).reshape(rows * tokens, heads, dim) for x in (query, key, value)]  # (all tokens, heads, dim)
    if varlen_usable(query, dropout):
        from torch.nn.attention.varlen import varlen_attn

        out = varlen_attn(*flat, packing.cu_seqlens, packing.cu_seqlens, packing.max_seqlen, packing.max_seqlen,
                          scale=scaling)
    else:
        q, k, v = (x[packing.unpack].transpose(1, 2) for x in flat)  # (features, heads, width, dim)
        # keys of the feature only; an empty slot of fixed shapes (no keys of its own) sees all of its cells, so no
        # kernel takes a softmax over nothing (torch's CPU kernels give 0 there; the CUDA ones went unchecked): its
        # outputs are never read
        mask = (packing.present | ~packing.filled[:, None])[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling)
        out = out.transpose(1, 2).reshape(-1, heads, dim)[packing.repack]  # (all tokens, heads, dim)
    return out.view(rows, tokens, heads, dim), None


def varlen_missing(device: torch.device, precision: str, attention_dropout: float = 0.0) -> str | None:
    """Why packed rows would not run on torch's varlen attention here, or None. Without it they take the gathered-SDPA
    path: the work of feature batches and two gathers a layer more, so `auto` packs only where this is None."""
    if device.type != "cuda":
        return "varlen attention runs on CUDA only"
    if not _HAS_VARLEN:
        return f"torch {torch.__version__} has no varlen attention with a scale (torch 2.11 and later have)"
    if precision not in ("bf16", "fp16"):
        return "varlen attention runs in bf16 or fp16, and this run is in fp32"
    if attention_dropout:
        return f"varlen attention has no dropout, and the attention dropout is {attention_dropout}"
    return None


def varlen_usable(query: torch.Tensor, dropout: float) -> bool:
    """torch's varlen attention: CUDA, half precision, no dropout (its kernel hardcodes 0), torch >= 2.11."""
    return query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and dropout == 0 and _HAS_VARLEN


AttentionInterface.register(ATTENTION, packed_attention)
