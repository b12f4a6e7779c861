"""The training loop on accelerate: one readable loop, set up by small helpers.

CPU, one GPU or many (`accelerate launch`) run the same code. Each process takes every world-th batch of the
epoch's length-grouped order (a pure function of seed and epoch), so a resumed run regenerates the order and skips
what it has done. A step is one optimizer step (`grad_accum` micro-batches).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import platform
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm

from mrc_cli import __version__
from mrc_cli.batching import Collator, epoch_batches, pad_multiple
from mrc_cli.checkpoint import (latest_checkpoint, read_checkpoint_config, read_trainer_state, read_weights,
                                resolve_checkpoint, rng_state, save_checkpoint, set_rng_state,
                                write_best_pointer)
from mrc_cli.config import RunConfig, check_train_config, config_to_dict, save_config
from mrc_cli.errors import ConfigError, MrcError
from mrc_cli.features import feature_lengths, featurize_file, load_tokenizer, tokenizer_fingerprint
from mrc_cli.inference import evaluate_split, headline, resolve_precision, write_prediction_files
from mrc_cli.model import build_model, describe_keys, load_state_dict_file, load_weights
from mrc_cli.tracking import RunLog, plot_curves

# keys a resumed run takes from the command line; every other setting comes from the checkpoint
RESUME_OVERRIDABLE = {"epochs", "max_steps", "eval_steps", "save_steps", "log_steps", "keep_last", "patience", "resume"}


class TrainingError(MrcError):
    """Training cannot go on (e.g. the loss became NaN)."""


class TrainingInterrupted(MrcError):
    """SIGINT/SIGTERM: a checkpoint was saved and the run stopped."""


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch of the next micro-batch
    batch_in_epoch: int = 0  # this process's micro-batches done in that epoch
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    seed: int = 0


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    metrics: dict = field(default_factory=dict)
    best_checkpoint: Path | None = None


def train(cfg: RunConfig) -> TrainResult:
    check_train_config(cfg.train)
    run_dir = Path(cfg.train.output_dir)
    resume_from = _resume_checkpoint(cfg, run_dir)
    resume_notes = []
    if resume_from is not None:
        cfg, resume_notes = _config_for_resume(cfg, resume_from)
    precision = resolve_precision(cfg.train.precision)
    accelerator = _accelerator(precision, cfg.train.grad_accum)
    log = RunLog(run_dir, accelerator.is_main_process)
    for note in resume_notes:
        log.info(note)
    set_seed(cfg.train.seed)
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name_or_path)
    with accelerator.main_process_first():  # one process tokenizes, the others load its cache
        train_split = _load_split(cfg.data.train_file, "train", tokenizer, cfg, log)
        dev_split = _load_split(cfg.data.dev_file, "eval", tokenizer, cfg, log) if cfg.data.dev_file else None
    if dev_split is not None and not cfg.decode.allow_null and any(g["is_impossible"] for g in dev_split.golds):
        cfg.decode.allow_null = True
        log.info("dev set has unanswerable questions: decode.allow_null set to true")

    model = build_model(cfg.model, cfg.data.max_seq_length, pretrained=resume_from is None)
    if cfg.train.init_from and resume_from is None:
        _init_from(model, cfg.train.init_from, log)
    optimizer = _optimizer(model, cfg, log)
    batches_per_epoch = math.ceil(len(train_split.features) / cfg.train.batch_size) // accelerator.num_processes
    total_steps = cfg.train.max_steps or math.ceil(cfg.train.epochs * batches_per_epoch / cfg.train.grad_accum)
    scheduler = _scheduler(optimizer, cfg, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)  # the scheduler stays ours: one step per optimizer step

    state = TrainerState(seed=cfg.train.seed)
    if resume_from is not None:
        state = _restore(resume_from, accelerator, model, optimizer, scheduler, log)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        _write_run_info(run_dir, cfg, tokenizer, train_split, dev_split, precision, accelerator)
    effective = cfg.train.batch_size * cfg.train.grad_accum * accelerator.num_processes
    log.info(f"{accelerator.num_processes} process(es) on {accelerator.device}, precision {precision}; effective batch "
             f"{effective} = {cfg.train.batch_size} x {cfg.train.grad_accum} accumulation x {accelerator.num_processes}; "
             f"{batches_per_epoch} batches per epoch per process; {total_steps} optimizer steps, "
             f"{int(cfg.train.warmup * total_steps)} of warm-up")

    rows = train_split.features.remove_columns("example_id")  # training features carry no offsets
    collate = Collator(tokenizer.pad_token_id or 0, pad_multiple(accelerator.device))
    batches = _batch_stream(feature_lengths(train_split.features), cfg, state, accelerator)
    bar = tqdm(total=total_steps, initial=state.step, desc="Training", unit="step", disable=not accelerator.is_main_process)
    running, micro, seen = torch.zeros((), device=accelerator.device), 0, 0
    last_eval = None  # (metrics, predictions) of the latest evaluation
    tokens = torch.zeros((), dtype=torch.long, device=accelerator.device)  # real (not padding) tokens, this process
    started, paused = time.perf_counter(), 0.0  # paused: seconds spent evaluating and saving, not training
    model.train()
    with _StopOnSignal() as stopper:
        while state.step < total_steps:
            epoch, index, feature_ids = next(batches)
            batch = {k: v.to(accelerator.device) for k, v in collate([rows[i] for i in feature_ids]).items()}
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.train.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            running, micro, seen = running + loss.detach(), micro + 1, seen + len(feature_ids) * accelerator.num_processes
            tokens += batch["attention_mask"].sum()
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state.step, state.epoch, state.batch_in_epoch = state.step + 1, epoch, index + 1
            bar.update(1)
            _check_finite(running, state.step, run_dir)  # before anything is saved from this step
            if state.step % cfg.train.log_steps == 0 or state.step == total_steps:
                mean_loss, lr = accelerator.reduce(running, "mean").item() / micro, scheduler.get_last_lr()[0]
                elapsed = time.perf_counter() - started - paused
                bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}")
                log.metrics(state.step, {"loss": mean_loss, "lr": lr, "epoch": epoch, "features_per_s": seen / elapsed,
                                         "tokens_per_s": accelerator.reduce(tokens, "sum").item() / elapsed})
                running, micro = torch.zeros_like(running), 0
            stop, pause_start = False, time.perf_counter()
            if dev_split is not None and (state.step == total_steps or _every(state.step, cfg.train.eval_steps)):
                last_eval = evaluate_split(model, dev_split, cfg, accelerator, precision)
                stop = _track(last_eval[0], cfg, state, log)
            interrupted = stopper.requested(accelerator)
            if state.step == total_steps or stop or interrupted or _every(state.step, cfg.train.save_steps) \
                    or state.best_step == state.step:
                _save(run_dir, accelerator, model, optimizer, scheduler, tokenizer, cfg, state)
            paused += time.perf_counter() - pause_start
            if interrupted:
                raise TrainingInterrupted(f"stopped by {stopper.signal_name or 'a signal to another process'} at step {state.step}; the checkpoint is "
                                          f"saved: continue with --resume auto --output-dir {run_dir}")
            if stop:
                log.info(f"early stopping: {cfg.train.patience} evaluations without improvement of {cfg.train.metric_for_best}")
                break
    bar.close()
    if dev_split is not None and last_eval is None:  # resumed at the last step: nothing evaluated yet
        last_eval = evaluate_split(model, dev_split, cfg, accelerator, precision)
    return _finish(run_dir, last_eval, accelerator, state, log)


def _every(step: int, interval: int) -> bool:
    return bool(interval) and step % interval == 0


def _check_finite(running_loss: torch.Tensor, step: int, run_dir: Path) -> None:
    if not torch.isfinite(running_loss):
        raise TrainingError(f"the training loss became {running_loss.item()} at step {step}; nothing from this step was "
                            f"saved, the checkpoints in {run_dir / 'checkpoints'} are from before it. Try a lower --lr "
                            "or --set train.max_grad_norm=1.0")


class _StopOnSignal:
    """SIGINT/SIGTERM ask the loop to save a checkpoint and stop after the current step; a second SIGINT kills."""

    def __init__(self):
        self.signal_name = None
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
        self.signal_name = signal.Signals(signum).name
        tqdm.write(f"{self.signal_name} received: saving a checkpoint after this step (Ctrl-C again to abort)")

    def requested(self, accelerator) -> bool:
        """True on every process when any process got a signal, so that all of them save and stop together."""
        flag = torch.tensor(float(self.signal_name is not None), device=accelerator.device)
        return accelerator.reduce(flag, "sum").item() > 0 if accelerator.num_processes > 1 else bool(flag)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _resume_checkpoint(cfg: RunConfig, run_dir: Path) -> Path | None:
    existing = latest_checkpoint(run_dir)
    if cfg.train.resume is None:
        if existing is not None:
            raise ConfigError(f"{run_dir} holds another run (checkpoints up to {existing.name}); pass --resume auto to "
                              "continue it, or choose another --output-dir")
        return None
    if cfg.train.resume == "auto":
        return existing  # None: nothing to resume, a fresh start
    path = Path(cfg.train.resume)
    if not (path / "trainer_state.json").is_file():
        raise ConfigError(f"--resume {path}: not a complete checkpoint folder (no trainer_state.json)")
    return path


def _accelerator(precision: str, grad_accum: int) -> Accelerator:
    """One Accelerator per run; on a machine without a GPU, processes started by torchrun/accelerate meet over gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        # accelerate keeps one state per Python process; a second run with other settings (a notebook) needs a new one
        AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=grad_accum,
                              cpu=not torch.cuda.is_available())
    if accelerator.num_processes != world:
        raise ConfigError(f"{world} processes were launched but accelerate set up {accelerator.num_processes}; "
                          "on CPU launch with `accelerate launch --multi_gpu --num_processes N` or torchrun")
    return accelerator


