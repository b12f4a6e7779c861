"""The training loop on accelerate: one readable loop, set up by small helpers, for any `Task`: span fine-tuning
(`train`, `SpanTask` here), distillation (mrc_cli.distillation) and masked-language-model pre-training
(mrc_cli.pretraining) differ only in their data, model, batches, evaluation and final files.

CPU, one GPU or many (`accelerate launch`) run the same code. An optimizer step is `processes x grad_accum`
micro-batches of similar width cut from the epoch's length-grouped plan (a pure function of seed, epoch and that
group size), so a resumed run regenerates the plan and skips what it has done. Batches are cut on the device from
features stored there once; nothing in an ordinary step waits for the device: the loss, token counts, NaN check and
stop signal meet in one all-reduce at log, evaluation and save steps only.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import hashlib
import itertools
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Protocol

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm

from mrc_cli import __version__
from mrc_cli.attention import packing_refusal, varlen_missing
from mrc_cli.batching import FeatureTensors, epoch_plan, remaining_steps, token_budget
from mrc_cli.checkpoint import (CHECKPOINTS, checkpoint_dir, complete_checkpoints, drop_training_states,
                                latest_checkpoint, new_run_advice, pretraining_checkpoint_advice, read_checkpoint_config,
                                read_trainer_state, read_training_state, read_weights, resolve_checkpoint, rng_state,
                                run_dir_of, save_checkpoint, set_rng_state, write_best_pointer)
from mrc_cli.compute import training_compute
from mrc_cli.config import (RunConfig, TrainConfig, check_train_config, check_values, config_to_dict, duration_seconds,
                            save_config)
from mrc_cli.errors import CheckpointError, ConfigError, TrainingError, TrainingInterrupted
from mrc_cli.files import refuse_other_files, write_text_atomically
from mrc_cli.features import feature_lengths
from mrc_cli.splits import Split, featurize_file
from mrc_cli.tokenizer import load_tokenizer, tokenizer_fingerprint
from mrc_cli.inference import evaluate_split, headline, write_prediction_files
from mrc_cli.metrics import scored_with_nulls
from mrc_cli.model import (attention_dropout_of, build_model, check_dropout_settings, check_tokenizer_fits,
                           describe_keys, describe_shapes, enable_gradient_checkpointing, encoder_config,
                           load_state_dict_file, load_weights)
from mrc_cli.precision import LossScaler, autocast, precision_name, resolve_precision, unseen_gpus_warning
from mrc_cli.processes import first_then_others
from mrc_cli.run_lock import LOCK_FILE, run_lock
from mrc_cli.runs import HELD_OUT, PLAN_RECORD, RUN_BY
from mrc_cli import timing, tracking
from mrc_cli.tracking import RunLog, plot_curves
from mrc_cli.tricks import EMA, Adversary, HeadWarmup, kept_warmup, layer_lr_scales, rdrop_loss
from mrc_cli.words import answers_inside_words, answers_longer_than, check_word_sizes, word_sizes

# set by the run from its data or itself, never differences a user made: resume notes no difference in them
RESOLVED_AT_START = {("decode", "allow_null"), ("train", "resume")}
# keys a resumed run takes from the command line; every other setting comes from the checkpoint
RESUME_OVERRIDABLE = {"epochs", "max_steps", "max_time", "eval_steps", "save_steps", "log_steps", "keep_last",
                      "patience", "resume", "cpu", "report_to", "keep_training_state"}
# taken from the command line only where it keeps the effective batch on another process count: _keep_effective_batch
# decides, and says which value wins
BATCH_SIZE = ("train", "batch_size")


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch of the last step done
    # [group, steps] run in that epoch, in order; group = processes x grad_accum (another after a resume elsewhere);
    # [group, steps, batch_size] where its micro-batches held another train.batch_size (_keep_effective_batch)
    epoch_segments: list = field(default_factory=list)
    samples: int = 0  # features trained on, all processes together
    tokens: int = 0  # real (not padding) tokens trained on, all processes together
    token_pairs: int = 0  # the squared lengths of those features, summed: the attention term of the FLOPs
    # [features, tokens, token_pairs] of those whose backward ended at the head (train.head_warmup, one process)
    head_only: list = field(default_factory=lambda: [0, 0, 0])
    plan_group: int = 0  # the group the run started with: its steps per epoch set the schedule's length
    plan_batch_size: int = 0  # the train.batch_size it started with, where a resume changed it (0: unchanged)
    processes: int = 1  # of the run that wrote the checkpoint
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    seed: int = 0
    # a stop between log steps: the sums of the steps since the last log line ([loss, features, real and computed
    # tokens, token pairs, steps, skipped]), which the resumed run logs at the next log step, as the uninterrupted
    # run does
    interval: list | None = None
    # the warm-ups the run started with (lr; train.head_warmup's head-only steps): a run made longer keeps them
    warmup_steps: int | None = None
    head_warmup_steps: int | None = None


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    metrics: dict = field(default_factory=dict)  # the last evaluation's (at `steps`)
    best_checkpoint: Path | None = None
    best: dict = field(default_factory=dict)  # best_checkpoint_step and _<train.metric_for_best>, where one was kept


def train(cfg: RunConfig, train_split: Split | None = None, dev_split: Split | None = None) -> TrainResult:
    """Fine-tune as `cfg` says. `train_split`/`dev_split`: splits already in memory (k-fold), built
    with this model's tokenizer and cfg.data; without them cfg.data.train_file/dev_file are read."""
    if train_split is None and (Path(_checked(cfg).train.output_dir) / HELD_OUT).is_file():
        raise ConfigError(f"{cfg.train.output_dir} is a fold of mrc kfold ({HELD_OUT}): mrc train would train it on the "
                          "questions it holds out; run mrc kfold again to resume it")
    return run_task(cfg, SpanTask(train_split, dev_split))


def _checked(cfg: RunConfig) -> RunConfig:
    if not isinstance(cfg, RunConfig):
        raise TypeError(f"a RunConfig, not {type(cfg).__name__}: mrc_cli.config.load_config(path, overrides) reads "
                        "a YAML file and settings into one (load_run_config to resume a run with its own settings)")
    return cfg


def own_copy(cfg: RunConfig) -> RunConfig:
    """A caller's config, copied and checked as the command line's is: the run resolves its `auto` values and derived
    settings in the copy (its config.yaml holds them), so the caller can reuse theirs."""
    cfg = copy.deepcopy(_checked(cfg))
    check_values(cfg)
    return cfg


class Task(Protocol):
    """What a run trains, around the one loop: span fine-tuning (`SpanTask`) and masked-language-model pre-training
    (mrc_cli.pretraining). The loop owns the rest: plan, steps, precision, meter, checkpoints, resume, stop signal."""

    unit: str  # what a row of the training data is, for the log: "features", "sequences"
    command: str  # the mrc command that runs it, and its flag for the run directory, for the resume hint
    run_dir_flag: str  # --output-dir, --out
    evaluates: bool  # whether the task has a dev set (known after `load`)
    packs: bool  # whether its batches may be packed rows (train.tokens_per_batch)
    stateful: dict  # the task's own parts a checkpoint keeps (state_dict/load_state_dict), beside the loop's

    def load(self, cfg: RunConfig, tokenizer, log: RunLog):
        """Read the data; return the training rows (a datasets.Dataset that FeatureTensors stores). May fill
        derived config values, which the saved config.yaml then holds."""

    def build_model(self, cfg: RunConfig, pretrained: bool, log: RunLog) -> torch.nn.Module:
        """A model with `.encoder` (the Hugging Face encoder), `.config` and forward(**batch).loss; `pretrained`
        False: the architecture only, for a resumed run's checkpoint."""

    def batch(self, store: FeatureTensors, index: list[int], rows: torch.Tensor, epoch: int) -> dict:
        """The inputs of rows `index` (`rows`: the same on the device) in `epoch`."""

    def loss_terms(self, index: list[int], epoch: int) -> int:
        """How many terms the loss of rows `index` in `epoch` is the mean of (counted on the host), so that a step of
        several micro-batches weighs each by it: its features, or its predicted tokens."""

    def evaluate(self, model, cfg: RunConfig, accelerator, precision: str) -> tuple[dict, object]:
        """(metrics, predictions) on the dev set; called only where `evaluates`."""

    def will_evaluate(self, cfg: RunConfig) -> bool:
        """Whether the run will evaluate (known before the data is read)."""

    def run_info(self, cfg: RunConfig) -> dict:
        """The task's part of run_info.json: data fingerprints and counts."""

    def finish(self, run_dir: Path, model, last_eval, state: TrainerState, main: bool) -> dict:
        """The task's files at the end (`main`: this process writes them), the model holding the weights to keep;
        returns the run's metrics."""


