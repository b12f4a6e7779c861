"""Typed run config: dataclasses with the defaults, YAML files on top, flags and `--set key=value` on top of those.

Precedence, lowest first: dataclass defaults, the YAML file, named flags, `--set section.key=value`. Every value is
checked against its field's type, and an unknown key names the nearest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import types
import typing
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mrc_cli.errors import ConfigError
from mrc_cli.files import write_text_atomically

SEGMENTERS = ("tokenizer", "chars", "jieba")  # or "module:function" returning a list of words


@dataclass
class DataConfig:
    train_file: str | None = None
    dev_file: str | None = None
    format: Literal["auto", "squad", "jsonl", "hf"] = "auto"
    max_seq_length: int = 384  # longer: fewer windows per example, slower steps
    doc_stride: int = 128  # tokens shared by neighbouring windows; must leave room for the question
    max_query_length: int = 64  # longer questions are cut to this many tokens
    word_segmenter: str = "tokenizer"  # whole words: the tokenizer's pre-tokenizer, chars, jieba, or module:function
    num_proc: int = 1  # processes for tokenization (datasets.map)
    cache_dir: str | None = None  # feature cache; default $MRC_CACHE_DIR, else ~/.cache/mrc-cli
    # the official rules its files are scored by (a run's dev evaluations, eval, kfold); auto: by the text and the
    # questions (mrc_cli.metrics.detect_metric): cmrc2018 for Chinese, squad_v2 with unanswerable questions, else squad
    metric: Literal["auto", "squad", "squad_v2", "cmrc2018"] = "auto"

    def __post_init__(self) -> None:
        if self.num_proc < 1:  # 0 or below had tokenized in this process without a word
            raise ConfigError(f"data.num_proc is a number of tokenizer processes, at least 1 (1: this process alone), "
                              f"got {self.num_proc}")
        module, colon, function = self.word_segmenter.partition(":")
        if self.word_segmenter not in SEGMENTERS and not (colon and module and function):
            raise ConfigError(
                f"data.word_segmenter {self.word_segmenter!r}: choose {', '.join(SEGMENTERS)} or module:function"
            )


@dataclass
class ModelConfig:
    name_or_path: str = "bert-base-uncased"
    tokenizer: str | None = None  # another tokenizer than the model's (Chinese ALBERT ships a BERT vocabulary)
    # hidden dropout (None: the model's, BERT's 0.1). 0 measured +3.8 F1 over 3 seeds at 0.94x the training time on
    # SQuAD with MiniLM (docs/benchmarks.md, "Defaults chosen at equal time"): an epoch or two of fine-tuning is far
    # from overfitting. R-Drop and multi-sample dropout compare dropout masks, so they need it above 0
    dropout: float | None = 0.0
    # on attention probabilities (None: the model's). 0 measured +1.6 F1 and 1.5x faster training than BERT's 0.1 on
    # SQuAD with MiniLM (docs/benchmarks.md): on CPU, attention dropout forces SDPA off its fused kernel
    attention_dropout: float | None = 0.0
    span_level: Literal["token", "word"] = "token"  # word: answers start and end on whole words (data.word_segmenter's)
    multi_sample_dropout: int = 0  # > 1: the head sees that many dropout masks in training, the loss is their mean

    def __post_init__(self) -> None:
        for name in ("dropout", "attention_dropout"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:  # torch's own refusal is a traceback from inside the model
                raise ConfigError(f"model.{name} is a probability from 0 to below 1 (or null: the model's own), got "
                                  f"{value}")
        if self.multi_sample_dropout < 0:
            raise ConfigError(f"model.multi_sample_dropout must be 0 (off) or more, got {self.multi_sample_dropout}")


@dataclass
class TrainConfig:
    output_dir: str = "outputs/run"
    epochs: float = 2.0
    max_steps: int = 0  # > 0: stop after this many optimizer steps, whatever the epochs
    # wall-clock budget of this command, set-up included: "90m", "2h" or seconds ("3600"); the run ends (evaluation,
    # checkpoint, predictions) after the last step that fits, projected from its measured step and evaluation times.
    # A resume gets it anew (a requeued job gets its time limit anew). null: no budget
    max_time: str | None = None
    batch_size: int = 16  # per process; effective batch = batch_size * grad_accum * processes
    scale_lr: bool = False  # true: lr x processes (linear scaling for the larger effective batch of several GPUs)
    grad_accum: int = 1
    # features per inference batch; auto: 64 on CUDA, 16 on a CPU (there 1.35x faster than 64, docs/benchmarks.md)
    eval_batch_size: int | str = "auto"
    lr: float = 1e-4  # measured best for small encoders (MiniLM); the paper configs set 3e-5 for base models
    weight_decay: float = 0.01  # not on biases and norms (rank-1 tensors)
    warmup: float = 0.1  # fraction of the optimizer steps, then linear decay to 0
    # fraction of the optimizer steps, as warmup, in which only the span head trains (the encoder frozen): for a
    # folder without a QA head (MiniLM), whose fresh head's first gradients reach the encoder as noise. The lr
    # schedule runs over all steps unchanged: the encoder joins at the lr reached by then (mrc_cli/tricks.py)
    head_warmup: float = 0.0
    max_grad_norm: float = 0.0  # 0: no clipping (clipping at 1.0 cost 2-3 F1 in short runs, shared/MEASURED.md)
    # auto: bf16 where the GPU/CPU runs it natively (Ampere+, AVX512-BF16/AMX), fp16 on older GPUs, else fp32
    precision: Literal["auto", "bf16", "fp16", "no"] = "auto"
    gradient_checkpointing: bool = False  # recompute activations in backward: far less memory, ~30 % more compute
    cpu: bool = False  # train on the CPU even where a GPU is visible
    group_by_length: bool = True  # batches of similar length: about half the padding of random batches
    # > 0: each micro-batch is whole features packed into one row of at most this many tokens (no padding but the
    # row's tail; attention stays inside each feature); 0: batch_size features padded to the longest. auto: on CUDA
    # batch_size x the mean feature length (as many features per step), on CPU 0 (docs/benchmarks.md); 0 wherever
    # rows cannot be packed (encoders outside mrc_cli.attention.PACKABLE, `mrc pretrain`) or would not run on varlen
    # attention (fp32, attention dropout, torch < 2.11). A run's config.yaml holds the number it resolved to
    tokens_per_batch: int | str = "auto"
    # on: the training forward and backward compiled with torch.compile(mode="reduce-overhead"), which on CUDA runs
    # them as recorded CUDA graphs (one launch instead of ~1,000 kernels for the host); on CPU compiled only (no
    # gain measured there). Compiling takes tens of seconds at the start. auto: off until a GPU measurement backs it
    cuda_graphs: Literal["auto", "on", "off"] = "auto"
    seed: int = 0
    log_steps: int = 10
    # experiment trackers besides metrics.jsonl and curves.png: none, or accelerate's (tensorboard, wandb, mlflow,
    # comet_ml, aim, ...), comma-separated; files of local ones go to the run directory
    report_to: str = "none"
    eval_steps: int = 0  # 0: evaluate at the end only
    save_steps: int = 200  # checkpoints to resume from; also written at the end
    keep_last: int = 2  # checkpoints kept besides the best
    # once the run has finished, the checkpoints that keep their optimizer state (twice the weights with Adam): last,
    # the one a longer run resumes from; all: any can be resumed from (to branch a run from an earlier step)
    keep_training_state: Literal["last", "all"] = "last"
    metric_for_best: Literal["f1", "exact", "dev_loss"] = "f1"  # dev_loss: lower is better
    patience: int = 0  # stop after this many evaluations without improvement; 0: never
    resume: str | None = None  # auto (the newest checkpoint in output_dir) or a checkpoint folder
    init_from: str | None = None  # weights to start from (strict=False, the key differences are reported)
    # tricks (mrc_cli/tricks.py; what each was worth: docs/benchmarks.md)
    llrd: float = 1.0  # layer-wise lr decay: each layer below the head trains at this factor of the one above (1: off)
    adversarial: Literal["none", "fgm", "pgd"] = "none"  # perturbed word embeddings: one more forward (fgm), adv_steps (pgd)
    # L2 size of the perturbation of one feature's embeddings. Competition code's 1.0 (there over the whole embedding
    # matrix of a batch) cost 24 F1 here at one seed, per feature it is a far larger step (docs/benchmarks.md)
    adv_epsilon: float = 0.1
    adv_alpha: float = 0.03  # pgd: size of each step (competition code's ratio to epsilon, 0.3)
    adv_steps: int = 3  # pgd: steps of the climb
    ema_decay: float = 0.0  # > 0: evaluate, keep and export shadow weights averaged at this decay (e.g. 0.999)
    rdrop_alpha: float = 0.0  # > 0: R-Drop, each batch twice with the KL between the two as a loss term at this weight


def check_null_threshold(value: float | None) -> None:
    """A --threshold (None: not given) of ensemble or analyze that is a number: NaN compares false with everything, so
    no question would ever be answered null (decode.null_score_diff_threshold checks itself)."""
    if value is not None and math.isnan(value):
        raise ConfigError("--threshold nan: a number (higher: fewer null answers; inf: none)")


@dataclass
class DecodeConfig:
    n_best_size: int = 20
    max_answer_length: int = 30  # in positions: tokens, or words at model.span_level word
    null_score_diff_threshold: float = 0.0  # higher: fewer null answers
    # where that threshold came from: config (the default or set by hand), dev (`mrc eval --store-threshold`: tuned on
    # the data it was scored on), oof (`mrc kfold`: chosen on out-of-fold predictions; `mrc eval` then reports it
    # against the threshold 0 and the dev-optimal one) or reference (an ensemble's, taken from its first member: chosen
    # for that model's null odds, not the ensemble's)
    null_threshold_from: Literal["config", "dev", "oof", "reference"] = "config"
    # oof: the share of unanswerable questions it was chosen on; a threshold carries that share (docs/benchmarks.md)
    null_share: float | None = None
    allow_null: bool = False  # SQuAD v2: an example may be answered with ""
    # bf16/fp16 inference: a question whose best two answers (or null decision) are closer than this in score is
    # decided again in fp32 (0: never). SQuAD v2 dev head, MiniLM: 0 keeps 98.6 % of fp32's answers, 0.03 99.5 % for
    # 2.5 % of the windows rerun, 0.05 100 % for 5.8 % (docs/benchmarks.md)
    recheck_margin: float = 0.03
    # answer probabilities (the n-best softmax; Reader's probability and no_answer_probability): span logits are
    # score / temperature, the null candidate's (null score + null_bias) / temperature. `mrc eval --calibrate` fits
    # them so that a probability is how often such an answer is right; answers and null decisions never change
    temperature: float = 1.0
    null_bias: float = 0.0  # SQuAD v2 models; in score units, like null_score_diff_threshold

    def __post_init__(self) -> None:
        for name in ("n_best_size", "max_answer_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"decode.{name} must be at least 1, got {getattr(self, name)}")
        if math.isnan(self.null_score_diff_threshold):  # NaN compares false with everything: never a null answer
            raise ConfigError("decode.null_score_diff_threshold is a number (higher: fewer null answers; inf: none), "
                              "got nan")
        if not self.recheck_margin >= 0:  # NaN as well: no margin is closer than it, so never a recheck
            raise ConfigError(f"decode.recheck_margin must be 0 (off) or more, got {self.recheck_margin}")
        if self.null_share is not None and not 0 <= self.null_share <= 1:
            raise ConfigError(f"decode.null_share is a share of questions, from 0 to 1 (or null), got {self.null_share}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"decode.temperature divides the answer scores: a number > 0 (1 leaves them as they are), "
                              f"got {self.temperature}")
        if not math.isfinite(self.null_bias):
            raise ConfigError(f"decode.null_bias is added to the null score: a finite number (0 adds nothing), "
                              f"got {self.null_bias}")


@dataclass
class PretrainConfig:
    """`mrc pretrain` (mrc_cli/pretraining.py): masked-language-model training on contexts and plain text."""

    data_files: list[str] = field(default_factory=list)  # SQuAD-style files: each distinct context once
    text_files: list[str] = field(default_factory=list)  # plain UTF-8 text: documents separated by blank lines
    eval_files: list[str] = field(default_factory=list)  # their contexts are left out; empty: data.dev_file
    include_eval_contexts: bool = False  # true: keep them (fair where the test contexts are given unlabeled)
    masking: Literal["word", "token"] = "word"  # word: all sub-tokens of data.word_segmenter's words together
    mask_prob: float = 0.15  # of the words (token: of the tokens) selected for prediction, as BERT

    def __post_init__(self) -> None:
        if not 0 < self.mask_prob < 1:
            raise ConfigError(f"pretrain.mask_prob is a fraction in (0, 1), got {self.mask_prob}")


@dataclass
class DistilConfig:
    """`mrc distil` (mrc_cli/distillation.py): a student trained on a teacher's answer distributions as well."""

    teacher: str | None = None  # a trained model (checkpoint, run directory, export) or a saved ensemble folder
    alpha: float = 0.5  # weight of the teacher term; 1 - alpha goes to the span loss on gold labels (0: plain training)
    # both distributions are softened by it and the term scaled by T^2, so its gradients keep their size (Hinton
    # et al., 2015); higher: more of the teacher's ranking of the wrong spans is learnt
    temperature: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"distil.alpha is a weight in [0, 1], got {self.alpha}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):  # inf: a uniform teacher, a term of inf x 0
            raise ConfigError(f"distil.temperature must be a finite number > 0, got {self.temperature}")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    distil: DistilConfig = field(default_factory=DistilConfig)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None, sets: list[str] = (),
                base: str | Path | None = None, command: str | None = None) -> RunConfig:
    """Defaults (or the config.yaml `base`) <- YAML file <- `overrides` (named flags, None = not given) <- `sets`
    ("section.key=value"); two sets, or a flag and a set, that give one key two values are refused, and so is a set
    `command` (train, compare, ...) would not read."""
    sets = _listed(sets)
    if command is not None:
        refuse_unread_sets(sets, command)
    cfg = RunConfig() if base is None else load_config(base)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        loaded = read_yaml(path) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected sections such as 'data:' and 'train:' at the top level")
        for section, values in loaded.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: section {section!r} must hold key: value lines")
            for key, value in values.items():
                set_value(cfg, f"{section}.{key}", value, source=str(path))
    flagged = {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_value(cfg, dotted, value, source="command line")
            flagged[dotted] = _get(cfg, dotted)
    apply_sets(cfg, sets)
    for item in sets:  # a flag and a --set of the same key: which one was meant is not ours to guess
        dotted = item.partition("=")[0].strip()
        if dotted in flagged and _get(cfg, dotted) != flagged[dotted]:
            raise ConfigError(f"{dotted}: its flag gives {flagged[dotted]!r}, --set {item} another value; give one of "
                              "them")
    given = {*flagged, *(item.partition("=")[0].strip() for item in sets)}
    # (a resume says so in a note: its length is the run's own unless given anew)
    if base is None and not cfg.train.resume and cfg.train.max_steps and "train.epochs" in given and \
            "train.max_steps" not in given:
        raise ConfigError(f"train.epochs {cfg.train.epochs} given, but train.max_steps {cfg.train.max_steps} from "
                          f"{path} sets the run's length, and epochs would do nothing; add --max-steps 0 to train by "
                          "epochs")
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping: PyYAML keeps the last one silently, so a second
    `train:` section dropped every setting of the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        lines = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then `lr: 2`: an override YAML means
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):  # a list as a key: SafeLoader's own error names it
                continue
            if key in lines:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: {key!r} is given twice (also on line "
                                  f"{lines[key]}); YAML would keep the last and drop the first: merge them into one")
            lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """A YAML file's content (plain types only); invalid YAML, or a key given twice in one mapping, is a ConfigError
    naming the file."""
    from mrc_cli.data import read_text  # a file in another encoding: one line saying how to convert it

    try:
        return yaml.load(read_text(path), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def _listed(sets: Iterable[str] | str) -> list[str]:
    """Settings as a list: one "section.key=value" given from Python as a string is one setting, not its letters."""
    return [sets] if isinstance(sets, str) else list(sets)


def _get(cfg: RunConfig, dotted: str) -> Any:
    section, _, key = dotted.partition(".")
    return getattr(getattr(cfg, section), key)


def load_run_config(path: str | Path | None, overrides: dict[str, Any], sets: list[str], command: str) -> RunConfig:
    """load_config for a command that trains. With train.resume, the run's own config.yaml (the checkpoint's, or for
    auto the run directory's) stands in for the defaults: a key not given again keeps the run's value, so that
    `--resume auto --output-dir DIR` continues the run that stopped, not one of the default length."""
    cfg = load_config(path, overrides, sets, command=command)
    resume = cfg.train.resume
    if resume is None:
        return cfg
    from mrc_cli.checkpoint import run_dir_of  # (checkpoint reads configs: imported here, not at the top)

    saved = Path(cfg.train.output_dir if resume == "auto" else resume) / "config.yaml"
    _refuse_other_command(saved.parent if resume == "auto" else run_dir_of(Path(resume).resolve()), command)
    given = path or sets or any(value is not None for key, value in overrides.items()
                                if key not in ("train.output_dir", "train.resume"))
    if resume == "auto" and not saved.is_file() and not given and (saved.parent / "train.log").is_file():
        raise ConfigError(f"{saved.parent}: the run stopped before it saved its settings (no config.yaml), so --resume "
                          "auto has none to go on with: give the command that started it again, with --resume auto")
    if resume != "auto" and not saved.is_file():  # else the run's settings missing would be the error named
        raise ConfigError(f"--resume {resume}: " + ("not a checkpoint folder (no config.yaml)" if Path(resume).is_dir()
                          else "no such checkpoint folder") + "; --resume auto continues the newest checkpoint of the "
                          "run directory")
    return load_config(path, overrides, sets, base=saved) if saved.is_file() else cfg


def run_command(run_dir: Path) -> str | None:
    """The command that made a run directory (train, pretrain, distil), from its run_info.json; None without one."""
    info = run_dir / "run_info.json"
    if not info.is_file():
        return None
    then = json.loads(info.read_text(encoding="utf-8"))
    # runs from before run_info.json named the command: by what each task records
    return then.get("task") or ("distil" if "teacher" in then else "pretrain" if "files_sha256" in then else "train")


def _refuse_other_command(run_dir: Path, command: str) -> None:
    """A run goes on with the command that made it: mrc train on a pre-training run's folder had failed on a setting
    the other command does not read, naming that instead."""
    made_by = run_command(run_dir)
    if made_by and made_by != command:
        raise ConfigError(f"{run_dir} is a run of mrc {made_by}: resume it with mrc {made_by} --resume auto "
                          f"{'--out' if made_by == 'pretrain' else '--output-dir'} {run_dir}, or give mrc {command} "
                          "another folder")


OWN_SECTIONS = ("pretrain", "distil")  # each read only by the command of its name
# what pre-training has no use for: it cuts texts into sequences, not windows of a question, and evaluates nothing
UNREAD_BY_PRETRAIN = ("decode.", "data.doc_stride", "data.max_query_length", "train.eval_steps",
                      "train.metric_for_best", "model.span_level")


def refuse_unread_sets(sets: Iterable[str], command: str, source: str = "--set") -> None:
    """A setting of a section only another command reads (pretrain.*, distil.*), or one mrc pretrain has no use for,
    would be saved with the run and change nothing: refused, naming the command that reads it."""
    for item in sets:
        dotted = item.partition("=")[0].strip()
        section = dotted.partition(".")[0]
        if section in OWN_SECTIONS and section != command:
            raise ConfigError(f"{source} {item}: mrc {command} does not read {section}.* settings (mrc {section} does)")
        if command == "pretrain" and dotted.startswith(UNREAD_BY_PRETRAIN):
            raise ConfigError(f"{source} {item}: mrc pretrain does not read it (it cuts texts into sequences of "
                              "data.max_seq_length tokens and evaluates nothing; mrc train does)")


def apply_sets(cfg: RunConfig, sets: Iterable[str], source: str = "--set") -> None:
    """Apply `section.key=value` overrides to `cfg`, each value read as YAML (3e-5, true, null); `source` names them
    in errors (--set, a compare variant). A key set twice to two values is refused: which one was meant is not ours
    to guess."""
    given = {}
    for item in _listed(sets):
        dotted, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"{source} {item!r}: expected section.key=value, e.g. --set train.lr=1e-4")
        dotted = dotted.strip()
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            quoted = f"{dotted}={json.dumps(text, ensure_ascii=False)}"
            hint = f"--set '{quoted}'" if source == "--set" else quoted  # the shell keeps quotes inside '...'
            raise ConfigError(f"{source} {item!r}: the value is not YAML ({getattr(err, 'problem', None) or err}); "
                              f"quote it: {hint}") from None
        set_value(cfg, dotted, value, source=source)
        now = _get(cfg, dotted)
        if dotted in given and given[dotted][1] != now:
            raise ConfigError(f"{dotted}: {source} {given[dotted][0]} and {source} {item} give it two values; give one "
                              "of them")
        given[dotted] = (item, now)


