"""`mrc pretrain`: masked-language-model training on your own contexts, run by the fine-tuning loop
(`training.run_task`): the same accelerate set-up, precision, length-grouped batches, checkpoints, exact resume,
stop signal, progress bar, metrics.jsonl and curves.png.

The task: the corpus (mrc_cli.corpus) cut into sequences; the encoder with its masked-LM head, loaded from the model
folder when it has one and fresh otherwise, its decoder tied to the input embeddings (sentence-transformers folders
such as MiniLM have no head), run at the predicted positions only (~15 % of the tokens); masks drawn for each batch
on the device (mrc_cli.masking); no evaluation. At the end the run directory is also a model folder: the encoder and
its head (save_pretrained, safetensors), config.json and the tokenizer, which `mrc train --model DIR` fine-tunes (the
encoder; the head is left out there) and `mrc pretrain --model DIR` continues; and pretrain_info.json, the record of
what was trained on. A checkpoint of the run (encoder and head) starts another with train.init_from, on any files.

ALBERT's sentence-order prediction is not trained: it needs pairs of consecutive segments, and SQuAD and CMRC
contexts are single paragraphs whose order in an article carries little; in-domain adaptation papers (Gururangan et
al., 2020) continue with the masked-LM loss alone. An ALBERT trains its encoder and MLM head; its SOP head is neither
loaded nor saved.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mrc_cli.batching import FeatureTensors
from mrc_cli.config import ModelConfig, RunConfig, check_pretrain_config
from mrc_cli.corpus import build_sequences, collect_texts
from mrc_cli.errors import ConfigError
from mrc_cli.files import write_text_atomically
from mrc_cli.masking import IGNORE_INDEX, MaskingRule, mask_tokens
from mrc_cli.words import check_word_sizes
from mrc_cli.model import DROPOUT_KEYS, describe_keys, encoder_config
from mrc_cli.timing import WallClock
from mrc_cli.tracking import RunLog
from mrc_cli.training import (TrainerState, TrainResult, file_sha256, init_from_weights, own_copy, resumed_run_info,
                              run_task)

INFO_FILE = "pretrain_info.json"


def pretrain(cfg: RunConfig) -> TrainResult:
    """Masked-language-model training as cfg.pretrain says; train.output_dir becomes the pre-trained model folder."""
    cfg = own_copy(cfg)
    check_pretrain_config(cfg)
    return run_task(cfg, MaskedLMTask())


@dataclass
class MaskedLMOutput:
    loss: torch.Tensor


# The modules of each family's *ForMaskedLM that turn the encoder's states into vocabulary logits, applied in this
# order to the states alone (transformers 5's forward of each class): run on the predicted positions only, they give
# the logits transformers gives there. A family not listed runs its own forward, logits at every position.
MLM_HEADS = {
    "bert": ("cls",), "albert": ("predictions",), "roberta": ("lm_head",), "xlm-roberta": ("lm_head",),
    "camembert": ("lm_head",),
    "electra": ("generator_predictions", "generator_lm_head"),
    "distilbert": ("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector"),
}


class MaskedLM(nn.Module):
    """A Hugging Face *ForMaskedLM model with the loss the loop needs: the mean over the predicted tokens (0, not NaN,
    for a batch without any); padding goes in as a 4D boolean mask (from a 2D one transformers reads `mask.all()`,
    which makes the host wait for the device, on every forward).

    The head runs on the predicted positions only, gathered from the encoder's states before the vocabulary
    projection (as NVIDIA's and MosaicML's BERT pre-training do): transformers' own forward projects every position,
    ~85 % of them for nothing, and for a small encoder that projection costs about as much as the encoder (MiniLM:
    384 x 30522 multiply-adds per token, its 6 layers ~11M). The modules are `lm`'s own: checkpoints and
    save_pretrained are unchanged."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        self.head_modules = MLM_HEADS.get(lm.config.model_type)  # names of lm's attributes; None: lm's own forward

    @property
    def config(self):
        return self.lm.config

    @property
    def encoder(self) -> nn.Module:
        """The encoder without the head, as SpanExtractionModel.encoder (gradient checkpointing, adversarial training)."""
        return self.lm.base_model

    def forward(self, input_ids, labels, masked_positions, attention_mask=None) -> MaskedLMOutput:
        """`labels`: the original token where predicted, else -100, shaped as input_ids; `masked_positions`: the flat
        (row-major) indices of the predicted tokens, (predicted,), as MaskedLMTask.batch gives them."""
        mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()  # (batch, 1, 1, seq)
        if self.head_modules is None:
            logits = self.lm(input_ids=input_ids, attention_mask=mask).logits.flatten(0, 1)[masked_positions]
        else:
            states = self.lm.base_model(input_ids=input_ids, attention_mask=mask)[0]  # (batch, seq, hidden)
            logits = states.flatten(0, 1).index_select(0, masked_positions)  # (predicted, hidden)
            for name in self.head_modules:
                logits = getattr(self.lm, name)(logits)  # last: (predicted, vocab)
        # fp32 for the softmax under autocast; the count is a shape, known on the host
        loss = F.cross_entropy(logits.float(), labels.flatten()[masked_positions], reduction="sum")
        return MaskedLMOutput(loss / max(masked_positions.numel(), 1))