def _config_for_resume(cfg: RunConfig, checkpoint: Path) -> tuple[RunConfig, list[str]]:
    """The checkpoint's config, except the keys that only say how long and how often; each difference is noted."""
    saved = read_checkpoint_config(checkpoint)
    now, then = config_to_dict(cfg), config_to_dict(saved)
    notes = []
    for section, values in now.items():
        for key, value in values.items():
            if value == then[section][key]:
                continue
            keep_new = section == "train" and key in RESUME_OVERRIDABLE or (section, key) == ("train", "output_dir")
            notes.append(f"resume: {section}.{key} is {then[section][key]!r} in the checkpoint and {value!r} now; "
                         f"using {'the new value' if keep_new else 'the checkpoint'}")
            if keep_new:
                setattr(getattr(saved, section), key, value)
    return saved, notes


def _load_split(source: str | None, use: str, tokenizer, cfg: RunConfig, log: RunLog):
    if source is None:
        raise ConfigError("no training data: pass --train FILE or set data.train_file in the config")
    split = featurize_file(source, tokenizer, cfg.data, use)
    log.info(split.report.summary())
    log.info(f"{use}: {split.summary}")
    return split


def _init_from(model, path: str, log: RunLog) -> None:
    source = Path(path)
    weights = source if source.is_file() else resolve_checkpoint(source) / "model.safetensors"
    missing, unexpected = load_weights(model, load_state_dict_file(weights), strict=False)
    log.info(f"--init-from {weights}: missing {describe_keys(missing)}; unexpected {describe_keys(unexpected)}")