class SpanTask:
    """Span extraction on SQuAD-style data, evaluated on a dev set: what `train()` fine-tunes."""

    unit = "features"
    command = "train"
    run_dir_flag = "--output-dir"
    packs = True

    def __init__(self, train_split: Split | None, dev_split: Split | None):
        self.train_split, self.dev_split = train_split, dev_split
        # the earlier parts' seconds of a resumed run, for the wall time of its every part (mrc compare's runs)
        self.clock = timing.WallClock()
        self.stateful = {"wall_clock": self.clock}

    @property
    def evaluates(self) -> bool:
        return self.dev_split is not None

    def will_evaluate(self, cfg: RunConfig) -> bool:
        return self.dev_split is not None or bool(cfg.data.dev_file)

    def load(self, cfg: RunConfig, tokenizer, log: RunLog):
        self.train_split = _load_split(self.train_split, cfg.data.train_file, "train", tokenizer, cfg, log)
        if cfg.model.span_level == "word":
            check_word_sizes(*word_sizes(self.train_split.features), cfg.data.word_segmenter, "model.span_level=word")
            inside, labelled = answers_inside_words(self.train_split.features)
            log.info(f"span level word: {inside} of {labelled} answers start or end inside a word of "
                     f"data.word_segmenter {cfg.data.word_segmenter} and are learnt as the whole words")
        limit = cfg.decode.max_answer_length
        longer, labelled = answers_longer_than(self.train_split.features, limit, cfg.model.span_level)
        if longer > 0.01 * labelled:  # answers the decoder never gives: CMRC 2018 has 5 % past the default 30
            log.info(f"warning: {longer} of {labelled} training answers ({longer / labelled:.1%}) are longer than "
                     f"decode.max_answer_length {limit} {cfg.model.span_level}s, which no answer is decoded past; "
                     "raise it (configs/cmrc2018_*.yaml set 50)")
        if self.dev_split is not None or cfg.data.dev_file:
            self.dev_split = _load_split(self.dev_split, cfg.data.dev_file, "eval", tokenizer, cfg, log)
        # the null rule of a model that learnt unanswerable questions, also without a dev set: predict, serve and the
        # Reader answer "" by it
        for name, split in (("training", self.train_split), ("dev", self.dev_split if self.evaluates else None)):
            if split is not None and not cfg.decode.allow_null and scored_with_nulls(split.golds):
                cfg.decode.allow_null = True
                log.info(f"{name} set has unanswerable questions: decode.allow_null set to true")
        return self.train_split.features

    def build_model(self, cfg: RunConfig, pretrained: bool, log: RunLog):
        model = build_model(cfg.model, cfg.data.max_seq_length, pretrained=pretrained)
        if cfg.train.init_from and pretrained:
            init_from_weights(model, cfg.train.init_from, log)
        return model

    def batch(self, store: FeatureTensors, index: list[int], rows: torch.Tensor, epoch: int) -> dict:
        return store.batch(index, rows)

    def loss_terms(self, index: list[int], epoch: int) -> int:
        return len(index)  # a loss per feature

    def evaluate(self, model, cfg: RunConfig, accelerator, precision: str) -> tuple[dict, object]:
        return evaluate_split(model, self.dev_split, cfg, accelerator, precision)

    def run_info(self, cfg: RunConfig) -> dict:
        train, dev = self.train_split.summary, self.dev_split.summary if self.dev_split else None
        return {"train_file_sha256": file_sha256(cfg.data.train_file), "dev_file_sha256": file_sha256(cfg.data.dev_file),
                "train_examples": train.examples, "train_features": train.features,
                "dev_examples": dev.examples if dev else None, "dev_features": dev.features if dev else None}

    def finish(self, run_dir: Path, model, last_eval, state: TrainerState, main: bool) -> dict:
        """The dev predictions of the evaluation at the last step (metrics.json names the step, and for a resumed run
        the wall seconds of its parts before this process, each up to its last checkpoint)."""
        metrics, predictions = last_eval or ({}, None)
        if self.clock.before:
            metrics = {**metrics, "earlier_parts_wall_s": round(self.clock.before, 1)}
        if predictions is not None and main:
            write_prediction_files(run_dir, predictions, {**metrics, "step": state.step})
        return metrics


def run_task(cfg: RunConfig, task: Task) -> TrainResult:
    """Train `task` as `cfg` says (in `own_copy` of it): set up by small helpers, then the loop."""
    started = timing.now()  # train.max_time counts the set-up too: a job's time limit does
    cfg = own_copy(cfg)
    existed = Path(cfg.train.output_dir).exists()  # before the lock makes the folder
    try:
        with run_lock(Path(cfg.train.output_dir), task.run_dir_flag):
            return _loop(_set_up(cfg, task, existed), started)
    finally:
        _give_back_freed_memory()


def _give_back_freed_memory() -> None:
    """Return the heap a finished run freed to the system. glibc keeps it (1.4-1.9 GB after a MiniLM run on CPU), so a
    process that trains again and again (compare, kfold, a benchmark) grew from run to run until it was killed."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass
class _Run:
    """The parts of a run that `_set_up` builds and `_loop` drives."""

    cfg: RunConfig
    task: Task
    run_dir: Path
    accelerator: Accelerator
    precision: str
    log: RunLog
    tokenizer: object
    model: torch.nn.Module  # prepared by accelerate (DDP-wrapped under several processes)
    forward: object  # the compiled model of train.cuda_graphs, else None
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: LossScaler
    ema: EMA | None
    adversary: Adversary | None
    head_warmup: HeadWarmup  # does nothing without train.head_warmup
    stateful: dict  # what a checkpoint holds besides the weights: save and restore walk this
    state: TrainerState
    store: FeatureTensors
    total_steps: int


def _set_up(cfg: RunConfig, task: Task, existed: bool) -> _Run:
    """Config (the checkpoint's where resumed), accelerator, log, data, model, optimizer, schedule and the state to
    start from; the run directory's config, run_info and the derived numbers written once."""
    check_train_config(cfg.train)
    run_dir = Path(cfg.train.output_dir)
    asked_batch_size = cfg.train.batch_size  # a resume takes it where another process count needs it
    cfg, resume_from, resume_notes = resolve_run(cfg, task.will_evaluate, task.run_dir_flag, existed)
    saved_state = _trainer_state(resume_from) if resume_from is not None else None
    if resume_from is None and ((run_dir / "metrics.jsonl").is_file() or (run_dir / "train.log").is_file()):
        resume_notes.append(f"{run_dir} holds the records of a run that left no checkpoint: starting from step 0, "
                            "its metrics.jsonl lines dropped")
    accelerator = _accelerator(cfg.train.cpu, cfg.train.report_to, run_dir)
    precision = resolve_precision(cfg.train.precision, accelerator.device)
    world = accelerator.num_processes
    if saved_state is not None:
        resume_notes += _keep_effective_batch(cfg, saved_state, world, asked_batch_size)
    log = RunLog(run_dir, accelerator.is_main_process, accelerator if accelerator.log_with else None)
    if resume_from is None:
        log.truncate_metrics(0)
    for note in filter(None, [unseen_gpus_warning(), *resume_notes]):
        log.info(note)
    set_seed(cfg.train.seed)
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name_or_path)
    # before the data is read (and a distillation teacher has run over it): a tokenizer or budget this run cannot use
    config = encoder_config(cfg.model.name_or_path, cfg.model.dropout, cfg.model.attention_dropout,
                            cfg.data.max_seq_length)
    check_tokenizer_fits(config, tokenizer, cfg.model)
    unpacked = _why_unpacked(cfg.train, config, accelerator.device, precision, task.packs)
    # one process tokenizes, the others load its cache
    rows = first_then_others(accelerator, lambda: task.load(cfg, tokenizer, log), "reading the data")
    # before the model (a distillation teacher's pass over the data): a budget below the longest feature
    cfg.train.tokens_per_batch = _token_budget(cfg.train, unpacked, feature_lengths(rows), accelerator.device, log.info)

    model = task.build_model(cfg, pretrained=resume_from is None, log=log)
    if cfg.train.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model = accelerator.prepare(model)
    optimizer = _optimizer(accelerator.unwrap_model(model), cfg, world, log)
    adversary = Adversary.for_config(accelerator.unwrap_model(model), cfg.train)  # None unless train.adversarial
    state = saved_state or TrainerState(seed=cfg.train.seed, plan_group=world * cfg.train.grad_accum, processes=world)
    store = FeatureTensors(rows, accelerator.device, tokenizer.pad_token_id or 0, cfg.train.tokens_per_batch)
    plan = _first_plan(store, cfg, state)
    total_steps = cfg.train.max_steps or _steps_of_epochs(store, cfg, state, len(plan))
    if store.tokens_per_batch:
        sizes = [sum(map(len, step)) for step in plan]
        log.info(f"token-budget batches: rows of {store.tokens_per_batch} tokens, {sum(sizes) / len(plan):.1f} "
                 f"{task.unit} per optimizer step on average ({min(sizes)}-{max(sizes)}; feature batches: "
                 f"{cfg.train.batch_size * state.plan_group})")
        if cfg.train.cuda_graphs == "on":  # one compiled graph for every step
            store.fix_shapes()
        if store.slots:
            log.info(f"train.cuda_graphs on: every row has {store.slots} feature slots of {store.width} tokens (the "
                     f"most features a row can hold; empty slots are left out of the loss)")
    elif cfg.train.cuda_graphs == "on":  # a batch without padding would drop its mask: another graph to compile
        store.always_masked = True
    state.warmup_steps = kept_warmup(state.warmup_steps, warmup_steps(cfg.train.warmup, total_steps))
    scheduler = _scheduler(optimizer, state.warmup_steps, total_steps)
    scaler = LossScaler(precision, accelerator.device)
    ema = EMA(accelerator.unwrap_model(model), cfg.train.ema_decay) if cfg.train.ema_decay else None
    stateful = {"optimizer": optimizer, "scheduler": scheduler, "scaler": scaler, **({"ema": ema} if ema else {}),
                **task.stateful}
    if resume_from is not None:
        _restore(resume_from, accelerator, model, stateful, state, task.unit, log)
        # the schedule at the step reached, for this run's length: the same lr where the length is the run's own, and
        # where it is extended (a larger max_steps), a decay from here to the new end instead of the old end's lr
        # (0 once a run has finished); the warm-up stays the run's own, so a run made much longer does not warm up
        # again
        for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * factor(scheduler.last_epoch)
    # after the optimizer and EMA took every parameter: the warm-up may stop the encoder's requiring gradients
    head_warmup = HeadWarmup.for_config(accelerator.unwrap_model(model), cfg.train, total_steps, optimizer, world,
                                        state.step, state.head_warmup_steps, log)
    state.head_warmup_steps = head_warmup.steps
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        _write_run_info(run_dir, tokenizer, precision, accelerator, {"task": task.command, **task.run_info(cfg)},
                        resumed=resume_from is not None)
    _describe_run(cfg, world, total_steps, state.warmup_steps, precision, accelerator,
                  f"{len(store)} {task.unit}{_left_over(plan, len(store), state.plan_group)}", max(scheduler.base_lrs),
                  log)
    if accelerator.log_with:
        accelerator.init_trackers("mrc-cli", config=_flat_config(cfg))  # local ones write to RUN/trackers/mrc-cli
    return _Run(cfg, task, run_dir, accelerator, precision, log, tokenizer, model,
                _compiled(model, cfg.train, accelerator.device, log, dynamic=not store.slots), optimizer, scheduler,
                scaler, ema, adversary, head_warmup, stateful, state, store, total_steps)


