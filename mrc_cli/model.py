"""The span-extraction model: any Hugging Face encoder plus a start/end head; state_dict loading with a key report.

Token level: start/end logits from the token states, CLS (position 0) as "no answer". The loss ignores labels of
-100 (answers that could not be located) and padding never wins a softmax.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from mrc_cli.attention import ATTENTION, first_position
from mrc_cli.config import ModelConfig
from mrc_cli.errors import CheckpointError, ConfigError
from mrc_cli.words import pool_words, token_to_unit_labels, unit_index

SPAN_LEVELS = ("token", "word")
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout")  # BERT/ALBERT, other families
# what model.dropout sets: BERT/ALBERT/RoBERTa's hidden_dropout_prob (ALBERT: classifier_ too), other families' dropout
DROPOUT_KEYS = ("hidden_dropout_prob", "classifier_dropout_prob", "dropout", *ATTENTION_DROPOUT_KEYS)
LEGACY_PICKLES = 5  # pickles before the raw storages in a file of the pre-1.6 torch.save format


@dataclass
class SpanOutput:
    start_logits: torch.Tensor  # (batch, units): tokens, or CLS + words at word level
    end_logits: torch.Tensor  # (batch, units)
    loss: torch.Tensor | None = None  # mean over labelled features of the start and end cross-entropies
    feature_loss: torch.Tensor | None = None  # (batch,), 0 where the label is ignored (-100)
    labelled: torch.Tensor | None = None  # (batch,) bool
    filled: torch.Tensor | None = None  # (batch,) bool: the slot holds a feature (packed rows); None: all do


def feature_mean(values: torch.Tensor, filled: torch.Tensor | None) -> torch.Tensor:
    """The mean of per-feature `values` (batch,) over the slots that hold a feature (`filled`; None: all): packed
    rows of fixed shape (mrc_cli.batching.FeatureTensors.fix_shapes) have empty slots, which no mean may count."""
    if filled is None:
        return values.mean()
    return torch.where(filled, values, 0).sum() / filled.sum().clamp(min=1)


class SpanExtractionModel(nn.Module):
    """span_level "token": start/end over tokens; "word": over whole words pooled from their tokens (mrc_cli.words)."""

    def __init__(self, encoder: nn.Module, span_level: str = "token", dropout_samples: int = 0):
        super().__init__()
        if span_level not in SPAN_LEVELS:
            raise ConfigError(f"model.span_level must be one of {', '.join(SPAN_LEVELS)}, not {span_level!r}")
        self.span_level = span_level
        # multi-sample dropout (Inoue, 2019): in training, the head sees the states under this many dropout masks
        # (at the encoder's hidden dropout rate) and the loss is their mean; evaluation is unchanged
        self.dropout_samples = dropout_samples
        check_dropout_tricks(encoder.config, 0.0, dropout_samples)
        self.head_dropout = nn.Dropout(getattr(encoder.config, "hidden_dropout_prob", 0.0))
        self.encoder = encoder
        self.first_position = first_position(encoder.config)  # None: feature batches only (train.tokens_per_batch 0)
        # unused by span extraction; dropping it also keeps DDP from waiting for gradients that never come
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None
        self.qa_outputs = nn.Linear(encoder.config.hidden_size, 2)
        std = getattr(encoder.config, "initializer_range", 0.02)
        nn.init.normal_(self.qa_outputs.weight, std=std)
        nn.init.zeros_(self.qa_outputs.bias)

    @property
    def config(self):
        return self.encoder.config

    @property
    def packs(self) -> bool:
        """Whether the encoder runs packed rows (mrc_cli.attention.PACKABLE)."""
        return self.first_position is not None

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, word_ids=None, start_positions=None,
                end_positions=None, num_units=None, position_ids=None, packing=None):
        """attention_mask: (batch, seq) 1 for tokens, 0 for padding; None for a batch without padding. num_units (word
        level): CLS + words of the widest window, from the host (else read from word_ids, a device sync).
        packing (mrc_cli.batching.Packing): input_ids, token_type_ids and position_ids are packed rows; the
        encoder's states are unpacked into (features, width) before the head, so all after it is per feature."""
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        if packing is not None:
            if not self.packs:
                raise ValueError(f"{self.config.model_type} cannot run packed rows")  # a caller's bug, never user input
            # packing reaches mrc_cli.attention; positions restart at each feature, from the encoder's first one
            kwargs.update(position_ids=position_ids + self.first_position, packing=packing)
        # a 4D boolean mask reaches SDPA as it is; from a 2D one transformers first reads `mask.all()`, a device sync
        mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()  # (batch, 1, 1, seq)
        states = self.encoder(input_ids=input_ids, attention_mask=mask, **kwargs).last_hidden_state
        if packing is not None:
            states = states.flatten(0, 1)[packing.unpack]  # (rows, tokens, hidden) -> (features, width, hidden)
            present = packing.present
        else:
            present = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if self.span_level == "word":
            units = unit_index(word_ids)  # (batch, seq)
            states, present = pool_words(states, units, num_units)  # (batch, units, hidden), (batch, units)
            if start_positions is not None:
                start_positions = token_to_unit_labels(start_positions, units)
                end_positions = token_to_unit_labels(end_positions, units)
        samples = self.dropout_samples if self.training and self.dropout_samples > 1 else 1
        heads = torch.stack([self.head_dropout(states) for _ in range(samples)] if samples > 1 else [states])
        logits = self.qa_outputs(heads).float()  # (samples, batch, units, 2); fp32 for a stable softmax under autocast
        padding = ~present[..., None]
        start_logits, end_logits = logits.mean(0).masked_fill(padding, torch.finfo(torch.float32).min).unbind(-1)
        filled = None if packing is None else packing.filled  # (batch,)
        if start_positions is None:
            return SpanOutput(start_logits, end_logits, filled=filled)
        # per feature, the mean over the dropout samples (of the one sample without multi-sample dropout)
        feature_loss = torch.stack([span_loss(*sample.masked_fill(padding, torch.finfo(torch.float32).min).unbind(-1),
                                              start_positions, end_positions) for sample in logits]).mean(0)
        return with_loss(start_logits, end_logits, feature_loss, start_positions, filled)