def _optimizer(model, cfg: RunConfig, log: RunLog) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (by rank: ALBERT's norms escape a 'LayerNorm' name filter)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    log.info(f"parameters: {sum(p.numel() for p in decay):,} with weight decay, {sum(p.numel() for p in no_decay):,} without")
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, fused=True)  # one kernel for all tensors, on CPU and GPU


def _scheduler(optimizer, cfg: RunConfig, total_steps: int):
    warmup = int(cfg.train.warmup * total_steps)

    def factor(step: int) -> float:  # linear warm-up, then linear decay to 0
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _batch_stream(lengths: list[int], cfg: RunConfig, state: TrainerState, accelerator: Accelerator):
    """(epoch, index, feature ids) for this process, from the resumed position on, epoch after epoch."""
    rank, world = accelerator.process_index, accelerator.num_processes
    for epoch in itertools.count(state.epoch):
        batches = epoch_batches(lengths, cfg.train.batch_size, cfg.train.seed, epoch, cfg.train.group_by_length)
        mine = batches[rank: len(batches) // world * world: world]  # equal counts: DDP steps stay in lockstep
        first = state.batch_in_epoch if epoch == state.epoch else 0
        for index in range(first, len(mine)):
            yield epoch, index, mine[index]


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


def _save(run_dir: Path, accelerator, model, optimizer, scheduler, tokenizer, cfg: RunConfig, state: TrainerState) -> None:
    rngs = gather_object([rng_state()])  # one per process
    if accelerator.is_main_process:
        training_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rngs}
        path = save_checkpoint(run_dir, accelerator.unwrap_model(model), tokenizer, cfg, asdict(state),
                               training_state, cfg.train.keep_last)
        if state.best_step == state.step:
            write_best_pointer(run_dir, path, {"step": state.step, cfg.train.metric_for_best: state.best_metric})
    accelerator.wait_for_everyone()