def _loop(r: _Run, started: float) -> TrainResult:
    """Steps until the last (or the last that train.max_time leaves room for, counted from `started`): after each,
    log, evaluate, save and stop at their intervals; then the task's files."""
    cfg, state, accelerator, world = r.cfg, r.state, r.accelerator, r.accelerator.num_processes
    steps = _step_stream(r.task, r.store, cfg, state, accelerator)
    budget = duration_seconds(cfg.train.max_time) if cfg.train.max_time else None
    clock = timing.RunClock(started, budget, r.task.evaluates, world)
    bar = timing.TrainingBar(total=r.total_steps, initial=state.step, desc="Training", unit="step",
                             disable=not accelerator.is_main_process, clock=clock,
                             evaluations_left=lambda step: timing.evaluations_left(step, r.total_steps,
                                                                                   cfg.train.eval_steps)
                             if r.task.evaluates else 0)
    meter = _Meter(accelerator.device)
    if state.interval:
        meter.carry(state.interval, accelerator.is_main_process, state.processes, world)
        state.interval = None
    last_eval = None  # (metrics, predictions) of the latest evaluation
    r.model.train()
    with _StopOnSignal(accelerator.is_main_process) as stopper, _failures_logged(r.log, bar), _StopVote(world) as vote:
        while state.step < r.total_steps:
            epoch, batches, shares, counts = next(steps)
            loss, stepped = _train_step(r.model, r.optimizer, r.scaler, batches, accelerator, r.precision, cfg.train,
                                        r.adversary, r.forward, shares)
            lr = r.optimizer.param_groups[0]["lr"]  # the step's: the schedule moves on after it
            if stepped:  # fp16 skips the step (and so the schedule) when gradients overflowed
                r.scheduler.step()
                if r.ema is not None:
                    r.ema.update()
            _advance(state, epoch, world * cfg.train.grad_accum)
            meter.add(loss, counts, stepped)
            r.head_warmup.after_step(state, counts)
            clock.step_done()
            bar.update(1)

            # after a step: log, evaluate, save, stop; the device is waited for only at these steps
            at_eval = r.task.evaluates and _every(state.step, cfg.train.eval_steps)
            at_save = _every(state.step, cfg.train.save_steps)
            signalled, out_of_time = vote.after_step(stopper, clock.out_of_time(at_eval, at_save))
            last = state.step == r.total_steps or out_of_time  # the budget's last step ends the run as the last does
            evaluate = at_eval or (r.task.evaluates and last)
            save = last or at_save
            if not (evaluate or save or signalled or last or _every(state.step, cfg.train.log_steps)):
                continue
            values, signalled = meter.sync(stopper, accelerator, state, r.run_dir)  # raises on every rank after a NaN
            pause_start = time.perf_counter()  # after the sync: waiting there for the device is training time
            interval = values.pop("interval")
            if signalled and not (evaluate or save or last or _every(state.step, cfg.train.log_steps)):
                state.interval = interval  # no log line for part of an interval: the resumed run completes it
                _save(r.run_dir, accelerator, r.model, r.stateful, r.tokenizer, cfg, state, r.ema)
                _interrupted(r, stopper, bar)
            state.samples += values.pop("features")
            state.tokens += values.pop("tokens")
            state.token_pairs += values.pop("token_pairs")
            bar.set_postfix(loss=f"{values['loss'] or math.nan:.3f}", lr=f"{lr:.2e}")
            r.log.metrics(state.step, {**values, "lr": lr, "epoch": epoch, "compute": _compute(r)})
            stop = False
            if evaluate:
                bar.set_description_str("Evaluating", refresh=True)  # the bar would sit still for the whole dev set
                with clock.evaluating():
                    last_eval = _evaluate(r)
                bar.set_description_str("Training", refresh=False)
                stop = _track(last_eval[0], cfg, state, r.log)
                signalled = signalled or (stopper.signal_name is not None and world == 1)  # Ctrl-C while evaluating
            if save or stop or signalled or state.best_step == state.step:
                with clock.saving():
                    _save(r.run_dir, accelerator, r.model, r.stateful, r.tokenizer, cfg, state, r.ema)
            meter.pause(time.perf_counter() - pause_start)
            bar.unpause()  # evaluating and saving are not in the bar's rate: its time left adds the evaluations
            if signalled:
                _interrupted(r, stopper, bar)
            if out_of_time:
                r.log.info(f"stopped at the time budget ({cfg.train.max_time}) after step {state.step} of "
                           f"{r.total_steps} (a resume gets the budget anew): {_resume_hint(r)}")
                break
            if stop:
                r.log.info(f"early stopping: {_evaluations(cfg.train.patience)} without improvement of "
                           f"{cfg.train.metric_for_best}")
                break
    bar.close()
    if r.task.evaluates and last_eval is None:  # resumed at the last step: nothing evaluated yet
        last_eval = _evaluate(r)
    return _finish(r.run_dir, r.task, r.model, r.ema, last_eval, accelerator, state, r.log, cfg.train)


@contextlib.contextmanager
def _failures_logged(log: RunLog, bar):
    """A run that fails (a NaN, a full disk) says why in train.log too, on a line of its own, not glued to the bar."""
    try:
        yield
    except (TrainingError, CheckpointError) as err:
        bar.close()
        log.info(f"Error: {err}", shown=False)  # the command prints it
        raise


def _interrupted(r: _Run, stopper, bar) -> None:
    bar.close()  # the message on a line of its own, not glued to the bar
    if r.accelerator.is_main_process:  # a run requeued many times shows its curves so far
        plot_curves(r.run_dir / "metrics.jsonl", r.run_dir / "curves.png")
    message = (f"stopped by {stopper.signal_name or 'a signal to another process'} at step {r.state.step}; the "
               f"checkpoint is saved: {_resume_hint(r)}")
    r.log.info(message, shown=False)  # the command prints it as its error
    raise TrainingInterrupted(message, stopper.signal_number)


def _resume_hint(r: _Run) -> str:
    """How to continue: under mrc compare or kfold, that command again (it resumes the run with the run's own
    settings and, for a fold, its held-out questions); else the task's command with --resume auto and its
    run-directory flag (the run's config.yaml gives the rest)."""
    by = os.environ.get(RUN_BY)
    if by:
        return f"run the same mrc {by} command again, which resumes it"
    hint = f"continue with mrc {r.task.command} --resume auto {r.task.run_dir_flag} {r.run_dir}"
    world = r.accelerator.num_processes
    return hint + (f", under your launcher (torchrun, accelerate launch) as before: {world} processes, or another "
                   "number" if world > 1 else "")


def _evaluate(r: _Run) -> tuple[dict, object]:
    """The task's evaluation of the weights to keep (EMA's shadow where on), with the training compute spent to reach
    them (so metrics.json holds the run's); the model back in training mode."""
    with _shadow(r.ema):
        metrics, predictions = r.task.evaluate(r.accelerator.unwrap_model(r.model), r.cfg, r.accelerator, r.precision)
    r.model.train()
    # the step: the run's metrics.json and final line are the last evaluation's, which need not be the best one's
    return {**metrics, "step": r.state.step, "compute": _compute(r)}, predictions


def _compute(r: _Run) -> dict:
    """Feature passes and model FLOPs of the steps done so far, all processes together (mrc_cli.compute)."""
    s = r.state
    return training_compute(r.accelerator.unwrap_model(r.model).config, r.cfg.train, s.samples, s.tokens, s.token_pairs,
                            s.head_only)