def with_loss(start_logits, end_logits, feature_loss, start_positions, filled=None) -> SpanOutput:
    """The output with the batch's loss: the mean of `feature_loss` over labelled features (0, not NaN, for none).
    Empty feature slots (`filled` false) are labelled -100, so they are out of this mean too."""
    labelled = start_positions != -100
    loss = feature_loss.sum() / labelled.sum().clamp(min=1)
    return SpanOutput(start_logits, end_logits, loss, feature_loss, labelled, filled)


def span_loss(start_logits, end_logits, start_positions, end_positions) -> torch.Tensor:
    """Per feature, the mean of the start and end cross-entropies; 0 for labels of -100 (unlocated answers)."""
    start = F.cross_entropy(start_logits, start_positions, ignore_index=-100, reduction="none")
    end = F.cross_entropy(end_logits, end_positions, ignore_index=-100, reduction="none")
    return (start + end) / 2


def check_dropout_tricks(config, rdrop_alpha: float, dropout_samples: int) -> None:
    """R-Drop and multi-sample dropout compare dropout masks: refused where the encoder `config` has none to compare
    (model.dropout's default is 0). Checked as a model is built and as a run starts, and by mrc compare for every
    variant before the first run trains."""
    if dropout_samples > 1 and not getattr(config, "hidden_dropout_prob", 0.0):
        raise ConfigError(f"model.multi_sample_dropout {dropout_samples} does nothing with the encoder's hidden "
                          "dropout at 0 (model.dropout's default); set model.dropout above 0 (e.g. --set "
                          "model.dropout=0.1) or multi_sample_dropout to 0")
    # the dropout the encoder applies (classifier_dropout_prob is a head's, which AutoModel does not build)
    if rdrop_alpha and not any(getattr(config, key, 0) for key in ("hidden_dropout_prob", "dropout",
                                                                   *ATTENTION_DROPOUT_KEYS)):
        raise ConfigError(f"train.rdrop_alpha {rdrop_alpha:g} does nothing: the encoder has no dropout (model.dropout "
                          "is 0 by default); set model.dropout above 0 (e.g. --set model.dropout=0.1) or rdrop_alpha "
                          "to 0")


def check_dropout_settings(cfg) -> None:
    """check_dropout_tricks of a run's settings on its encoder's config, before any data is read: by --dry-run, as a
    run starts, and by mrc compare for each variant. Where the model does not load, loading it says why."""
    encoder = _configured_encoder(cfg.model.name_or_path, cfg.model.dropout, cfg.model.attention_dropout)
    if encoder is not None:
        check_dropout_tricks(encoder, cfg.train.rdrop_alpha, cfg.model.multi_sample_dropout)


def _configured_encoder(model: str, dropout: float | None, attention_dropout: float | None):
    try:
        return encoder_config(model, dropout, attention_dropout, 0)
    except ConfigError:
        return None


def attention_dropout_of(config) -> float:
    """The attention dropout of an encoder config (BERT/ALBERT's key or other families')."""
    return next((getattr(config, key) or 0.0 for key in ATTENTION_DROPOUT_KEYS if hasattr(config, key)), 0.0)