# transformers' TrainingArguments names (and other common ones) -> ours: difflib's nearest name by spelling was
# another setting (gradient_accumulation_steps -> gradient_checkpointing, learning_rate -> log_steps)
KNOWN_ELSEWHERE = {
    "learning_rate": "train.lr", "gradient_accumulation_steps": "train.grad_accum",
    "per_device_train_batch_size": "train.batch_size", "train_batch_size": "train.batch_size",
    "per_device_eval_batch_size": "train.eval_batch_size", "num_train_epochs": "train.epochs",
    "warmup_ratio": "train.warmup", "warmup_steps": "train.warmup (a fraction of the steps)",
    "max_grad_norm": "train.max_grad_norm", "save_total_limit": "train.keep_last",
    "early_stopping_patience": "train.patience", "logging_steps": "train.log_steps",
    "evaluation_steps": "train.eval_steps", "fp16": "train.precision", "bf16": "train.precision",
    "max_length": "data.max_seq_length", "max_seq_len": "data.max_seq_length", "stride": "data.doc_stride",
    "model_name_or_path": "model.name_or_path", "tokenizer_name": "model.tokenizer",
}
NO_SUCH_SETTING = {key: "there is no schedule setting: the lr warms up linearly (train.warmup, a fraction of the "
                        "steps), then decays linearly to 0" for key in ("lr_scheduler", "lr_scheduler_type", "scheduler")}


