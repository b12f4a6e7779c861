"""`mrc distil`: one student model trained on a teacher's answer distributions as well as on the gold labels, run by
the fine-tuning loop (`training.run_task`): the same dev evaluation, final files, checkpoints, exact resume,
precision and tricks as `mrc train`.

The teacher (a trained model or a saved ensemble, `reader.load_model`) scores the training examples once, before
training, with its own tokenizer and windows (`ensemble.combined_positions`). Several processes (torchrun, accelerate
launch) share that pass: each scores a contiguous share of the examples, and the shares' scores are gathered to every
process and put in the examples' order, as one process has them; every process then computes the targets of all
training windows, as the batch plan may give any window to any process. The teacher's start and end probabilities
reach the student's training windows through the context's characters (`combining.window_distributions`): per window a
distribution over CLS and the window's context positions, with the teacher's null mass, and the mass of positions
outside the window, on CLS, as a window's gold label is CLS when the answer is outside it. A window whose teacher mass
lies wholly outside it therefore learns CLS from the teacher too; none is dropped. The targets sit beside the
features on the device, aligned with their rows (2 x 4 bytes x max_seq_length per window) and are not cached: a
resumed run computes them again (the same values on the CPU with the same process count; close to them on a GPU at
the teacher's precision, or with another process count, whose shares are batched otherwise).

Loss per window: (1 - alpha) x span loss + alpha x T^2 x KL(teacher_T || student_T), the mean of start and end,
where a distribution at temperature T is softmax(log p / T). The student stays a plain SpanExtractionModel: a hook
the task installs adds the term to `model(**batch).loss` when a batch carries targets, so R-Drop and adversarial
training see the combined loss and every checkpoint is an ordinary span checkpoint (eval, predict, export, Reader).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object
from torch.nn import functional as F

from mrc_cli.checkpoint import resolve_checkpoint
from mrc_cli.combining import Positions, window_distributions
from mrc_cli.config import RunConfig
from mrc_cli.ensemble import Ensemble, check_saved_ensemble, combined_positions
from mrc_cli.errors import ConfigError
from mrc_cli.metrics import rules
from mrc_cli.features import column
from mrc_cli.inference import position_offsets
from mrc_cli.loading import ENSEMBLE_SETTINGS, is_ensemble, is_onnx_export, run_config
from mrc_cli.model import feature_mean
from mrc_cli.onnx_backend import FP32_GRAPH, INT8_GRAPH
from mrc_cli.reader import load_model
from mrc_cli.splits import featurize_file
from mrc_cli.tracking import RunLog
from mrc_cli.validate import refuse_repeated_ids
from mrc_cli.training import SpanTask, TrainResult, own_copy, resumed_run_info, run_task

TARGETS = "teacher_targets"  # the batch key of the targets: (batch, 2, max_seq_length), start and end


def distil(cfg: RunConfig) -> TrainResult:
    """Train cfg.model (the student) as `mrc train` does, with the teacher term of cfg.distil in the loss."""
    cfg = own_copy(cfg)
    check_teacher(cfg)
    return run_task(cfg, DistilTask())


def check_teacher(cfg: RunConfig) -> None:
    """No teacher, or one that is not a trained model, refused before the run's folder and data (the teacher loads
    after them; `--dry-run` refuses it too): a saved ensemble's settings and members, a checkpoint's, run
    directory's or `mrc export` folder's config here; an ONNX export checks itself as it loads."""
    path = cfg.distil.teacher
    if not path:
        raise ConfigError("no teacher: pass --teacher MODEL_OR_ENSEMBLE or set distil.teacher in the config")
    if is_ensemble(path):
        check_saved_ensemble(Path(path))
    elif not is_onnx_export(path):
        run_config(resolve_checkpoint(path))


class DistilTask(SpanTask):
    """SpanTask whose training rows carry the teacher's distributions and whose model adds the teacher term."""

    command = "distil"

    def __init__(self):
        super().__init__(None, None)
        self.targets: torch.Tensor | None = None  # (features, 2, max_seq_length) float32, moved to the device once

    def load(self, cfg: RunConfig, tokenizer, log: RunLog):
        if cfg.data.train_file:  # without one, SpanTask.load says what to pass
            self.train_split = featurize_file(cfg.data.train_file, tokenizer, cfg.data, "train", offsets=True)
            log.info(self.train_split.report.summary())
            # two questions of one id would be softmaxed together: each would learn the other's answer too
            refuse_repeated_ids(column(self.train_split.examples, "id"), cfg.data.train_file,
                                "the teacher's distributions are keyed by question id")
        return super().load(cfg, tokenizer, log)

    def build_model(self, cfg: RunConfig, pretrained: bool, log: RunLog):
        if pretrained:  # a new run: the teacher is the folder the path names now, saved so with the run
            pinned = [str(_pinned(cfg.distil.teacher)) if PartialState().is_main_process else None]
            cfg.distil.teacher = broadcast_object_list(pinned)[0]  # one teacher for every process
        else:  # a resumed run goes on learning from the teacher it began with
            _check_teacher_unchanged(cfg)
        # the teacher pass is here, not in load: run_task calls load in one process after the other
        # (main_process_first), and every process takes part in this pass at the same time
        self.targets = self._teacher_targets(cfg, log)
        model = super().build_model(cfg, pretrained, log)
        TeacherTerm(cfg.distil.alpha, cfg.distil.temperature).install(model)
        return model

    def _teacher_targets(self, cfg: RunConfig, log: RunLog) -> torch.Tensor:
        """(windows, 2, max_seq_length) the teacher's start and end distributions on every training window."""
        rows = self.train_split.features
        # loading the teacher draws random weights before its own load: it must not move the student's seed
        with torch.random.fork_rng(devices=[]):
            teacher = load_model(cfg.distil.teacher)
            scores = shared_teacher_scores(teacher, self.train_split.examples)
        student = Positions(column(rows, "example_id"), position_offsets(rows, cfg.data.max_seq_length, cfg.model.span_level),
                            None, None)
        start, end = window_distributions(student, scores)
        outside = float(start[:, 0].mean())
        log.info(f"teacher {cfg.distil.teacher}: distributions on {len(rows)} training windows; mean start mass on CLS "
                 f"(null or outside the window) {outside:.3f}; alpha {cfg.distil.alpha:g}, temperature "
                 f"{cfg.distil.temperature:g}")
        unanswerable = [not rules.answerable(gold) for gold in self.train_split.golds]
        if any(unanswerable) and not teacher.cfg.decode.allow_null:
            # the gold term says "no answer" on these, the teacher's an answer: alpha decides which the student learns
            ids = {gold["id"] for gold, null in zip(self.train_split.golds, unanswerable) if null}
            null_rows = [row for row, example in enumerate(student.example_ids) if example in ids]
            log.info(f"warning: teacher {cfg.distil.teacher} was trained without unanswerable questions (its null rule "
                     f"is off), and {sum(unanswerable)} training questions have no answer: on their windows it puts "
                     f"mean start mass {float(start[null_rows, 0].mean()):.3f} on CLS, where the gold answer puts 1; "
                     "use a teacher trained on data with unanswerable questions, or a lower distil.alpha")
        return torch.from_numpy(np.stack([start, end], axis=1)).float()

    def batch(self, store, index: list[int], rows: torch.Tensor, epoch: int) -> dict:
        if self.targets.device != rows.device:
            self.targets = self.targets.to(rows.device)
        return {**store.batch(index, rows), TARGETS: store.fill_slots(self.targets[rows], 0)}  # empty slots: no mass

    def run_info(self, cfg: RunConfig) -> dict:
        return {**super().run_info(cfg), "teacher": cfg.distil.teacher,
                "teacher_files": _teacher_files(cfg.distil.teacher)}