def encoder_config(name_or_path: str, dropout: float | None, attention_dropout: float | None, max_seq_length: int):
    """The encoder's config with model.dropout / attention_dropout applied; refused when max_seq_length does not fit."""
    from transformers import AutoConfig

    from mrc_cli.tokenizer import check_not_missing_folder

    check_not_missing_folder(name_or_path)
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError, KeyError) as err:
        where = "the folder has no config.json" if Path(name_or_path).exists() else "no such folder, and the Hub is not reachable or has no such id"
        raise ConfigError(f"cannot load model {name_or_path!r}: {where} ({type(err).__name__}); pass a local model folder") from None
    _set_existing(config, DROPOUT_KEYS, dropout)
    _set_existing(config, ATTENTION_DROPOUT_KEYS, attention_dropout)  # after `dropout`: it wins on these keys
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and max_seq_length > limit:
        raise ConfigError(
            f"data.max_seq_length {max_seq_length} is longer than {name_or_path} allows ({limit} positions); "
            f"set it to {min(limit, 512)} or less (--max-seq-length, or --set data.max_seq_length=N)"
        )
    return config


def check_tokenizer_fits(config, tokenizer, model: ModelConfig) -> None:
    """Refuse a tokenizer whose ids the model has no embeddings for (another model's vocabulary: an IndexError in
    the first forward, or a wrong model.tokenizer kept from a config file while --model names another model)."""
    rows = getattr(config, "vocab_size", None)
    if rows is not None and len(tokenizer) > rows:
        source = (f"model.tokenizer {model.tokenizer!r}" if model.tokenizer else "the model folder's own tokenizer")
        raise ConfigError(
            f"the tokenizer ({source}, {len(tokenizer):,} tokens) does not belong to the model {model.name_or_path!r}, "
            f"which has embeddings for {rows:,}: pass the model's own tokenizer (--set model.tokenizer=null uses the "
            "model folder's)")


def _set_existing(config, keys: tuple[str, ...], value: float | None) -> None:
    """Set the keys this model family's config has; None leaves them as they are."""
    for key in keys:
        if value is not None and hasattr(config, key):
            setattr(config, key, value)


def build_model(model: ModelConfig, max_seq_length: int, pretrained: bool = True, source: str | None = None) -> SpanExtractionModel:
    """The encoder of `model.name_or_path` (or of `source`, a checkpoint or export folder) with pretrained weights or
    only its architecture (to load weights into), and a fresh head."""
    from transformers import AutoModel

    config = encoder_config(source or model.name_or_path, model.dropout, model.attention_dropout, max_seq_length)
    if pretrained:
        encoder = AutoModel.from_pretrained(source or model.name_or_path, config=config, attn_implementation=ATTENTION)
    else:
        encoder = AutoModel.from_config(config, attn_implementation=ATTENTION)
    return SpanExtractionModel(encoder, model.span_level, model.multi_sample_dropout)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each layer's activations of `model.encoder` in the backward pass instead of keeping them (albert-xxlarge at
    batch 48 x 384 holds ~30 GB of them otherwise). transformers' own switch where the family has one (BERT,
    RoBERTa, ELECTRA ...); ALBERT has none in transformers 5, so its (shared) layers are wrapped here."""
    from torch.utils.checkpoint import checkpoint

    encoder = model.encoder
    if encoder.supports_gradient_checkpointing:
        if hasattr(encoder, "activation_checkpointing_enable"):  # its name since transformers 5.2x
            encoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return
    layers = [m for m in encoder.modules() if type(m).__name__ == "AlbertLayer"]
    if not layers:
        raise ConfigError(f"train.gradient_checkpointing: {type(encoder).__name__} supports no gradient checkpointing; "
                          "set it to false")
    for layer in layers:
        layer.forward = partial(checkpoint, layer.forward, use_reentrant=False)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from safetensors; a pickle (.bin/.pt) only through torch's weights-only loader, which runs no code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # SafetensorError (a cut header, bad JSON in it), OSError
            raise CheckpointError(_damaged(path, _first_line(err), "a safetensors file")) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # a refusal, or a damaged file that the weights-only reader trips over
        if _pickle_intact(path):
            raise CheckpointError(
                f"{path}: refused to load: the file is whole, but it holds more than tensors ({_refusal(err)}) and "
                "unpickling it could run code; ask for a .safetensors file"
            ) from None
        raise CheckpointError(_damaged(path, "its pickle is cut short or damaged")) from None
    except Exception as err:  # torch's zip reader, EOFError, ...: the bytes are not a whole torch file
        raise CheckpointError(_damaged(path, _first_line(err))) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state_dict (a mapping of names to tensors)")
    return state


def _damaged(path: Path, detail: str, kind: str = "a torch file") -> str:
    return f"{path}: cannot be read: the file is truncated or corrupt, or not {kind} ({detail}); copy or download it again"


def _first_line(err: Exception) -> str:
    reason = str(err).splitlines()[0][:120] if str(err) else ""
    return f"{type(err).__name__}{': ' + reason if reason else ''}"


def _refusal(err: pickle.UnpicklingError) -> str:
    """torch's reason without its advice to load with weights_only=False (that is what could run code)."""
    found = re.search(r"Unsupported (global: GLOBAL \S+|operand \d+)", str(err))
    return found.group(0) if found else "not a plain tensor file"