def check_values(cfg: RunConfig, source: str = "config") -> None:
    """Every setting checked as a YAML file's or --set's are (type, choices, each section's own checks) and made what
    they make it (one path where a list belongs is a list of one): a config changed by attribute from Python was
    not."""
    for section in dataclasses.fields(cfg):
        for setting in dataclasses.fields(getattr(cfg, section.name)):
            set_value(cfg, f"{section.name}.{setting.name}", getattr(getattr(cfg, section.name), setting.name), source)


def set_value(cfg: RunConfig, dotted: str, value: Any, source: str) -> None:
    section_name, _, key = dotted.partition(".")
    sections = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    section = sections.get(section_name)
    valid = [f"{s}.{f.name}" for s, obj in sections.items() for f in dataclasses.fields(obj)]
    fields = {f.name: f for f in dataclasses.fields(section)} if section is not None else {}
    if key not in fields:
        # another library's name, where it names a key of this section (or no section is right): decode.max_length
        # is nearer decode.max_answer_length by spelling than data.max_seq_length by meaning
        known = KNOWN_ELSEWHERE.get(key, "")
        near = ([known] if known.startswith(f"{section_name}.") or (known and section is None)
                else difflib.get_close_matches(dotted, valid, n=1))
        hint = (f"; {NO_SUCH_SETTING[key]}" if key in NO_SUCH_SETTING else f"; did you mean {near[0]}?" if near
                else f"; valid keys: {', '.join(valid)}")
        raise ConfigError(f"{source}: unknown config key {dotted!r}{hint}")
    hint = typing.get_type_hints(type(section))[key]
    before = getattr(section, key)
    setattr(section, key, _coerce(value, hint, f"{source}: {dotted}"))
    if hasattr(section, "__post_init__"):  # a section's own checks (DecodeConfig's) hold for changed values too
        try:
            section.__post_init__()
        except ConfigError as err:
            setattr(section, key, before)  # a refused value does not stay in the config
            raise ConfigError(f"{source}: {err}") from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a field type (str, int, float, bool, a Literal of choices, X | None, a list of one of
    these); ints are accepted for floats, one value for a list of one."""
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value if isinstance(value, (list, tuple))
                                                                          else [value])]
    if typing.get_origin(hint) is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads no/off/yes/on as booleans: `precision: no` means "no"
            value = next((w for w in (("no", "off", "false") if not value else ("yes", "on", "true"))
                          if w in typing.get_args(hint)), value)
        if value not in typing.get_args(hint):
            raise ConfigError(f"{where}: expected one of {', '.join(map(str, typing.get_args(hint)))}, got {value!r}")
        return value
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for kind in options:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is float and isinstance(value, str):
            try:  # YAML 1.1 reads 3e-5 (no dot) as a string
                return float(value)
            except ValueError:
                pass
        if kind is str and isinstance(value, (str, int, float, os.PathLike)) and not isinstance(value, bool):
            return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    names = " or ".join("null" if k is type(None) else k.__name__ for k in options)
    raise ConfigError(f"{where}: expected {names}, got {value!r}")


def config_to_dict(cfg: RunConfig) -> dict:
    """The config as plain values; a path a Python caller set on it (a pathlib.Path) as its text, as YAML saves it."""
    def plain(value):
        if isinstance(value, list):
            return [plain(item) for item in value]
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    return {name: {key: plain(value) for key, value in values.items()} for name, values in dataclasses.asdict(cfg).items()}


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Written atomically: resume and eval read a checkpoint's config.yaml."""
    write_yaml_atomically(config_to_dict(cfg), path)


