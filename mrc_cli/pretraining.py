"""`mrc pretrain`: masked-language-model training on your own contexts, run by the fine-tuning loop
(`training.run_task`): the same accelerate set-up, precision, length-grouped batches, checkpoints, exact resume,
stop signal, progress bar, metrics.jsonl and curves.png.

The task: the corpus (mrc_cli.corpus) cut into sequences; the encoder with its masked-LM head, loaded from the model
folder when it has one and fresh otherwise, its decoder tied to the input embeddings (sentence-transformers folders
such as MiniLM have no head); masks drawn for each batch on the device (mrc_cli.masking); no evaluation. At the end
the run directory is also a model folder: the encoder and its head (save_pretrained, safetensors), config.json and
the tokenizer, which `mrc train --model DIR` fine-tunes (the encoder; the head is left out there) and `mrc pretrain
--model DIR` continues; and pretrain_info.json, the record of what was trained on.

ALBERT's sentence-order prediction is not trained: it needs pairs of consecutive segments, and SQuAD and CMRC
contexts are single paragraphs whose order in an article carries little; in-domain adaptation papers (Gururangan et
al., 2020) continue with the masked-LM loss alone. An ALBERT trains its encoder and MLM head; its SOP head is neither
loaded nor saved.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from mrc_cli.batching import FeatureTensors
from mrc_cli.config import ModelConfig, RunConfig, check_pretrain_config
from mrc_cli.corpus import build_sequences, collect_texts
from mrc_cli.errors import ConfigError
from mrc_cli.masking import IGNORE_INDEX, MaskingRule, mask_tokens
from mrc_cli.model import DROPOUT_KEYS, describe_keys, encoder_config
from mrc_cli.tracking import RunLog
from mrc_cli.training import TrainerState, TrainResult, file_sha256, run_task

INFO_FILE = "pretrain_info.json"


def pretrain(cfg: RunConfig) -> TrainResult:
    """Masked-language-model training as cfg.pretrain says; train.output_dir becomes the pre-trained model folder."""
    check_pretrain_config(cfg)
    return run_task(cfg, MaskedLMTask())


@dataclass
class MaskedLMOutput:
    loss: torch.Tensor


class MaskedLM(nn.Module):
    """A Hugging Face *ForMaskedLM model with the loss the loop needs: the mean over the predicted tokens (0, not NaN,
    for a batch without any); padding goes in as a 4D boolean mask (from a 2D one transformers reads `mask.all()`,
    which makes the host wait for the device, on every forward)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    @property
    def config(self):
        return self.lm.config

    @property
    def encoder(self) -> nn.Module:
        """The encoder without the head, as SpanExtractionModel.encoder (gradient checkpointing, adversarial training)."""
        return self.lm.base_model

    def forward(self, input_ids, labels, attention_mask=None) -> MaskedLMOutput:
        mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()  # (batch, 1, 1, seq)
        logits = self.lm(input_ids=input_ids, attention_mask=mask).logits  # (batch, seq, vocab)
        # fp32 for the softmax under autocast; the head runs over every position, as transformers' MLM models do
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
        return MaskedLMOutput(loss / (labels != IGNORE_INDEX).sum().clamp(min=1))


def build_masked_lm(model: ModelConfig, max_seq_length: int, pretrained: bool = True) -> tuple[MaskedLM, list[str]]:
    """The model folder's encoder with its MLM head (AutoModelForMaskedLM), and the keys it lacked (a head that is
    not there is initialised); with `pretrained` False the architecture only."""
    from transformers import AutoModelForMaskedLM

    config = encoder_config(model.name_or_path, model.dropout, model.attention_dropout, max_seq_length)
    try:
        if not pretrained:
            return MaskedLM(AutoModelForMaskedLM.from_config(config, attn_implementation="sdpa")), []
        lm, info = AutoModelForMaskedLM.from_pretrained(model.name_or_path, config=config, attn_implementation="sdpa",
                                                        output_loading_info=True)
    except ValueError as err:  # transformers has no masked-LM class for this model type
        raise ConfigError(f"{model.name_or_path}: no masked-language-model head for model type {config.model_type!r} "
                          f"({str(err).splitlines()[0]})") from None
    return MaskedLM(lm), sorted(info["missing_keys"])