def _pinned(teacher: str) -> Path:
    """The teacher as an absolute folder: a run directory's best checkpoint of now (the run may go on training and
    its best move), any other model or ensemble folder as it is."""
    if is_ensemble(teacher) or is_onnx_export(teacher):
        return Path(teacher).resolve()
    return resolve_checkpoint(teacher).resolve()


def _teacher_files(teacher: str | Path) -> dict:
    """Size and modification time of each file the teacher answers from, by path: a model's weights, an ONNX
    export's graphs, its members' files (a member's run directory by its best checkpoint of now); of a saved
    ensemble's settings what its distributions follow, its members, weights and combination, not its decoding (a
    threshold or calibration stored there since changes no distribution)."""
    folder = Path(teacher).resolve()
    files = {}
    if is_ensemble(folder):
        settings, shares, members = check_saved_ensemble(folder)
        for member in members:
            files.update(_teacher_files(_pinned(str(member))))
        files[str(folder / ENSEMBLE_SETTINGS)] = {"members": settings["members"], "weights": shares,
                                                  "combine": settings["combine"]}
    for path in (folder / "model.safetensors", folder / FP32_GRAPH, folder / INT8_GRAPH):
        if path.is_file():
            stat = path.stat()  # weights rewritten in place change both
            files[str(path)] = [stat.st_size, stat.st_mtime_ns]
    return files