def _restore(checkpoint: Path, accelerator, model, optimizer, scheduler, log: RunLog) -> TrainerState:
    trainer_state, training_state = read_trainer_state(checkpoint)
    load_weights(accelerator.unwrap_model(model), read_weights(checkpoint), strict=True)
    optimizer.load_state_dict(training_state["optimizer"])
    scheduler.load_state_dict(training_state["scheduler"])
    rngs = training_state["rng"]
    if len(rngs) != accelerator.num_processes:
        log.info(f"resume: the checkpoint has RNG states of {len(rngs)} processes, this run has "
                 f"{accelerator.num_processes}; dropout noise will differ from the original run")
    set_rng_state(rngs[accelerator.process_index % len(rngs)])
    state = TrainerState(**trainer_state)
    log.truncate_metrics(state.step)  # lines logged after the checkpoint by the stopped run are logged again
    log.info(f"resumed from {checkpoint} at step {state.step} (epoch {state.epoch}, batch {state.batch_in_epoch})")
    return state


def _finish(run_dir: Path, last_eval, accelerator, state: TrainerState, log: RunLog) -> TrainResult:
    """The final dev predictions (from the evaluation at the last step), the curves, the result."""
    metrics, predictions = last_eval or ({}, None)
    if predictions is not None and accelerator.is_main_process:
        write_prediction_files(run_dir, predictions, metrics)
    if accelerator.is_main_process:
        plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
        log.info(f"done: {state.step} steps; files in {run_dir}")
    log.close()
    best = run_dir / "checkpoints" / f"step-{state.best_step:06d}" if state.best_step else None
    return TrainResult(run_dir, state.step, metrics, best)


def _write_run_info(run_dir: Path, cfg: RunConfig, tokenizer, train_split, dev_split, precision, accelerator) -> None:
    """The reproducibility record: versions, commit, fingerprints of tokenizer and data, feature counts."""
    import accelerate
    import datasets
    import transformers

    def sha(path: str | None) -> str | None:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if path and Path(path).is_file() else None

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    info = {
        "mrc_cli": __version__, "git_commit": commit, "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__, "datasets": datasets.__version__,
        "accelerate": accelerate.__version__, "device": str(accelerator.device), "processes": accelerator.num_processes,
        "precision": precision,
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
        "train_file_sha256": sha(cfg.data.train_file), "dev_file_sha256": sha(cfg.data.dev_file),
        "train_examples": train_split.summary.examples, "train_features": train_split.summary.features,
        "dev_examples": dev_split.summary.examples if dev_split else None,
        "dev_features": dev_split.summary.features if dev_split else None,
    }
    (run_dir / "run_info.json").write_text(json.dumps(info, indent=2))