def _train_step(model, optimizer, scaler: LossScaler, batches: list[dict], accelerator, precision: str,
                train_cfg: TrainConfig, adversary: Adversary | None, forward=None,
                shares: Sequence[float] | None = None) -> tuple[torch.Tensor, bool]:
    """One optimizer step over this process's micro-batches: forward and backward of each (gradients are synced
    across processes on the last one only; R-Drop in the loss, adversarial training as a second backward),
    clipping, the step. `forward`: the model's compiled forward (train.cuda_graphs), else the model. `shares`: the
    weight of each micro-batch's mean loss (_step_stream's; default equal). Returns the step's mean loss (still on
    the device) and whether the step was taken."""
    forward = model if forward is None else forward
    shares = shares or [1 / len(batches)] * len(batches)
    total = torch.zeros((), device=accelerator.device)
    for i, batch in enumerate(batches):
        def loss_fn(batch=batch, share=shares[i]) -> torch.Tensor:
            with autocast(accelerator.device, precision):
                loss = rdrop_loss(forward, batch, train_cfg.rdrop_alpha) if train_cfg.rdrop_alpha else forward(**batch).loss
            return loss * share

        sync = accelerator.no_sync(model) if i < len(batches) - 1 else contextlib.nullcontext()
        if adversary is None:
            with sync:
                loss = loss_fn()
                scaler.backward(loss)
        else:
            loss = adversary.backward(loss_fn, scaler.backward, lambda: accelerator.no_sync(model), sync,
                                      batch.get("packing"))
        total += loss.detach()
    if train_cfg.max_grad_norm > 0:
        scaler.unscale_(optimizer)
        accelerator.clip_grad_norm_(model.parameters(), train_cfg.max_grad_norm)
    stepped = scaler.step(optimizer)
    optimizer.zero_grad(set_to_none=True)
    return total, stepped


def _compiled(model, train_cfg: TrainConfig, device: torch.device, log: RunLog, dynamic: bool):
    """The training forward of train.cuda_graphs on: torch.compile with mode="reduce-overhead" (CUDA graphs trees on
    CUDA); None (the eager model) otherwise. `dynamic`: shapes vary from step to step (feature batches, whose widths
    do), and a graph is recorded for each new shape; packed rows of fixed shapes are compiled once, for the one
    shape. Evaluation stays eager. The first steps pay the compilation and the recording of the graphs."""
    if train_cfg.cuda_graphs != "on":
        return None
    if device.type != "cuda":
        log.info("train.cuda_graphs on: CUDA graphs need a CUDA device; the step is compiled without them, which "
                 "takes minutes on a CPU and makes its steps no faster (measured): for testing the compiled step only")
    return torch.compile(model, mode="reduce-overhead", dynamic=dynamic)


def _advance(state: TrainerState, epoch: int, group: int) -> None:
    """Count one optimizer step of `group` micro-batches in `epoch` (the position a resumed run starts from)."""
    if epoch != state.epoch:
        state.epoch, state.epoch_segments = epoch, []
    if not state.epoch_segments or state.epoch_segments[-1][0] != group or len(state.epoch_segments[-1]) > 2:
        state.epoch_segments.append([group, 0])  # another group, or the first steps at another batch size
    state.epoch_segments[-1][1] += 1
    state.step += 1


def _step_stream(task: Task, store: FeatureTensors, cfg: RunConfig, state: TrainerState, accelerator: Accelerator):
    """(epoch, this process's micro-batches, their shares, (features, real tokens, computed tokens, squared feature
    lengths summed)) of every optimizer step from the resumed position on, epoch after epoch; `task` makes each
    micro-batch's inputs. Micro-batch a of an optimizer step goes to rank r as piece a * world + r, so the pieces that
    ranks run side by side are neighbours in length. A micro-batch's loss is the mean over its terms (features;
    pre-training: predicted tokens); its share, terms x world / the step's terms on all ranks, makes the step's
    gradient (averaged over ranks by DDP) that of the mean over all the step's terms, also where packed rows hold
    different numbers of features, so any process count and grad_accum train alike."""
    rank, world, accum = accelerator.process_index, accelerator.num_processes, cfg.train.grad_accum
    lengths = store.lengths.tolist()
    t = cfg.train
    for epoch in itertools.count(state.epoch):
        segments = state.epoch_segments if epoch == state.epoch else []
        plan = remaining_steps(lengths, t.batch_size, world * accum, t.seed, epoch, t.group_by_length, segments,
                               store.tokens_per_batch)
        mine = [[step[a * world + rank] for a in range(accum)] for step in plan]
        # one copy to the device per epoch; a micro-batch's rows are a slice of it
        rows = torch.tensor([f for step in mine for batch in step for f in batch], device=accelerator.device)
        at = 0
        for whole, step in zip(plan, mine):
            terms = [task.loss_terms(index, epoch) for index in whole]  # (world x accum,) every rank's micro-batches
            shares = [terms[a * world + rank] * world / max(1, sum(terms)) for a in range(accum)]
            batches = []
            for index in step:
                batches.append(task.batch(store, index, rows[at:at + len(index)], epoch))
                at += len(index)
            real = [lengths[i] for b in step for i in b]
            counts = [len(real), sum(real), sum(batch["input_ids"].numel() for batch in batches),
                      sum(n * n for n in real)]
            yield epoch, batches, shares, counts


def _first_plan(store: FeatureTensors, cfg: RunConfig, state: TrainerState) -> list[list[list[int]]]:
    """The plan of epoch 0 as the run started (its group and batch size): its length sets the schedule's."""
    t = cfg.train
    return epoch_plan(store.lengths.tolist(), state.plan_batch_size or t.batch_size, state.plan_group, t.seed, 0,
                      t.group_by_length, tokens_per_batch=store.tokens_per_batch)


def _steps_of_epochs(store: FeatureTensors, cfg: RunConfig, state: TrainerState, first: int) -> int:
    """The optimizer steps of train.epochs, the first epoch's plan `first` long: packed rows hold other features each
    epoch, so each epoch's plan is counted (2 epochs ended 1 step into a third, or short of the second's end,
    where the first's length was taken for all); feature batches make every epoch's plan as long as the first's."""
    t = cfg.train
    whole = math.ceil(t.epochs)
    lengths = [first] + [len(epoch_plan(store.lengths.tolist(), t.batch_size, state.plan_group, t.seed, epoch,
                                        t.group_by_length, tokens_per_batch=store.tokens_per_batch))
                         if store.tokens_per_batch else first for epoch in range(1, whole)]
    return sum(lengths[:-1]) + math.ceil((t.epochs - (whole - 1)) * lengths[-1])


def _why_unpacked(train_cfg: TrainConfig, config, device: torch.device, precision: str,
                  task_packs: bool = True) -> str | None:
    """Why this run trains on feature batches whatever train.tokens_per_batch says, or None. Where the run cannot use
    packed rows (mrc_cli.attention.packing_refusal) a number is refused here, before the data is read; where they would
    not run on varlen attention (mrc_cli.attention.varlen_missing) auto gives feature batches and a number is taken."""
    refusal = packing_refusal(config, task_packs)
    if refusal and train_cfg.tokens_per_batch not in ("auto", 0):
        raise ConfigError(f"train.tokens_per_batch {train_cfg.tokens_per_batch}: {refusal}; set it to 0 or auto (a "
                          "run saved with this number cannot resume: train anew, or from its checkpoint with "
                          "--init-from)")
    slow = varlen_missing(device, precision, attention_dropout_of(config))
    return refusal or (slow if train_cfg.tokens_per_batch == "auto" else None)


def _token_budget(train_cfg: TrainConfig, unpacked: str | None, lengths: list[int], device,
                  note=lambda line: None) -> int:
    """train.tokens_per_batch for this run (mrc_cli.batching.token_budget); 0 (feature batches) where `unpacked`
    (from _why_unpacked) says why, which auto on CUDA notes."""
    if unpacked:
        if train_cfg.tokens_per_batch == "auto":
            note(f"train.tokens_per_batch auto: feature batches, as {unpacked}")
        return 0
    budget = token_budget(train_cfg.tokens_per_batch, train_cfg.batch_size, lengths, device)
    mean = sum(lengths) / max(1, len(lengths))
    if budget > 8 * train_cfg.batch_size * mean:  # an extra zero typed: memory for all of it, few steps an epoch
        note(f"warning: train.tokens_per_batch {budget} holds about {budget / mean:.0f} features a row, "
             f"{budget / (train_cfg.batch_size * mean):.0f}x what batch_size {train_cfg.batch_size} gives, in one "
             f"forward pass; {train_cfg.batch_size} x the mean length is {int(train_cfg.batch_size * mean)}")
    return budget


def check_packing(cfg: RunConfig, task_packs: bool = True) -> tuple[str | None, torch.device]:
    """For --dry-run: _why_unpacked on the device this machine would train on (a number refused where the real run
    refuses it), and that device."""
    t = cfg.train
    device = torch.device("cuda" if torch.cuda.is_available() and not t.cpu else "cpu")
    config = encoder_config(cfg.model.name_or_path, cfg.model.dropout, cfg.model.attention_dropout,
                            cfg.data.max_seq_length)
    return _why_unpacked(t, config, device, resolve_precision(t.precision, device), task_packs), device


def describe_batches(cfg: RunConfig) -> str:
    """The batches `mrc train` would make of cfg.data.train_file on this machine, for --dry-run: features per optimizer
    step and steps per epoch. The file is featurized (into the feature cache, which training then reads)."""
    t = cfg.train
    if not cfg.data.train_file:
        return "no training file: pass --train FILE to see the batches"
    unpacked, device = check_packing(cfg)
    lengths = feature_lengths(featurize_file(cfg.data.train_file, load_tokenizer(cfg.model.tokenizer or cfg.model.name_or_path),
                                             cfg.data, "train").features)
    group = int(os.environ.get("WORLD_SIZE", "1")) * t.grad_accum
    notes = []
    budget = _token_budget(t, unpacked, lengths, device, notes.append)
    plan = epoch_plan(lengths, t.batch_size, group, t.seed, 0, t.group_by_length, tokens_per_batch=budget)
    steps, planned = len(plan), sum(len(batch) for step in plan for batch in step)
    kind = f"rows of {budget} tokens" if budget else f"{t.batch_size} features padded to the longest"
    kind += "".join(f" ({note})" for note in notes)
    return (f"{len(lengths)} training features on {device.type}: micro-batches of {kind}; {planned / max(1, steps):.1f} "
            f"features per optimizer step on average, {steps} steps per epoch{_left_over(plan, len(lengths), group)}")