def _check_teacher_unchanged(cfg: RunConfig) -> None:
    """A resumed run whose teacher was rewritten since it began (its weights or graphs, a member of its ensemble, a
    member run's best checkpoint) would learn from another teacher than its first steps did."""
    info, now = resumed_run_info(cfg), _teacher_files(cfg.distil.teacher)
    then = info.get("teacher_files")
    if then is None and info.get("teacher_weights"):  # a run begun when one model's weights alone were recorded
        weights = str(Path(cfg.distil.teacher).resolve() / "model.safetensors")
        then, now = {weights: [info["teacher_weights"]["bytes"], info["teacher_weights"]["mtime_ns"]]}, {
            weights: now.get(weights)}
    if then is None:  # a run begun before mrc-cli recorded any
        return
    settings = str(Path(cfg.distil.teacher).resolve() / ENSEMBLE_SETTINGS)
    if isinstance(then.get(settings), list):  # recorded by its size and time before: what it holds is compared now
        then = {**then, settings: now.get(settings)}
    changed = sorted(path for path in then.keys() | now.keys() if then.get(path) != now.get(path))
    if changed:
        raise ConfigError(f"{cfg.distil.teacher}: the teacher changed since this run began ({', '.join(changed)} "
                          "rewritten, added or gone); restore it to resume, or start a new run")


def shared_teacher_scores(teacher, examples) -> Positions:
    """teacher_scores of all `examples`, every process scoring a contiguous share of them at the same time: the
    shares are gathered to every process and put one after another, in the examples' order (one process: its
    scores of them all)."""
    state = PartialState()
    if len(examples) < state.num_processes:
        raise ConfigError(f"{len(examples)} training examples for {state.num_processes} processes: the teacher "
                          "pass needs at least one per process; start fewer processes")
    share = examples.shard(num_shards=state.num_processes, index=state.process_index, contiguous=True)
    return Positions.concatenate(gather_object([teacher_scores(teacher, share)]))


def teacher_scores(teacher, examples) -> Positions:
    """A model's or an ensemble's start/end logits on its own windows of `examples` (an ensemble's combined ones on
    its reference's windows); a model alone is a one-member ensemble, whose scores are its own to the bit."""
    if not isinstance(teacher, Ensemble):
        teacher = Ensemble([teacher], [str(teacher.path)], [1.0], "prob", teacher.cfg)
    return combined_positions(teacher, examples)


class TeacherTerm:
    """Installed on a span model: a forward whose inputs carry TARGETS returns the distillation loss as `.loss`."""

    def __init__(self, alpha: float, temperature: float):
        self.alpha, self.temperature = alpha, temperature
        self._targets = None  # from the pre-hook to the hook of the same forward

    def install(self, model: torch.nn.Module) -> None:
        model.register_forward_pre_hook(self._take_targets, with_kwargs=True)
        model.register_forward_hook(self._add_term)

    def _take_targets(self, module, args, kwargs):
        self._targets = kwargs.pop(TARGETS, None)
        return args, kwargs

    def _add_term(self, module, args, output):
        targets, self._targets = self._targets, None
        if targets is None:  # evaluation, inference
            return output
        kl = feature_mean(distillation_kl(output.start_logits, output.end_logits, targets, self.temperature),
                          output.filled)
        output.loss = (1 - self.alpha) * output.loss + self.alpha * self.temperature ** 2 * kl
        return output


def distillation_kl(start_logits: torch.Tensor, end_logits: torch.Tensor, targets: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """KL(teacher_T || student_T) per window, the mean of start and end: (batch,). `targets`: (batch, 2, L) teacher
    probabilities, 0 off its positions (padding, question), whose terms are 0; an empty feature slot (all 0) gets a
    finite value, which `feature_mean` leaves out."""
    total = 0.0
    for side, logits in enumerate((start_logits, end_logits)):  # (batch, units)
        p = targets[:, side, :logits.shape[1]]
        held = p > 0
        # finfo.min, not -inf: off the teacher's positions exp() is 0 all the same, and a row of none stays finite
        # (its gradient would be NaN even where the mean leaves it out)
        teacher = F.log_softmax(torch.where(held, torch.log(p) / temperature, torch.finfo(p.dtype).min), dim=-1)
        student = F.log_softmax(logits / temperature, dim=-1)
        # off the teacher's positions its probability is 0: a term of 0
        total = total + (teacher.exp() * (torch.where(held, teacher, 0) - student)).sum(-1)
    return total / 2