def build_masked_lm(model: ModelConfig, max_seq_length: int, pretrained: bool = True) -> tuple[MaskedLM, list[str]]:
    """The model folder's encoder with its MLM head (AutoModelForMaskedLM), and the keys it lacked (a head that is
    not there is initialised); with `pretrained` False the architecture only."""
    from transformers import AutoModelForMaskedLM
    from transformers.utils import logging as transformers_logging

    config = encoder_config(model.name_or_path, model.dropout, model.attention_dropout, max_seq_length)
    # a folder without an MLM head (all-MiniLM) made transformers call the checkpoint corrupted and print a load
    # report; the run's log says what the head is instead ("MLM head: fresh ...", from the missing keys)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        if not pretrained:
            return MaskedLM(AutoModelForMaskedLM.from_config(config, attn_implementation="sdpa")), []
        lm, info = AutoModelForMaskedLM.from_pretrained(model.name_or_path, config=config, attn_implementation="sdpa",
                                                        output_loading_info=True)
    except ValueError as err:  # transformers has no masked-LM class for this model type
        raise ConfigError(f"{model.name_or_path}: no masked-language-model head for model type {config.model_type!r} "
                          f"({str(err).splitlines()[0]})") from None
    finally:
        transformers_logging.set_verbosity(verbosity)
    return MaskedLM(lm), sorted(info["missing_keys"])