def _left_over(plan: list[list[list[int]]], features: int, group: int) -> str:
    """What an epoch's plan leaves out, said where it does: the features of a last step short of its micro-batches."""
    planned = sum(len(batch) for step in plan for batch in step)
    return (f" ({features - planned} left over each epoch: fewer than a step's {group} micro-batches)"
            if planned < features else "")


class _Meter:
    """Loss and throughput of the steps since the last sync point: the loss stays on the device, counts on the host.
    Rates are since the start of this process's training; the loss and the share of real tokens are the interval's."""

    def __init__(self, device: torch.device):
        self.device = device
        self.loss = torch.zeros((), device=device)  # summed over the steps taken
        # counts: features, real and computed tokens, squared feature lengths (this process)
        self.steps, self.skipped, self.counts = 0, 0, [0, 0, 0, 0]
        self.totals = [0.0, 0.0, 0.0]  # all processes, since the start
        self.carried = [0, 0, 0]  # of those, what a stopped run trained (carry)
        self.started, self.paused = time.perf_counter(), 0.0  # paused: seconds spent evaluating and saving

    def add(self, loss: torch.Tensor, counts: list[int], stepped: bool) -> None:
        """A step's loss and counts; an fp16 step skipped for overflowed values is counted, its loss is not."""
        if stepped:
            self.loss += loss
        self.steps, self.skipped = self.steps + 1, self.skipped + (not stepped)
        self.counts = [a + b for a, b in zip(self.counts, counts)]

    def pause(self, seconds: float) -> None:
        self.paused += seconds

    def carry(self, interval: list, main: bool, processes_then: int, processes_now: int) -> None:
        """Start from an interval a stopped run left unlogged (TrainerState.interval): its steps on every process,
        its sums (those of all processes) on the main one, so the next all-reduce counts them once. Its loss sum is
        that of `processes_then` processes per step, the interval's mean divides by `processes_now`: scaled."""
        loss, *counts, self.steps, self.skipped = interval
        if main:
            self.loss += loss * processes_now / processes_then
            self.counts = [int(count) for count in counts]
            self.carried = self.counts[:3]  # trained by the stopped process: not in this one's rates

    def sync(self, stopper, accelerator, state: TrainerState, run_dir: Path) -> tuple[dict, bool]:
        """One all-reduce of loss, counts and stop flags; the one wait for the device. A NaN loss on any process
        is in the sum, so every process raises together instead of the others hanging in the next collective."""
        local = torch.cat([self.loss.double().reshape(1), torch.tensor(
            [*self.counts, stopper.signal_name is not None], dtype=torch.float64, device=self.device)])
        total = accelerator.reduce(local, "sum") if accelerator.num_processes > 1 else local
        loss, features, real, computed, pairs, stops = total.tolist()
        if not math.isfinite(loss):
            when = f"at step {state.step}" if self.steps == 1 else f"in steps {state.step - self.steps + 1}-{state.step}"
            saved = (f"the checkpoints in {run_dir / CHECKPOINTS} are from before" if latest_checkpoint(run_dir)
                     else "no checkpoint was written before it")
            raise TrainingError(f"the training loss became {loss} {when}; nothing from there on was saved, {saved}. "
                                "Try a lower --lr or --set train.max_grad_norm=1.0")
        self.totals = [a + b - c for a, b, c in zip(self.totals, (features, real, computed), self.carried)]
        self.carried = [0, 0, 0]
        elapsed = time.perf_counter() - self.started - self.paused
        taken = self.steps - self.skipped
        values = {"interval": [loss, features, real, computed, pairs, self.steps, self.skipped],
                  "loss": loss / (taken * accelerator.num_processes) if taken else None, "features": int(features),
                  "tokens": int(real), "token_pairs": int(pairs),
                  "features_per_s": self.totals[0] / elapsed, "tokens_per_s": self.totals[1] / elapsed,
                  "computed_tokens_per_s": self.totals[2] / elapsed, "real_token_share": real / computed}
        if self.skipped:
            values["skipped_steps"] = self.skipped
        self.loss.zero_()
        self.steps, self.skipped, self.counts = 0, 0, [0, 0, 0, 0]
        return values, stops > 0


def _every(step: int, interval: int) -> bool:
    return bool(interval) and step % interval == 0


class _StopVote:
    """Whether the processes stop after this step, for a signal and for train.max_time (each process measures its own
    time): one process as soon as it has a reason; several at the step after any of them has one (launchers kill
    their workers soon after the signal: a log step may come too late), so all stop at the same step. Each step
    all-reduces its flags on the host (gloo), waited for one step later: no wait for the device, little for the host."""

    def __init__(self, world: int):
        self.world, self.flag, self.pending = world, None, None

    def __enter__(self):
        if self.world > 1:  # a host-side group beside NCCL's (on CPU: another gloo one)
            self.group = torch.distributed.new_group(backend="gloo")
        return self

    def after_step(self, stopper, out_of_time: bool = False) -> tuple[bool, bool]:
        """(signalled, out of time) as the processes agree: any process's reason stops them all."""
        wishes = (stopper.signal_name is not None, out_of_time)
        if self.world == 1:
            return wishes
        agreed = (False, False)
        if self.pending is not None:
            self.pending.wait()
            agreed = tuple(bool(flag) for flag in self.flag.tolist())
        self.flag = torch.tensor([int(wish) for wish in wishes])
        self.pending = torch.distributed.all_reduce(self.flag, group=self.group, async_op=True)
        return agreed

    def __exit__(self, *exc):
        if self.pending is not None and exc[0] is None:  # every process issued the same votes: the last one ends
            self.pending.wait()


class _StopOnSignal:
    """SIGINT/SIGTERM ask the loop to save a checkpoint and stop: one process after the current step, several
    together a step later (_StopVote); a second SIGINT kills."""

    def __init__(self, shown: bool = True):
        self.signal_name = None
        self.signal_number = None
        self.shown = shown  # the note: by the main process only, each process gets the launcher's signal
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): no graceful stop there
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name, self.signal_number = signal.Signals(signum).name, signum
        if self.shown:
            again = " (Ctrl-C again to abort)" if signum == signal.SIGINT else ""
            tqdm.write(f"{self.signal_name} received: saving a checkpoint and stopping{again}")

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _resume_checkpoint(cfg: RunConfig, run_dir: Path, run_dir_flag: str) -> Path | None:
    existing = latest_checkpoint(run_dir)
    if cfg.train.resume is None:
        if existing is not None:
            raise ConfigError(f"{run_dir} holds another run (checkpoints up to {existing.name}); pass --resume auto to "
                              f"continue it, or choose another {run_dir_flag}")
        return None
    if cfg.train.resume == "auto":
        return existing  # None: nothing to resume, a fresh start
    path = Path(cfg.train.resume)
    if not path.is_dir():
        raise ConfigError(f"--resume {path}: no such checkpoint folder; --resume auto continues the newest checkpoint "
                          f"of {run_dir_flag}")
    if not (path / "trainer_state.json").is_file():
        newest = latest_checkpoint(path)
        raise ConfigError(f"--resume {path}: " + (
            f"a run directory: --resume auto {run_dir_flag} {path} continues its newest checkpoint ({newest.name})"
            if newest is not None else "not a complete checkpoint folder (no trainer_state.json)"))
    if existing is not None and run_dir_of(path.resolve()) != run_dir.resolve():
        raise ConfigError(f"{run_dir} holds another run (checkpoints up to {existing.name}): resuming {path} there "
                          f"would mix the two; choose another {run_dir_flag}")
    step = read_trainer_state(path)["step"]
    later = [folder.name for at, folder in complete_checkpoints(run_dir / CHECKPOINTS) if at > step]
    if later:  # --resume auto would one day continue the timeline this branch leaves
        raise ConfigError(f"--resume {path}: {run_dir} holds later checkpoints of the run ({', '.join(later)}), "
                          f"which --resume auto would go on from instead of this branch; branch into another "
                          f"{run_dir_flag}, or delete them")
    return path


def _evaluations(count: int) -> str:
    return f"{count} evaluation{'' if count == 1 else 's'}"


def resolve_run(cfg: RunConfig, will_evaluate: Callable[[RunConfig], bool], run_dir_flag: str = "--output-dir",
                existed: bool | None = None) -> tuple[RunConfig, Path | None, list[str]]:
    """The config a run will use, the checkpoint it resumes from (None: a fresh start) and, where it resumes, the
    notes on what differs from the checkpoint's config, which is used (or that --resume auto found nothing to resume);
    refused where the run directory holds another run, or a finished one, or where early stopping has no evaluations
    to stop on (`will_evaluate`: whether the run evaluates with a config; what `--dry-run` shows too). `run_dir_flag`:
    the command's flag for the run directory, for the messages; `existed`: whether the run directory was there before
    the run's lock made it (None: look now)."""
    run_dir = Path(cfg.train.output_dir)
    resume_from = _resume_checkpoint(cfg, run_dir, run_dir_flag)
    if resume_from is None or latest_checkpoint(run_dir) is None:  # a new run, or a branch into a new folder
        _refuse_other_files(run_dir, run_dir_flag)
    if resume_from is not None:
        resumed, notes = _config_for_resume(cfg, resume_from)
        _refuse_finished(run_dir, resumed.train, _trainer_state(resume_from))
        _refuse_other_data(resumed, resume_from)
    else:  # a typo in the folder's name would otherwise restart training without a word
        resumed = cfg
        notes = ([f"--resume auto: there is no {run_dir} to resume, so a new run starts there"]
                 if cfg.train.resume == "auto" and not (run_dir.exists() if existed is None else existed) else [])
    check_dropout_settings(resumed)  # before the data is read, as the dry run does
    if resumed.train.init_from and resume_from is None:  # a missing or unreadable one, likewise
        source = Path(resumed.train.init_from)
        load_state_dict_file(source) if source.is_file() else resolve_checkpoint(source)
    evaluates = will_evaluate(resumed)
    if resumed.train.eval_steps and not evaluates and not resumed.data.dev_file:  # (mrc pretrain evaluates nothing)
        notes.append(f"train.eval_steps {resumed.train.eval_steps}: no dev set (--dev), so nothing is evaluated")
    check_patience(resumed.train, evaluates)
    return resumed, resume_from, notes