class MaskedLMTask:
    """Masked-language-model training on a corpus of contexts and documents; see the module docstring."""

    unit = "sequences"
    evaluates = False
    packs = False  # masking works on padded (sequences, width) batches

    def __init__(self):
        self.started = time.perf_counter()
        self.info: dict = {}  # pretrain_info.json, filled as the run is set up
        self.tokenizer, self.rule = None, None  # set by load

    def load(self, cfg: RunConfig, tokenizer, log: RunLog):
        if tokenizer.mask_token_id is None:
            raise ConfigError(f"{cfg.model.tokenizer or cfg.model.name_or_path}: the tokenizer has no mask token to "
                              "pre-train with; pass --set model.tokenizer=<the folder of one that has>")
        eval_files = cfg.pretrain.eval_files or ([cfg.data.dev_file] if cfg.data.dev_file else [])
        corpus = collect_texts(cfg.pretrain, eval_files, cfg.data.format)
        for line in corpus.summary():
            log.info(line)
        if not corpus.texts:
            raise ConfigError("nothing left to pre-train on: every text is a context of the eval files; pass "
                              "--include-eval-contexts to keep them, or other --data/--text files")
        sequences, summary = build_sequences(corpus.texts, tokenizer, cfg.data)
        log.info(str(summary))
        self.tokenizer = tokenizer
        self.rule = MaskingRule(cfg.pretrain.masking == "word", cfg.pretrain.mask_prob, tokenizer.mask_token_id,
                                len(tokenizer), cfg.train.seed)
        masked = self._count_masks(sequences, epoch=0)
        log.info(f"masking ({cfg.pretrain.masking}, data.word_segmenter {cfg.data.word_segmenter}), epoch 0: "
                 f"{masked['words']} of {summary.words} words ({masked['words'] / max(summary.words, 1):.1%}), "
                 f"{masked['tokens']} of {summary.tokens} tokens predicted: {masked['mask']} [MASK], "
                 f"{masked['random']} random, {masked['unchanged']} unchanged")
        self.info = {"model": cfg.model.name_or_path, "masking": cfg.pretrain.masking,
                     "word_segmenter": cfg.data.word_segmenter, "mask_prob": cfg.pretrain.mask_prob,
                     "max_seq_length": cfg.data.max_seq_length, **corpus.to_dict(),
                     "sequences": summary.sequences, "tokens": summary.tokens, "words": summary.words,
                     "predicted_epoch_0": masked}
        return sequences

    def build_model(self, cfg: RunConfig, pretrained: bool, log: RunLog) -> MaskedLM:
        model, missing = build_masked_lm(cfg.model, cfg.data.max_seq_length, pretrained)
        prefix = model.lm.base_model_prefix + "."
        fresh_head = [k for k in missing if not k.startswith(prefix)]
        fresh_encoder = [k for k in missing if k.startswith(prefix)]
        tied = model.lm.get_output_embeddings().weight is model.lm.get_input_embeddings().weight
        if not pretrained:
            head = "from the checkpoint"
        elif fresh_head:
            head = f"fresh ({describe_keys(fresh_head)} initialised)"
        else:
            head = f"loaded from {cfg.model.name_or_path}"
        log.info(f"MLM head: {head}; its decoder is {'tied to' if tied else 'separate from'} the input embeddings")
        if pretrained and fresh_head:
            # measured (docs/benchmarks.md, "In-domain pre-training"): MiniLM with a fresh head, 200 steps on the
            # SQuAD train head's contexts, then fine-tuned: 2 to 10 F1 lower than without pre-training
            log.info("warning: a fresh MLM head's early gradients reach the encoder as noise; with few steps this can "
                     "cost more than the in-domain text gives: compare with and without (mrc compare), or pre-train "
                     "a model that has its MLM head")
        if fresh_encoder:
            log.info(f"warning: {cfg.model.name_or_path} lacks encoder weights, initialised: {describe_keys(fresh_encoder)}")
        self.info.update(mlm_head=head, tied_decoder=tied)
        return model

    def batch(self, store: FeatureTensors, index: list[int], rows: torch.Tensor, epoch: int) -> dict:
        batch = store.batch(index, rows)
        del batch["num_units"]  # word-level span extraction's, added wherever features carry word ids
        word_ids = batch.pop("word_ids")  # (batch, width)
        positions = torch.arange(word_ids.shape[1], device=word_ids.device)
        batch["input_ids"], batch["labels"] = mask_tokens(batch["input_ids"], word_ids, rows[:, None], positions[None],
                                                          epoch, self.rule)
        return batch

    def run_info(self, cfg: RunConfig) -> dict:
        files = [*cfg.pretrain.data_files, *cfg.pretrain.text_files, *self.info["eval_files"]]
        return {"files_sha256": {f: file_sha256(f) for f in files}, "sequences": self.info["sequences"]}

    def finish(self, run_dir: Path, model: MaskedLM, last_eval, state: TrainerState, main: bool) -> dict:
        """The model folder and pretrain_info.json."""
        if main:
            _save_model_folder(model.lm, self.tokenizer, self.info["model"], run_dir)
            self.info.update(steps=state.step, epoch=state.epoch, sequences_seen=state.samples, tokens_seen=state.tokens,
                             wall_seconds=round(time.perf_counter() - self.started, 1))
            (run_dir / INFO_FILE).write_text(json.dumps(self.info, indent=2, ensure_ascii=False), encoding="utf-8")
        return {}

    def _count_masks(self, sequences, epoch: int) -> dict:
        """What the masks of `epoch` do to the corpus: words and tokens predicted, and what replaced those tokens;
        counted on the CPU from the batches training cuts."""
        store = FeatureTensors(sequences, torch.device("cpu"), 0)
        counts = Counter()
        for start in range(0, len(store), 1024):
            index = list(range(start, min(start + 1024, len(store))))
            rows = torch.tensor(index)
            word_ids = store.batch(index, rows)["word_ids"]
            batch = self.batch(store, index, rows, epoch)
            predicted = batch["labels"] != IGNORE_INDEX
            shown = batch["input_ids"][predicted]
            counts["tokens"] += int(predicted.sum())
            counts["mask"] += int((shown == self.rule.mask_token_id).sum())
            counts["unchanged"] += int((shown == batch["labels"][predicted]).sum())
            pairs = torch.stack([rows[:, None].expand_as(word_ids)[predicted], word_ids[predicted]])
            counts["words"] += torch.unique(pairs, dim=1).shape[1]
        return {"words": counts["words"], "tokens": counts["tokens"], "mask": counts["mask"],
                "random": counts["tokens"] - counts["mask"] - counts["unchanged"], "unchanged": counts["unchanged"]}


def _save_model_folder(lm: nn.Module, tokenizer, source: str, out: Path) -> None:
    """save_pretrained of the encoder and its MLM head, and the tokenizer. config.json keeps the source's dropout:
    model.dropout and attention_dropout are run settings, which a fine-tuning run sets again."""
    from transformers import AutoConfig

    original = AutoConfig.from_pretrained(source)
    lm.config.update({key: getattr(original, key) for key in DROPOUT_KEYS if hasattr(original, key)})
    lm.save_pretrained(out)
    tokenizer.save_pretrained(out)