class MaskedLMTask:
    """Masked-language-model training on a corpus of contexts and documents; see the module docstring."""

    unit = "sequences"
    command = "pretrain"
    run_dir_flag = "--out"
    evaluates = False
    packs = False  # masking works on padded (sequences, width) batches

    def __init__(self):
        self.clock = WallClock()  # pretrain_info.json's wall_seconds, all parts of a resumed run together
        self.stateful = {"wall_clock": self.clock}
        self.info: dict = {}  # pretrain_info.json, filled as the run is set up
        self.tokenizer = None  # set by load
        self.rule, self.host, self._predicted = None, None, None  # set by use

    def will_evaluate(self, cfg: RunConfig) -> bool:
        return False

    def load(self, cfg: RunConfig, tokenizer, log: RunLog):
        if tokenizer.mask_token_id is None:
            raise ConfigError(f"{cfg.model.tokenizer or cfg.model.name_or_path}: the tokenizer has no mask token to "
                              "pre-train with; pass --set model.tokenizer=<the folder of one that has>")
        eval_files = cfg.pretrain.eval_files or ([cfg.data.dev_file] if cfg.data.dev_file else [])
        corpus = collect_texts(cfg.pretrain, eval_files, cfg.data.format)
        for line in corpus.summary():
            log.info(line)
        if not corpus.texts:
            files = ", ".join(s.file for s in corpus.sources) or "no --data or --text file"
            if corpus.eval_matches and not corpus.include_eval_contexts:
                raise ConfigError(f"nothing left to pre-train on in {files}: every text is made of contexts of the "
                                  "eval files; pass --include-eval-contexts to keep them, or other --data/--text files")
            raise ConfigError(f"nothing to pre-train on: {files} hold no text (no context, no document); give "
                              "--data files with contexts or --text files")
        sequences, summary = build_sequences(corpus.texts, tokenizer, cfg.data)
        log.info(str(summary))
        if cfg.pretrain.masking == "word":
            check_word_sizes(summary.tokens, summary.words, cfg.data.word_segmenter, "whole-word masking")
        self.tokenizer = tokenizer
        self.use(sequences, MaskingRule(cfg.pretrain.masking == "word", cfg.pretrain.mask_prob, tokenizer.mask_token_id,
                                        len(tokenizer), cfg.train.seed))
        masked = self._count_masks(epoch=0)
        if not masked["tokens"]:  # the loss would be 0 from the first step on
            raise ConfigError(f"nothing to predict: the masks take none of the {summary.words} words (pretrain.mask_prob "
                              f"{cfg.pretrain.mask_prob:g} of so little text rounds to 0 in every sequence); give more "
                              "text, or a higher pretrain.mask_prob")
        log.info(f"masking ({cfg.pretrain.masking}, data.word_segmenter {cfg.data.word_segmenter}), epoch 0: "
                 f"{masked['words']} of {summary.words} words ({masked['words'] / max(summary.words, 1):.1%}), "
                 f"{masked['tokens']} of {summary.tokens} tokens predicted: {masked['mask']} [MASK], "
                 f"{masked['random']} random, {masked['unchanged']} unchanged")
        self.info = {"model": cfg.model.name_or_path, "init_from": cfg.train.init_from, "masking": cfg.pretrain.masking,
                     "word_segmenter": cfg.data.word_segmenter, "mask_prob": cfg.pretrain.mask_prob,
                     "max_seq_length": cfg.data.max_seq_length, **corpus.to_dict(),
                     "sequences": summary.sequences, "tokens": summary.tokens, "words": summary.words,
                     "unknown_tokens": summary.unknown_tokens,
                     "predicted_epoch_0": masked}
        return sequences

    def build_model(self, cfg: RunConfig, pretrained: bool, log: RunLog) -> MaskedLM:
        model, missing = build_masked_lm(cfg.model, cfg.data.max_seq_length, pretrained)
        head_source = cfg.model.name_or_path
        if cfg.train.init_from and pretrained:
            missing, head_filled = _init_from(model, missing, cfg.train.init_from, log)
            head_source = cfg.train.init_from if head_filled else head_source
        prefix = model.lm.base_model_prefix + "."
        fresh_head = [k for k in missing if not k.startswith(prefix)]
        fresh_encoder = [k for k in missing if k.startswith(prefix)]
        tied = model.lm.get_output_embeddings().weight is model.lm.get_input_embeddings().weight
        if not pretrained:  # what it was when the run began
            head = resumed_run_info(cfg).get("mlm_head", "from the checkpoint")
        elif fresh_head:
            head = f"fresh ({describe_keys(fresh_head)} initialised)"
        else:
            head = f"loaded from {head_source}"
        log.info(f"MLM head: {head}; its decoder is {'tied to' if tied else 'separate from'} the input embeddings")
        if pretrained and fresh_head:
            # measured (docs/benchmarks.md, "In-domain pre-training"): MiniLM with a fresh head, 200 steps on the
            # SQuAD train head's contexts, then fine-tuned: 2 to 10 F1 lower than without pre-training
            log.info("warning: a fresh MLM head's early gradients reach the encoder as noise; with few steps this can "
                     "cost more than the in-domain text gives: compare with and without (mrc compare), or pre-train "
                     "a model that has its MLM head")
        if fresh_encoder:
            log.info(f"warning: {cfg.model.name_or_path} lacks encoder weights, initialised: {describe_keys(fresh_encoder)}")
        if model.head_modules is None:
            log.info(f"MLM head of model type {model.config.model_type!r}: not among {', '.join(MLM_HEADS)}, so "
                     "transformers' forward computes logits at every position, not only the predicted ones (slower)")
        self.info.update(mlm_head=head, tied_decoder=tied)
        return model

    def use(self, sequences, rule: MaskingRule) -> None:
        """Draw batches from `sequences` (the rows of the store training cuts) with `rule`; a CPU copy of them gives
        the host each epoch's mask counts."""
        self.rule, self.host, self._predicted = rule, FeatureTensors(sequences, torch.device("cpu"), 0), None

    def batch(self, store: FeatureTensors, index: list[int], rows: torch.Tensor, epoch: int) -> dict:
        batch = store.batch(index, rows)
        del batch["num_units"]  # word-level span extraction's, added wherever features carry word ids
        batch["input_ids"], batch["labels"] = self._mask(batch.pop("word_ids"), batch["input_ids"], rows, epoch)
        # the predicted tokens' flat indices, sized by the host's count: nonzero without a size waits for the device
        num_predicted = self.loss_terms(index, epoch)
        batch["masked_positions"] = torch.nonzero_static(batch["labels"].flatten() != IGNORE_INDEX,
                                                         size=num_predicted).squeeze(1)  # (predicted,)
        return batch

    def loss_terms(self, index: list[int], epoch: int) -> int:
        return int(self._num_predicted(epoch)[index].sum())  # the loss is the mean over the predicted tokens

    def run_info(self, cfg: RunConfig) -> dict:
        files = [*cfg.pretrain.data_files, *cfg.pretrain.text_files, *self.info["eval_files"]]
        return {"files_sha256": {f: file_sha256(f) for f in files}, "sequences": self.info["sequences"],
                "mlm_head": self.info["mlm_head"]}

    def finish(self, run_dir: Path, model: MaskedLM, last_eval, state: TrainerState, main: bool) -> dict:
        """The model folder and pretrain_info.json."""
        if main:
            _save_model_folder(model.lm, self.tokenizer, self.info["model"], run_dir)
            self.info.update(steps=state.step, epoch=state.epoch, sequences_seen=state.samples, tokens_seen=state.tokens,
                             wall_seconds=round(self.clock.seconds, 1))
            write_text_atomically(run_dir / INFO_FILE, json.dumps(self.info, indent=2, ensure_ascii=False))
        return {}

    def _mask(self, word_ids: torch.Tensor, input_ids: torch.Tensor, rows: torch.Tensor, epoch: int):
        """(inputs, labels) of a (batch, width) batch of the sequences `rows`."""
        positions = torch.arange(word_ids.shape[1], device=word_ids.device)
        return mask_tokens(input_ids, word_ids, rows[:, None], positions[None], epoch, self.rule)

    def _host_masks(self, epoch: int):
        """The masks of `epoch` over the whole corpus, drawn on the CPU 1024 sequences at a time (the hash gives the
        device's masks): (rows, word ids, original ids, inputs, labels) of each chunk."""
        for start in range(0, len(self.host), 1024):
            index = list(range(start, min(start + 1024, len(self.host))))
            rows = torch.tensor(index)
            word_ids, original = (self.host.batch(index, rows)[key] for key in ("word_ids", "input_ids"))
            yield rows, word_ids, original, *self._mask(word_ids, original, rows, epoch)

    def _num_predicted(self, epoch: int) -> np.ndarray:
        """The number of predicted tokens of each sequence in `epoch`, counted on the host once per epoch and kept
        until the next: 0.05 s for the 686 sequences of the SQuAD train head on one CPU core, so ~1.5 s for all of
        SQuAD train's contexts."""
        if self._predicted is None or self._predicted[0] != epoch:
            counts = [(labels != IGNORE_INDEX).sum(1) for *_, labels in self._host_masks(epoch)]
            self._predicted = epoch, torch.cat(counts).numpy()
        return self._predicted[1]

    def _count_masks(self, epoch: int) -> dict:
        """What the masks of `epoch` do to the corpus: words and tokens predicted, and what replaced those tokens. The
        same pass keeps each sequence's count for `_num_predicted`, which would otherwise draw the masks again."""
        counts, per_sequence = Counter(), []
        for rows, word_ids, original, inputs, labels in self._host_masks(epoch):
            predicted = labels != IGNORE_INDEX
            per_sequence.append(predicted.sum(1))
            shown = inputs[predicted]
            counts["tokens"] += int(predicted.sum())
            counts["mask"] += int((shown == self.rule.mask_token_id).sum())
            counts["unchanged"] += int((shown == original[predicted]).sum())
            pairs = torch.stack([rows[:, None].expand_as(word_ids)[predicted], word_ids[predicted]])
            counts["words"] += torch.unique(pairs, dim=1).shape[1]
        self._predicted = epoch, torch.cat(per_sequence).numpy()
        return {"words": counts["words"], "tokens": counts["tokens"], "mask": counts["mask"],
                "random": counts["tokens"] - counts["mask"] - counts["unchanged"], "unchanged": counts["unchanged"]}


def _init_from(model: MaskedLM, missing: list[str], path: str, log: RunLog) -> tuple[list[str], bool]:
    """train.init_from's weights over --model's (a pre-training checkpoint goes on with its encoder and MLM head):
    the keys of `model.lm` that neither filled (`missing`: those --model lacked), and whether it filled the head."""
    unfilled = {key.removeprefix("lm.") for key in init_from_weights(model, path, log)}
    head = {key for key in model.lm.state_dict() if not key.startswith(model.lm.base_model_prefix + ".")}
    return [key for key in missing if key in unfilled], unfilled.isdisjoint(head)


def _save_model_folder(lm: nn.Module, tokenizer, source: str, out: Path) -> None:
    """save_pretrained of the encoder and its MLM head, and the tokenizer. config.json keeps the source's dropout:
    model.dropout and attention_dropout are run settings, which a fine-tuning run sets again."""
    from transformers import AutoConfig

    original = AutoConfig.from_pretrained(source)
    lm.config.update({key: getattr(original, key) for key in DROPOUT_KEYS if hasattr(original, key)})
    lm.save_pretrained(out)
    tokenizer.save_pretrained(out)