def check_patience(train: TrainConfig, evaluates: bool) -> None:
    """Early stopping with no evaluations during the run could never stop anything."""
    if train.patience and not (evaluates and train.eval_steps):
        raise ConfigError(f"train.patience {train.patience} needs evaluations during the run: "
                          + ("set train.eval_steps" if evaluates else "give a dev set (--dev; mrc pretrain has none)"))


RUN_MARKS = ("run_info.json", "train.log", "metrics.jsonl", "checkpoints", PLAN_RECORD)  # written by runs only


def _refuse_other_files(run_dir: Path, run_dir_flag: str) -> None:
    """A folder of other files (a model folder, a user's own config.yaml) is not a run directory: a run writes its
    config.yaml, and mrc pretrain its config.json, weights and tokenizer, over theirs."""
    if os.environ.get(RUN_BY):  # a folder mrc compare, kfold or a benchmark prepared for this run
        return
    refuse_other_files(run_dir, run_dir_flag, lambda entry: entry.name in RUN_MARKS, "run", ignored=LOCK_FILE)


def _refuse_finished(run_dir: Path, train: TrainConfig, state: TrainerState) -> None:
    """A run that ran out of patience is finished, whether that stopped it early or came at its last evaluation:
    resumed (a requeue script, or made longer), it would evaluate once more, stop again and so grow by eval_steps on
    every call. A larger train.patience trains on. One past a smaller train.max_steps would do nothing and record
    that length."""
    if train.max_steps and train.max_steps < state.step:
        raise ConfigError(f"{run_dir} is at step {state.step}, past --max-steps {train.max_steps}: nothing to train; "
                          f"give a --max-steps above {state.step} to train on (the run's checkpoints hold the earlier "
                          "steps' weights)")
    if train.patience and state.evals_without_improvement >= train.patience:
        raise ConfigError(f"{run_dir} ran out of patience at step {state.step} "
                          f"({_evaluations(state.evals_without_improvement)} without improvement, train.patience "
                          f"{train.patience}): the run is finished; to train on, "
                          "resume with a larger --set train.patience (0: no early stopping)")


def resumed_run_info(cfg: RunConfig) -> dict:
    """run_info.json of the run cfg resumes (train.resume auto: its run directory's; a checkpoint: its run's), as
    written when it last started; {} where there is none."""
    resume = cfg.train.resume
    return _run_info_of(Path(cfg.train.output_dir) if resume in (None, "auto") else Path(resume))


def _run_info_of(path: Path) -> dict:
    """run_info.json of a run directory, or of a checkpoint's run (through a link too); {} where there is none."""
    info = run_dir_of(path.resolve()) / "run_info.json"
    return json.loads(info.read_text(encoding="utf-8")) if info.is_file() else {}


def _refuse_other_data(cfg: RunConfig, checkpoint: Path) -> None:
    """Resuming on other training data would go on through another data set with the first one's batch plan and
    schedule, and no record would show it (a resume writes the data's fingerprints into run_info.json anew). Checked
    against the run_info.json of the checkpoint's run, before anything is loaded or logged."""
    then = _run_info_of(checkpoint)
    now = {"train_file_sha256": file_sha256(cfg.data.train_file),
           **{file: file_sha256(file) for file in [*cfg.pretrain.data_files, *cfg.pretrain.text_files]}}
    then = {"train_file_sha256": then.get("train_file_sha256"), **then.get("files_sha256", {})}
    # a file not found (moved, or a relative path from another folder) is the data loader's to report, as such
    changed = [key for key, value in now.items() if None not in (value, then.get(key)) and value != then[key]]
    if changed:
        what = "the training file" if changed[0] == "train_file_sha256" else changed[0]
        pretraining = bool(cfg.pretrain.data_files or cfg.pretrain.text_files)
        new_run = (f"start anew: {pretraining_checkpoint_advice(checkpoint)}" if pretraining else
                   f"start a new run from the checkpoint's weights (--init-from {checkpoint} and another output folder)")
        raise ConfigError(f"{run_dir_of(checkpoint.resolve())}: {what} is not what the run trained on (SHA-256 {then[changed[0]]} "
                          f"then, {now[changed[0]]} now); restore it to resume, or {new_run}")