def _pickle_intact(path: Path) -> bool:
    """Whether the file is whole, checked without unpickling it (pickletools only parses opcodes): a truncated file
    also makes torch's weights-only reader raise UnpicklingError ("Unsupported global" on a name cut in half), and
    that must not be reported as a file that could run code.

    The zip format (torch >= 1.6): every member's CRC and data.pkl parsed to its STOP. Older files: the pickles that
    the legacy torch.save writes before the raw storages (magic number, protocol, sys info, object, storage keys);
    a plain pickle.dump file is one of them.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if archive.testzip() is not None:
                    return False
                data = next(n for n in archive.namelist() if n.rpartition("/")[2] == "data.pkl")
                for _ in pickletools.genops(archive.read(data)):
                    pass
            return True
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            for _ in range(LEGACY_PICKLES):
                for _ in pickletools.genops(f):
                    pass
                if f.tell() == size:
                    break
        return True
    except (ValueError, StopIteration, zipfile.BadZipFile, OSError, EOFError):  # cut short, or not pickle opcodes
        return False


def load_weights(model: nn.Module, state: dict[str, torch.Tensor],
                 strict: bool = True) -> tuple[list[str], list[str], list[str]]:
    """Load a state_dict; with strict=False also into another shape. Returns (missing, unexpected, reshaped) key
    lists: reshaped, those of both whose shapes differ (left as the model's)."""
    own = model.state_dict()
    reshaped = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    if reshaped and strict:
        raise CheckpointError(f"weights do not fit this model: {describe_keys(reshaped)} differ in shape")
    state = {k: v for k, v in state.items() if k not in reshaped}
    result = model.load_state_dict(state, strict=False)
    # a tied weight (an MLM decoder is the input embedding matrix) is saved once: loaded under its other name
    loaded = {own[k].data_ptr() for k in state if k in own and own[k].numel()}
    tied = {k for k in result.missing_keys if own[k].numel() and own[k].data_ptr() in loaded}
    missing = sorted(set(result.missing_keys) - tied - set(reshaped))
    unexpected = sorted(result.unexpected_keys)
    if strict and (missing or unexpected):
        raise CheckpointError(f"weights do not fit this model: missing {describe_keys(missing)}; unexpected {describe_keys(unexpected)}")
    return missing, unexpected, reshaped


def describe_keys(keys: list[str]) -> str:
    """Keys grouped by their name up to the layer number, else their first two parts, a run of layers as one:
    'encoder.encoder.layer.2-11 (160 keys), encoder.pooler (2 keys), qa_outputs (2 keys)'."""
    if not keys:
        return "none"
    groups: dict[tuple[str, int | None], int] = defaultdict(int)
    for key in keys:
        parts = key.split(".")
        number = next((i for i, part in enumerate(parts[:-1]) if part.isdigit()), None)
        if number is not None:
            groups[(".".join(parts[:number]), int(parts[number]))] += 1
        else:
            groups[(".".join(parts[:2]) if len(parts) > 2 else parts[0], None)] += 1
    runs: list[list] = []  # [stem, first, last, keys]
    for (stem, layer), n in sorted(groups.items(), key=lambda item: (item[0][0], item[0][1] is not None,
                                                                    item[0][1] or 0)):
        if runs and layer is not None and runs[-1][0] == stem and runs[-1][2] == layer - 1:
            runs[-1][2], runs[-1][3] = layer, runs[-1][3] + n
        else:
            runs.append([stem, layer, layer, n])
    return ", ".join(f"{stem}{'' if first is None else f'.{first}' if first == last else f'.{first}-{last}'} "
                     f"({n} key{'s' if n > 1 else ''})" for stem, first, last, n in runs)


def describe_shapes(keys: list[str], checkpoint: dict[str, torch.Tensor], model: nn.Module, shown: int = 3) -> str:
    """Keys whose shapes differ, the first few with both shapes."""
    own = model.state_dict()
    detail = "; ".join(f"{key} {list(checkpoint[key].shape)} in the checkpoint, {list(own[key].shape)} in the model"
                       for key in keys[:shown])
    return f"{describe_keys(keys)}: {detail}{'; ...' if len(keys) > shown else ''}"