def write_yaml_atomically(obj: dict, path: str | Path) -> None:
    write_text_atomically(path, yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))


def check_data_config(data: DataConfig, num_special_tokens: int) -> None:
    """Settings that would fail deep inside the tokenizer, checked up front with a message that says what to do."""
    room = data.max_seq_length - data.max_query_length - num_special_tokens
    if data.max_query_length < 1 or room < 1:
        raise ConfigError(
            f"max_seq_length {data.max_seq_length} leaves no room for context after a question of up to "
            f"{data.max_query_length} tokens; raise data.max_seq_length or lower data.max_query_length"
        )
    if data.doc_stride < 0:
        raise ConfigError(f"doc_stride {data.doc_stride}: the tokens neighbouring windows share, 0 or more; use e.g. "
                          f"--doc-stride {room // 2}")
    if data.doc_stride >= room:
        raise ConfigError(
            f"doc_stride {data.doc_stride} must be below the {room} tokens left for context "
            f"(max_seq_length {data.max_seq_length} - max_query_length {data.max_query_length} - "
            f"{num_special_tokens} special tokens); use e.g. --doc-stride {room // 2}"
        )


DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


def duration_seconds(text: str) -> float:
    """train.max_time in seconds: a number with an optional unit s, m or h ("90m", "2h", "3600")."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smh]?)\s*", str(text))
    seconds = float(match[1]) * DURATION_UNITS[match[2]] if match else 0.0
    if not seconds > 0:
        raise ValueError(f"train.max_time {text!r} is not a time budget: give seconds (3600), minutes (90m) or hours "
                         "(2h), above 0, or null for none")
    return seconds


def check_train_config(train: TrainConfig) -> None:
    """Flags that would fail or silently do nothing, refused before any heavy work."""
    problems = []
    if not 0 <= train.seed < 2**32:  # numpy's range; accelerate's set_seed seeds it too
        problems.append(f"train.seed must be from 0 to 2**32 - 1 = {2**32 - 1} (got {train.seed})")
    if not (math.isfinite(train.lr) and train.lr > 0):
        problems.append(f"train.lr must be > 0 and finite (got {train.lr}); 1e-4 suits small encoders, 3e-5 base "
                        "models")
    if train.eval_batch_size != "auto" and not (isinstance(train.eval_batch_size, int) and train.eval_batch_size >= 1):
        problems.append("train.eval_batch_size is auto or a number of features, at least 1 (got "
                        f"{train.eval_batch_size!r})")
    for key in ("batch_size", "grad_accum", "log_steps", "keep_last"):
        if getattr(train, key) < 1:
            problems.append(f"train.{key} must be at least 1 (got {getattr(train, key)})")
    if train.max_steps < 0:
        problems.append(f"train.max_steps is a number of steps, or 0 for train.epochs (got {train.max_steps})")
    if train.max_time is not None:
        try:
            duration_seconds(train.max_time)
        except ValueError as err:
            problems.append(str(err))
    if not math.isfinite(train.epochs):  # inf had passed --dry-run and overflowed the count of steps
        problems.append(f"train.epochs must be a finite number (got {train.epochs}); train.max_steps sets a length in "
                        "steps")
    elif train.max_steps == 0 and not train.epochs > 0:
        problems.append(f"train.epochs must be > 0 or train.max_steps > 0 (got epochs {train.epochs}, max_steps 0)")
    for key in ("warmup", "head_warmup"):
        if not 0 <= getattr(train, key) < 1:
            problems.append(f"train.{key} is a fraction of the steps in [0, 1) (got {getattr(train, key)})")
    if train.head_warmup and train.adversarial != "none":
        problems.append(f"train.head_warmup: train.adversarial {train.adversarial} moves the embeddings along their "
                        "gradient, which a frozen encoder does not compute; set one of them off")
    for key in ("weight_decay", "max_grad_norm"):  # inf or NaN turn the weights or gradients into NaN
        if not (math.isfinite(getattr(train, key)) and getattr(train, key) >= 0):
            problems.append(f"train.{key} must be a finite number, 0 or more (got {getattr(train, key)}); 0 is off")
    for key in ("eval_steps", "save_steps", "patience"):
        if getattr(train, key) < 0:
            problems.append(f"train.{key} must not be negative (got {getattr(train, key)})")
    if train.tokens_per_batch != "auto" and not (isinstance(train.tokens_per_batch, int) and train.tokens_per_batch >= 0):
        problems.append("train.tokens_per_batch is auto, 0 (feature batches) or a number of tokens (got "
                        f"{train.tokens_per_batch!r})")
    if train.cuda_graphs == "on" and train.adversarial != "none":
        problems.append(f"train.cuda_graphs on: train.adversarial {train.adversarial} records the embeddings through a "
                        "hook that a compiled step cannot keep; set one of them off")
    if train.precision not in ("auto", "bf16", "fp16", "no"):
        problems.append(f"train.precision must be auto, bf16, fp16 or no (got {train.precision!r})")
    if not 0 < train.llrd <= 1:
        problems.append(f"train.llrd is a factor in (0, 1] (got {train.llrd}); 1 is off, 0.8-0.95 are usual")
    if not 0 <= train.ema_decay < 1:
        problems.append(f"train.ema_decay must be in [0, 1) (got {train.ema_decay}); 0 is off, 0.99-0.9999 are usual")
    if not (math.isfinite(train.rdrop_alpha) and train.rdrop_alpha >= 0):
        problems.append(f"train.rdrop_alpha must be a finite number, 0 or more (got {train.rdrop_alpha}); 0 is off")
    sizes = (train.adv_epsilon, train.adv_alpha)
    if train.adversarial != "none" and not (all(math.isfinite(x) and x > 0 for x in sizes) and train.adv_steps >= 1):
        problems.append(f"train.adv_epsilon and adv_alpha must be finite and > 0, and adv_steps at least 1 (got "
                        f"{train.adv_epsilon}, {train.adv_alpha}, {train.adv_steps})")
    if train.metric_for_best not in ("f1", "exact", "dev_loss"):
        problems.append(f"train.metric_for_best must be f1, exact or dev_loss (got {train.metric_for_best!r})")
    from mrc_cli import tracking  # accelerate's tracker names: a typo or a missing package fails here, --dry-run too

    try:
        tracking.tracker_names(train.report_to)
    except ConfigError as err:
        problems.append(str(err))
    if problems:
        raise ConfigError("; ".join(problems))


def check_pretrain_config(cfg: RunConfig) -> None:
    """`mrc pretrain`'s settings, refused before any heavy work: something to train on, no setting that belongs to the
    span head, an output folder that is not the model it starts from."""
    check_train_config(cfg.train)
    problems = []
    if not cfg.pretrain.data_files and not cfg.pretrain.text_files:
        problems.append("nothing to pre-train on: pass --data FILE (SQuAD-style: its contexts) or --text FILE (plain text)"
                        + (f" (--resume auto found no run in {cfg.train.output_dir} to take them from)"
                           if cfg.train.resume == "auto" and not Path(cfg.train.output_dir, "config.yaml").is_file()
                           else ""))
    if cfg.data.max_seq_length < 3:
        problems.append(f"data.max_seq_length {cfg.data.max_seq_length} leaves no room between [CLS] and [SEP]")
    for key, value in (("train.rdrop_alpha", cfg.train.rdrop_alpha), ("model.multi_sample_dropout", cfg.model.multi_sample_dropout),
                       ("train.head_warmup", cfg.train.head_warmup)):
        if value:
            problems.append(f"{key} {value!r} belongs to span fine-tuning (mrc train); pre-training has no span head: "
                            "unset it")
    from mrc_cli.data import missing_file
    from mrc_cli.tokenizer import check_model_folder

    check_model_folder(cfg.model.name_or_path, "pretrain")  # before the data: a checkpoint of ours is no encoder
    for flag, files in (("--data", cfg.pretrain.data_files), ("--text", cfg.pretrain.text_files),
                        ("--eval-data", cfg.pretrain.eval_files)):
        for name in files:  # a Hub dataset (--data squad_v2:train) or a saved one (data/saved:train): read at the start
            if not Path(name).is_file() if flag == "--text" else missing_file(name):
                problems.append(f"{flag} {name}: no such file")
    if Path(cfg.train.output_dir).resolve() == Path(cfg.model.name_or_path).resolve():
        problems.append(f"--out {cfg.train.output_dir} is the model folder pre-training starts from; its files would be "
                        "overwritten: choose another folder")
    if problems:
        raise ConfigError("; ".join(problems))