def _accelerator(cpu: bool, report_to: str, run_dir: Path) -> Accelerator:
    """One Accelerator per run, without mixed precision (mrc_cli.precision owns autocast) and with the trackers of
    train.report_to; on a machine without a GPU, processes started by torchrun/accelerate meet over gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        # accelerate keeps one state per Python process; a second run with other settings (a notebook) needs a new one
        AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(mixed_precision="no", cpu=cpu or not torch.cuda.is_available(),
                              log_with=tracking.tracker_names(report_to), project_dir=run_dir / "trackers")
    if accelerator.num_processes != world:
        raise ConfigError(f"{world} processes were launched but accelerate set up {accelerator.num_processes}; "
                          "on CPU launch with `accelerate launch --multi_gpu --num_processes N` or torchrun")
    return accelerator


def _flat_config(cfg: RunConfig) -> dict:
    """The run config as the flat scalars trackers accept ("train.lr": 1e-4); None as "none", a list as "a,b"."""
    def scalar(value):
        return "none" if value is None else ",".join(value) if isinstance(value, list) else value

    return {f"{section}.{key}": scalar(value) for section, values in config_to_dict(cfg).items() for key, value in values.items()}


def _config_for_resume(cfg: RunConfig, checkpoint: Path) -> tuple[RunConfig, list[str]]:
    """The checkpoint's config, except the keys that only say how long and how often; each difference is noted, but
    for settings the run resolved when it started (an `auto`, the null rule its data turned on) and --resume itself."""
    saved = read_checkpoint_config(checkpoint)
    now, then = config_to_dict(cfg), config_to_dict(saved)
    notes = []
    for section, values in now.items():
        for key, value in values.items():
            if value == then[section][key] or (section, key) == BATCH_SIZE:
                continue
            keep_new = section == "train" and key in RESUME_OVERRIDABLE or (section, key) == ("train", "output_dir")
            if not (value == "auto" or (section, key) in RESOLVED_AT_START):  # else what the run resolved it to
                notes.append(f"resume: {section}.{key} is {then[section][key]!r} in the checkpoint and {value!r} now; "
                             f"using {'the new value' if keep_new else 'the checkpoint'}")
            if keep_new:
                setattr(getattr(saved, section), key, value)
    if saved.train.max_steps and saved.train.epochs != then["train"]["epochs"]:  # a new epochs that changes nothing
        notes.append(f"resume: train.max_steps {saved.train.max_steps} sets the run's length, not train.epochs; "
                     "--max-steps 0 makes it train.epochs long")
    return saved, notes


def _trainer_state(checkpoint: Path) -> TrainerState:
    saved = read_trainer_state(checkpoint)
    unknown = sorted(set(saved) - {f.name for f in fields(TrainerState)})
    if unknown:  # e.g. batch_in_epoch: a per-process position, before positions were kept per optimizer step
        raise CheckpointError(f"{checkpoint}: written by an older mrc-cli (trainer_state.json has {', '.join(unknown)}); "
                              f"it cannot be resumed, but its weights can start a new run: {new_run_advice(checkpoint)}")
    return TrainerState(**saved)


def resumed_batch_notes(cfg: RunConfig, checkpoint: Path, asked_batch_size: int) -> list[str]:
    """For --dry-run of a resume: _keep_effective_batch for the process count this launch has (WORLD_SIZE, read
    without joining a process group), so that the batches described are the ones the resumed run makes."""
    return _keep_effective_batch(cfg, _trainer_state(checkpoint), int(os.environ.get("WORLD_SIZE", "1")),
                                 asked_batch_size)


def _keep_effective_batch(cfg: RunConfig, state: TrainerState, world: int, asked_batch_size: int) -> list[str]:
    """On resume with another process count, keep processes x grad_accum x batch_size (the effective batch and the
    batch plan): by grad_accum where the new count divides processes x grad_accum, else by a smaller train.batch_size
    per process; then the run goes on exactly. A train.batch_size given anew (`asked_batch_size`) is taken where it
    keeps the effective batch on the new count. Otherwise say what changes. A packed row is a micro-batch whatever
    train.batch_size, so a packed run keeps its batch by grad_accum alone."""
    t = cfg.train
    group, packed = state.processes * t.grad_accum, _is_packed(t)
    asked_accum = (_grad_accum_keeping(t.batch_size * group, world, asked_batch_size)
             if asked_batch_size != t.batch_size and world != state.processes and not packed else None)
    why = ("a packed row is one micro-batch whatever train.batch_size" if packed else "a new one is taken where it "
           f"keeps the effective batch of {_effective_batch(t, group)} on another process count")
    notes = [] if asked_batch_size == t.batch_size or asked_accum else [
        f"resume: train.batch_size is {t.batch_size} in the checkpoint and {asked_batch_size} now; using the "
        f"checkpoint ({why})"]
    if world == state.processes:
        return notes
    if asked_accum:
        return notes + _change_batch_size(cfg, state, world, asked_batch_size, asked_accum, "as given")
    if group % world == 0:
        old, t.grad_accum = t.grad_accum, group // world
        return notes + [f"resume: {world} process(es) instead of {state.processes}: train.grad_accum {old} -> "
                        f"{t.grad_accum} keeps the effective batch of {_effective_batch(t, group)} and the batch "
                        "plan, so the same features make each step; dropout noise and the order of float sums differ"]
    smaller = None if packed else _smaller_batch_size(t.batch_size * group, world, t.batch_size)
    if smaller:
        return notes + _change_batch_size(cfg, state, world, *smaller, f"{world} does not divide {group} = processes "
                                          "x grad_accum")
    return notes + _change_effective_batch(cfg, state, world)


def _grad_accum_keeping(features: int, world: int, batch_size: int) -> int | None:
    """The grad_accum that makes a step of `features` on `world` processes of `batch_size` each, or None."""
    return features // (world * batch_size) if features % (world * batch_size) == 0 else None


def _smaller_batch_size(features: int, world: int, batch_size: int) -> tuple[int, int] | None:
    """(batch_size, grad_accum) that make a step of `features` on `world` processes, the batch size at most
    `batch_size` (it fits in memory as before) and as large as that allows; None where `world` does not divide it."""
    for accum in range(max(1, math.ceil(features / (world * batch_size))), features // world + 1):
        if features % (world * accum) == 0:
            return features // (world * accum), accum
    return None


def _change_batch_size(cfg: RunConfig, state: TrainerState, world: int, batch_size: int, grad_accum: int,
                       why: str) -> list[str]:
    """Micro-batches of `batch_size`, `grad_accum` of them per process, with the effective batch and the batch plan of
    the run: the segments of the epoch so far keep the batch size they were planned with (remaining_steps)."""
    t = cfg.train
    before = _effective_batch(t, state.processes * t.grad_accum)
    state.plan_batch_size = state.plan_batch_size or t.batch_size
    state.epoch_segments = [segment if len(segment) > 2 else [*segment, t.batch_size] for segment in state.epoch_segments]
    (old_size, t.batch_size), (old_accum, t.grad_accum) = (t.batch_size, batch_size), (t.grad_accum, grad_accum)
    accum = f", train.grad_accum {old_accum} -> {grad_accum}" if old_accum != grad_accum else ""
    return [f"resume: {world} process(es) instead of {state.processes}: train.batch_size {old_size} -> {batch_size} "
            f"({why}){accum} keeps the effective batch of {before} and the batch plan, so the same features make "
            "each step; dropout noise and the order of float sums differ"]


def _change_effective_batch(cfg: RunConfig, state: TrainerState, world: int) -> list[str]:
    """The nearest effective batch `world` processes make with the run's batch size, and what that changes."""
    t = cfg.train
    group = state.processes * t.grad_accum
    old, t.grad_accum = t.grad_accum, max(1, round(group / world))  # the nearest effective batch
    accum = f"train.grad_accum {old} -> {t.grad_accum}, " if old != t.grad_accum else ""
    now = t.grad_accum * world
    # a packed row is one micro-batch, whatever train.batch_size
    whole, parts = (group, "processes x grad_accum") if _is_packed(t) else (
        group * t.batch_size, "processes x grad_accum x batch_size")
    return [f"resume: {world} process(es) instead of {state.processes}: {accum}the effective batch changes from "
            f"{_effective_batch(t, group)} to {_effective_batch(t, now)} ({world} does not divide {whole} = {parts}); "
            f"the rest of epoch {state.epoch} is planned again for it (no feature repeated or skipped) and the "
            f"schedule keeps its number of steps, so each step from here trains {now / group:.2f}x the features "
            f"planned (an epochs-long run ends that much later in its data). Resume on a process count that divides "
            f"{whole} to continue exactly"]


def _is_packed(train: TrainConfig) -> bool:
    return isinstance(train.tokens_per_batch, int) and train.tokens_per_batch > 0


def _effective_batch(train: TrainConfig, micro_batches: int) -> str:
    """A step of so many micro-batches in the run's units: features, or packed rows (whose features vary)."""
    if _is_packed(train):
        return f"{micro_batches} row{'s' * (micro_batches > 1)} of {train.tokens_per_batch} tokens"
    return str(train.batch_size * micro_batches)


def _load_split(given: Split | None, source: str | None, use: str, tokenizer, cfg: RunConfig, log: RunLog) -> Split:
    """A split handed in (checked for what `use` needs), else the file `source` read, validated and featurized."""
    if given is not None:
        needed = "start_positions" if use == "train" else "offset_mapping"
        if needed not in given.features.column_names:
            raise ConfigError(f"the {use} split handed to train() has no {needed}: build it with featurize_file(..., "
                              f"use={use!r}) or build_features for that use")
        log.info(f"{use}: {given.summary} (in memory)")
        return given
    if source is None:
        raise ConfigError("no training data: pass --train FILE or set data.train_file in the config")
    split = featurize_file(source, tokenizer, cfg.data, use)
    log.info(split.report.summary())
    log.info(f"{use}: {split.summary}")
    return split


def init_from_weights(model, path: str, log: RunLog) -> list[str]:
    """The weights of a checkpoint that fit the model, in part where the shapes differ: a span model's, or the encoder
    (and QA head) of an `mrc pretrain` checkpoint (`lm.bert.*`), an `mrc export` or other Hugging Face folder
    (`bert.*`, or unprefixed for a bare encoder); into a span model an MLM head stays unused, into `mrc pretrain`'s
    masked LM (`lm.*`) it is loaded. One that fits nothing is refused: the run would train the base model under the
    checkpoint's name. Returns the model's keys the checkpoint did not fill."""
    source = Path(path)
    weights = source if source.is_file() else resolve_checkpoint(source) / "model.safetensors"
    own, prefix = model.state_dict(), model.encoder.base_model_prefix
    # where the Hugging Face encoder sits in the model ("encoder"; "lm.bert" in a masked LM), and the Hugging Face
    # model holding it ("lm." for a masked LM, whose head keys cls.* become lm.cls.*; "" for a span model)
    encoder = next(name for name, module in model.named_modules() if module is model.encoder)
    root = encoder.rpartition(".")[0] + "." if "." in encoder else ""

    def ours(key: str) -> str:  # ours; an mrc pretrain checkpoint's; a Hugging Face QA or masked-LM model's; an encoder's
        names = (key, f"{root}{key}", f"{encoder}.{key.removeprefix(f'lm.{prefix}.')}",
                 f"{encoder}.{key.removeprefix(f'{prefix}.')}", f"{encoder}.{key}")
        return next((name for name in names if name in own), key)

    state = {ours(key): value for key, value in load_state_dict_file(weights).items()}
    missing, unexpected, reshaped = load_weights(model, state, strict=False)
    if set(own) <= set(missing) | set(reshaped):
        raise CheckpointError(f"--init-from {weights}: none of its weights fit this model (model "
                              f"type {model.config.model_type}; the checkpoint holds {describe_keys(sorted(state))}): give "
                              "a checkpoint of this model, or the --model it was trained from")
    log.info(f"--init-from {weights}: missing {describe_keys(missing)}; unexpected {describe_keys(unexpected)}"
             + (f"; shapes differ (left as --model's): {describe_shapes(reshaped, state, model)}" if reshaped else ""))
    if all(key in missing or key in reshaped for key in own if key.startswith(f"{encoder}.")):  # another family's, of the same width
        head, trains = ("MLM head", "pre-trains") if root else ("span head", "fine-tunes")
        log.info(f"warning: no weight of the encoder came from that checkpoint, only the {head}'s: the run "
                 f"{trains} the encoder of --model")
    return missing + reshaped


def _optimizer(model, cfg: RunConfig, world: int, log: RunLog) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (by rank: ALBERT's norms escape a 'LayerNorm' name filter); with
    train.llrd a pair of groups per depth. With train.scale_lr the lr grows with the process count (the linear
    scaling rule for the larger effective batch)."""
    lr = cfg.train.lr * (world if cfg.train.scale_lr else 1)
    groups, decayed, plain = [], 0, 0
    for scale, params in layer_lr_scales(model, cfg.train.llrd):
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups += [{"params": decay, "weight_decay": cfg.train.weight_decay, "lr": lr * scale},
                   {"params": no_decay, "weight_decay": 0.0, "lr": lr * scale}]
        decayed, plain = decayed + sum(p.numel() for p in decay), plain + sum(p.numel() for p in no_decay)
    log.info(f"parameters: {decayed:,} with weight decay, {plain:,} without")
    if cfg.train.llrd != 1:
        log.info(f"layer-wise lr decay {cfg.train.llrd:g}: {len(groups) // 2} depths, lr from "
                 f"{min(g['lr'] for g in groups):.3g} (embeddings) to {lr:g} (head)")
    return torch.optim.AdamW(groups, lr=lr, fused=True)  # one kernel for all tensors, on CPU and GPU


def warmup_steps(fraction: float, total_steps: int) -> int:
    """The lr warm-up's steps for train.warmup's fraction of a run: at least one where it is set (0.1 of 8 steps is
    one, not none)."""
    return max(1, int(fraction * total_steps)) if fraction else 0


def _scheduler(optimizer, warmup: int, total_steps: int):
    """Linear warm-up over `warmup` steps, then linear decay to 0. Ours, not transformers'
    get_linear_schedule_with_warmup: that one gives the first step lr 0 (a wasted step), and the figures in
    docs/benchmarks.md were measured with this one."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _describe_run(cfg: RunConfig, world: int, total_steps: int, warmup: int, precision: str, accelerator, rows: str,
                  lr: float, log: RunLog) -> None:
    """The derived numbers, once at the start; and the learning rate question of a many-process run (`lr`: the
    schedule's peak, a resumed run's as it started)."""
    t = cfg.train
    packed = isinstance(t.tokens_per_batch, int) and t.tokens_per_batch > 0  # train.batch_size plays no part
    per_process = f"a row of {t.tokens_per_batch} tokens" if packed else t.batch_size
    rows_per_step = t.grad_accum * world
    effective = f"{rows_per_step} row{'s' * (rows_per_step > 1)}" if packed else t.batch_size * rows_per_step
    log.info(f"{world} process(es) on {accelerator.device}, {precision_name(precision)}; effective batch {effective} = "
             f"{per_process} per process x {t.grad_accum} accumulation x {world}; {rows}; "
             f"{total_steps} optimizer steps, {warmup} of warm-up")
    if world > 1:
        scaled = round(lr / t.lr)  # a run resumed on another process count keeps its lr with its effective batch
        log.info(f"lr {lr:g} = {t.lr:g} x {scaled} process{'es' * (scaled > 1)} (train.scale_lr"
                 + (", as the run started; it keeps its effective batch)" if scaled != world else ")") if t.scale_lr else
                 f"lr {t.lr:g} is not scaled for the {world}x larger effective batch; --set train.scale_lr=true "
                 f"multiplies it by {world} (the linear scaling rule; often too much for fine-tuning: compare)")


def _track(metrics: dict, cfg: RunConfig, state: TrainerState, log: RunLog) -> bool:
    """Log an evaluation, remember the best step; True when early stopping should end the run."""
    log.metrics(state.step, metrics)
    key = cfg.train.metric_for_best
    value = metrics["dev_loss"] if key == "dev_loss" else headline(metrics)[key]
    better = value is not None and (state.best_metric is None or
                                    (value < state.best_metric if key == "dev_loss" else value > state.best_metric))
    if better:
        state.best_metric, state.best_step, state.evals_without_improvement = value, state.step, 0
    else:
        state.evals_without_improvement += 1
    shown = headline(metrics)
    log.info(f"step {state.step}: dev EM {shown['exact']:.2f} F1 {shown['f1']:.2f} loss {metrics['dev_loss']:.4f}"
             + (" (best so far)" if better else ""))
    return bool(cfg.train.patience) and state.evals_without_improvement >= cfg.train.patience


def _shadow(ema: EMA | None):
    """With train.ema_decay, the model holds its shadow weights inside this block (evaluation, saving)."""
    return ema.applied_to_model() if ema is not None else contextlib.nullcontext()


def _save(run_dir: Path, accelerator, model, stateful: dict, tokenizer, cfg: RunConfig, state: TrainerState,
          ema: EMA | None) -> None:
    rngs = gather_object([rng_state(accelerator.device)])  # one per process
    if accelerator.is_main_process:
        state.processes = accelerator.num_processes
        with _shadow(ema):  # model.safetensors holds the weights to evaluate and export
            training_state = {**{name: part.state_dict() for name, part in stateful.items()}, "rng": rngs}
            path = save_checkpoint(run_dir, accelerator.unwrap_model(model), tokenizer, cfg, asdict(state),
                                   training_state, cfg.train.keep_last)
        if state.best_step == state.step:
            write_best_pointer(run_dir, path, {"step": state.step, cfg.train.metric_for_best: state.best_metric})
    accelerator.wait_for_everyone()


# parts of `stateful` that checkpoints of older versions lack: resumed from one, they start anew
ADDED_STATE = ("wall_clock",)


def _restore(checkpoint: Path, accelerator, model, stateful: dict, state: TrainerState, unit: str,
             log: RunLog) -> None:
    """Weights, every part of `stateful` and this process's RNG states from a checkpoint."""
    training_state = read_training_state(checkpoint)
    load_weights(accelerator.unwrap_model(model), read_weights(checkpoint), strict=True)
    for name, part in stateful.items():
        if name in training_state or name not in ADDED_STATE:
            part.load_state_dict(training_state[name])
        else:
            log.info(f"resume: {checkpoint} has no {name} state (an older mrc-cli's): {name} starts anew here")
    rngs = training_state["rng"]
    if len(rngs) != accelerator.num_processes:
        log.info(f"resume: the checkpoint has RNG states of {len(rngs)} process{'es' * (len(rngs) > 1)}, this run has "
                 f"{accelerator.num_processes}; dropout noise will differ from the original run")
    set_rng_state(rngs[accelerator.process_index % len(rngs)], accelerator.device)
    log.truncate_metrics(state.step)  # lines logged after the checkpoint by the stopped run are logged again
    trained = state.samples + (int(state.interval[1]) if state.interval else 0)  # with a carried interval's
    log.info(f"resumed from {checkpoint} at step {state.step} (epoch {state.epoch}, {trained} {unit} trained on)")


def _finish(run_dir: Path, task: Task, model, ema: EMA | None, last_eval, accelerator, state: TrainerState,
            log: RunLog, train_cfg: TrainConfig) -> TrainResult:
    """The task's files (with EMA: from the shadow weights), the curves, the result."""
    with _shadow(ema):
        metrics = task.finish(run_dir, accelerator.unwrap_model(model), last_eval, state, accelerator.is_main_process)
    if accelerator.is_main_process:
        plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
        if train_cfg.keep_training_state == "last":
            drop_training_states(run_dir, checkpoint_dir(run_dir, state.step))
        if last_eval is not None and state.best_step and state.best_step != state.step:
            # a submission made from RUN/predictions.json would not be the model mrc predict --checkpoint RUN runs
            log.info(f"{run_dir}/predictions.json and metrics.json are of the last step, {state.step}; eval, predict and "
                     f"export of {run_dir} take its best checkpoint, step {state.best_step} ({train_cfg.metric_for_best} "
                     f"{state.best_metric:.4g}): mrc predict --checkpoint {run_dir} writes that one's submission")
        log.info(f"done: {state.step} steps; files in {run_dir}")
    log.close()
    best = checkpoint_dir(run_dir, state.best_step) if state.best_step else None
    best = best if best is not None and best.is_dir() else None  # resumed into a new folder: the best is elsewhere
    # not best_f1: SQuAD v2 metrics hold the null-threshold sweep's best_f1 and best_exact
    scores = ({"best_checkpoint_step": state.best_step, f"best_checkpoint_{train_cfg.metric_for_best}": state.best_metric}
              if best else {})
    return TrainResult(run_dir, state.step, metrics, best, scores)


def _write_run_info(run_dir: Path, tokenizer, precision: str, accelerator, task_info: dict, resumed: bool) -> None:
    """The reproducibility record: the command lines that started and resumed the run, versions, commit, the
    tokenizer's fingerprint, then the task's data record."""
    import accelerate
    import datasets
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    path = run_dir / "run_info.json"
    before = json.loads(path.read_text(encoding="utf-8")).get("commands", []) if resumed and path.is_file() else []
    info = {
        "commands": [*before, command_line(sys.argv, os.environ)], "mrc_cli": __version__, "git_commit": commit,
        "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__, "datasets": datasets.__version__,
        "accelerate": accelerate.__version__, "device": str(accelerator.device), "processes": accelerator.num_processes,
        "precision": precision_name(precision),
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
        **task_info,
    }
    write_text_atomically(path, json.dumps(info, indent=2))  # read again by a resume


def command_line(argv: list[str], env) -> str:
    """The command that started this process, as one could type it again: `mrc ...` for the console script and for
    `python -m mrc_cli` (whose argv[0] is the path of __main__.py); under a launcher (WORLD_SIZE > 1; `env`: the
    environment) its form for the same process count, which the launcher's own flags (a port, a host) are not in.
    accelerate launch marks its processes with ACCELERATE_MIXED_PRECISION; torchrun with no ACCELERATE_ variable."""
    path = Path(argv[0])
    ours = path.name == "mrc" or (path.name == "__main__.py" and path.parent.name == "mrc_cli")
    if not ours:  # train() called from Python: the script's own command line
        return shlex.join(argv)
    world, local = int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", "1")))
    if world == 1:
        return shlex.join(["mrc", *argv[1:]])
    nodes = world // local
    if "ACCELERATE_MIXED_PRECISION" in env:
        launcher = ["accelerate", "launch", "--multi_gpu", *(["--num_machines", str(nodes)] if nodes > 1 else []),
                    "--num_processes", str(world)]
    else:
        launcher = ["torchrun", *(["--nnodes", str(nodes)] if nodes > 1 else []), "--nproc_per_node", str(local)]
    return shlex.join([*launcher, "-m", "mrc_cli", *argv[1:]])


def file_sha256(path: str | None) -> str | None:
    """The first 16 hex digits of a data file's SHA-256; None when there is no such file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if path and Path(path).is_file() else None
