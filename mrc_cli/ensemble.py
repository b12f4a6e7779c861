"""An ensemble of trained models that answers like one model: `mrc ensemble`, and a saved folder (ensemble.yaml) that
`mrc eval`, `mrc predict` and `Reader.load` take. How the answers are combined: mrc_cli/combining.py.

The first member is the reference: the data is featurized as it featurizes it, and the decoder sees its windows and
positions, with its decoding settings (max_answer_length in its units; its stored null threshold unless one is
given). Every other member featurizes the same examples with its own tokenizer and data settings and runs at its own
precision. Under bf16/fp16 the close calls (decode.recheck_margin) are decided again from fp32 logits of every member,
as for one model, so a one-model ensemble answers exactly as `mrc eval` of that model does at any precision.

ensemble.yaml names each member by the folder loaded (a run directory's best checkpoint at the time), absolute, or
relative to the ensemble's folder for members copied in (`--copy-members`): a saved ensemble does not change when a
member's training goes on.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from mrc_cli.checkpoint import TRAINING_STATE, run_dir_of
from mrc_cli.combining import COMBINATIONS, Positions, combined_logits
from mrc_cli.config import RunConfig, check_null_threshold, read_yaml, set_value, write_yaml_atomically
from mrc_cli.decoding import Prediction, decode
from mrc_cli.errors import CheckpointError, ConfigError, DataError
from mrc_cli.files import check_output_folder
from mrc_cli.features import build_features, column
from mrc_cli.inference import (OneProcess, eval_token_budget, evaluate_predictions, place_for_inference,
                               position_offsets, predict_logits, recheck_close_calls)
from mrc_cli.loading import ENSEMBLE_SETTINGS, Loaded, load_trained
from mrc_cli.runs import FOLD_RECORD
from mrc_cli.splits import Split

MEMBERS_FOLDER = "members"  # inside a saved ensemble: the members' copies (--copy-members)
WEIGHTS_HELP = "equal, oof, or one positive number per member such as 2,1"


@dataclass
class Ensemble:
    members: list[Loaded]  # the reference first
    sources: list[str]  # each member's folder as ensemble.yaml names it
    weights: list[float]  # one per member, summing to 1
    combine: str  # prob | logprob (mrc_cli.combining)
    cfg: RunConfig  # the reference's run config with the ensemble's decoding settings
    path: Path | None = None  # the saved folder, once saved or loaded

    @property
    def tokenizer(self):
        """The reference's: eval, predict and the Reader featurize the data as it does."""
        return self.members[0].tokenizer


def build_ensemble(checkpoints: list[str], weights: str = "equal", combine: str = "prob",
                   threshold: float | None = None) -> Ensemble:
    """Members from checkpoints, run directories or exports; the first is the reference. `threshold` replaces the
    reference's stored null threshold; a threshold the reference stored (tuned on dev or out of fold for its own
    null odds) is kept, marked as the reference's where other members change the null odds. From Python, one path
    is a member of one, and `weights` may be a list of numbers."""
    if isinstance(checkpoints, (str, os.PathLike)):
        checkpoints = [checkpoints]
    if not checkpoints:
        raise ConfigError("an ensemble needs at least one member (--checkpoint)")
    if combine not in COMBINATIONS:
        raise ConfigError(f"--combine {combine!r}: choose {' or '.join(COMBINATIONS)}")
    shares = parse_weights(weights, checkpoints)  # before loading any model
    check_null_threshold(threshold)
    members = [load_trained(path) for path in checkpoints]
    cfg = copy.deepcopy(members[0].cfg)
    if threshold is not None:
        cfg.decode.null_score_diff_threshold, cfg.decode.null_threshold_from = float(threshold), "config"
    elif len(members) > 1 and cfg.decode.null_threshold_from != "config":
        cfg.decode.null_threshold_from = "reference"
    if len(members) > 1:  # a temperature fits one model's probabilities, not the combined ones
        cfg.decode.temperature, cfg.decode.null_bias = 1.0, 0.0
    return Ensemble(members, [str(m.path.resolve()) for m in members], shares, combine, cfg)


def calibration_left_out(ensemble: Ensemble) -> str | None:
    """A note where the reference carries a calibration that the ensemble of several members does not take."""
    decode = ensemble.members[0].cfg.decode
    if len(ensemble.members) < 2 or (decode.temperature, decode.null_bias) == (1.0, 0.0):
        return None
    return (f"member 1's calibration (temperature {decode.temperature:.3g}, null bias {decode.null_bias:.3g}) fits "
            "its own probabilities, not the ensemble's, and is left out: mrc eval --calibrate on the ensemble saved "
            "with --save fits one for it")


def null_rules_differ(ensemble: Ensemble, rule_on: bool) -> str | None:
    """A warning where the members learnt different null rules (a SQuAD v1 model beside a v2 one) and the answers
    were decided with the rule on (`rule_on`): the v1 members' null scores were never trained for it."""
    rules = [member.cfg.decode.allow_null for member in ensemble.members]
    if len(set(rules)) < 2 or not rule_on:
        return None
    without = [str(number) for number, rule in enumerate(rules, start=1) if not rule]
    return (f"member(s) {', '.join(without)} answer every question (trained without unanswerable questions), the "
            "others may answer none; the ensemble decided with the null rule on, with the reference's threshold, on "
            "null scores the first were not trained for: combine models trained alike")


def parse_weights(text: str | list[float], checkpoints: list[str]) -> list[float]:
    """`equal`, `oof`, or one positive number per member (as "2,1" or a list), normalised to sum 1."""
    if not isinstance(text, str):
        return normalised_weights(list(text) if isinstance(text, (list, tuple)) else [text], len(checkpoints),
                                  f"weights {text!r}")
    if text == "equal":
        return [1 / len(checkpoints)] * len(checkpoints)
    if text == "oof":
        return normalised_weights(held_out_f1(checkpoints), len(checkpoints), "--weights oof (held-out F1)")
    return normalised_weights(text.split(","), len(checkpoints), f"--weights {text!r}")


def held_out_f1(checkpoints: list[str]) -> list[float]:
    """`--weights oof`: each member's F1 on the fold it was held out of, from the record `mrc kfold` writes in the
    fold's run directory (the member is that directory or one of its checkpoints): on SQuAD v2 data at the null
    threshold the k-fold run chose out of fold, where the record has it. Proportional weights: a member that scored
    better on questions it never saw counts more, by as much as it scored better. The members must be folds of one
    k-fold run: F1s on other data, or by other rules, do not weigh them against each other."""
    records = [_fold_record(number, checkpoint) for number, checkpoint in enumerate(checkpoints, start=1)]
    _refuse_other_kfold_runs(records, checkpoints)
    scores = []
    for number, (checkpoint, record) in enumerate(zip(checkpoints, records), start=1):
        f1 = record.get("f1_at_oof_threshold", record["f1"])
        if not f1 > 0:
            raise ConfigError(f"--weights oof: member {number} ({checkpoint}) scored F1 {f1} on the fold it was held "
                              "out of, which would weigh it 0; leave it out, or give weights such as 1,1")
        scores.append(f1)
    unthresholded = [str(number) for number, record in enumerate(records, start=1)
                     if record.get("metric") == "squad_v2" and "f1_at_oof_threshold" not in record]
    if unthresholded:
        print(f"warning: --weights oof: member(s) {', '.join(unthresholded)} have only their held-out F1 at null "
              "threshold 0 (their k-fold run predates the F1 at its out-of-fold threshold), which on SQuAD v2 mostly "
              "measures each fold's share of unanswerable questions; run mrc kfold again on its --out to record it",
              file=sys.stderr, flush=True)
    return scores


def _fold_record(number: int, checkpoint: str) -> dict:
    """A member's k-fold record, with the training file's hash from its run_info.json (None where absent)."""
    run_dir = run_dir_of(checkpoint)
    record = run_dir / FOLD_RECORD
    if not record.is_file():
        raise ConfigError(f"--weights oof: member {number} ({checkpoint}) was not trained by `mrc kfold` (no "
                          f"{FOLD_RECORD} in it or its run directory), so it has no out-of-fold F1; pass the folds' "
                          "run directories (OUT/fold-<k>), or weights such as 2,1")
    info = run_dir / "run_info.json"
    train_sha256 = json.loads(info.read_text(encoding="utf-8")).get("train_file_sha256") if info.is_file() else None
    return {**json.loads(record.read_text(encoding="utf-8")), "train_sha256": train_sha256}


def _kfold_run(record: dict) -> dict:
    """What the folds of one k-fold run share: the number of folds, the training data, the rules they were scored by
    and their config but for each fold's folder."""
    config = copy.deepcopy(record["config"])
    config["train"].pop("output_dir", None)
    return {"number of folds": record.get("folds"), "training data (SHA-256)": record["train_sha256"],
            "metric": record.get("metric"), "settings": config}


def _refuse_other_kfold_runs(records: list[dict], checkpoints: list[str]) -> None:
    reference = _kfold_run(records[0])
    for number, record in enumerate(records[1:], start=2):
        run = _kfold_run(record)
        differ = [key for key in reference if None not in (reference[key], run[key]) and reference[key] != run[key]]
        if differ:
            raise ConfigError(f"--weights oof: members 1 ({checkpoints[0]}) and {number} ({checkpoints[number - 1]}) "
                              f"are folds of different mrc kfold runs (other {', '.join(differ)}): their held-out F1s "
                              "were scored on other questions or by other rules and do not weigh them against each "
                              "other; pass the folds of one k-fold run (OUT/fold-<k>), or weights such as 1,1")


def normalised_weights(values: list, num_members: int, where: str) -> list[float]:
    """One positive number per member, scaled to sum 1."""
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {WEIGHTS_HELP}") from None
    if len(values) != num_members:
        raise ConfigError(f"{where}: {len(values)} weights for {num_members} members; give one per member")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"{where}: weights must be finite positive numbers; leave a member out rather than weighting "
                          "it 0")
    values = [v / max(values) for v in values]  # first to at most 1: 1e308 twice would sum to inf, each weight 0
    return [v / sum(values) for v in values]


def ensemble_inference(ensemble: Ensemble, split: Split, batch_size: int | None = None):
    """(metrics, predictions) on a split featurized as the reference featurizes; the other members featurize its
    examples themselves, in the feature cache where the reference's features are cached (not the Reader's)."""
    cache = bool(split.features.cache_files)
    splits = [split] + [_member_split(split, member, cache) for member in ensemble.members[1:]]
    predictions = ensemble_answers(ensemble, splits, batch_size)
    metrics = (evaluate_predictions(split.golds, predictions, ensemble.cfg.decode, ensemble.cfg.data.metric)
               if split.golds else {})
    return metrics, predictions


def _member_split(split: Split, member: Loaded, cache: bool) -> Split:
    # a file's progress bar; not a Reader call's (in memory), where it would flash on every call
    features, summary = build_features(split.examples, member.tokenizer, member.cfg.data, labels=False, cache=cache,
                                       progress=cache)
    return dataclasses.replace(split, features=features, summary=summary)


def ensemble_answers(ensemble: Ensemble, splits: list[Split], batch_size: int | None = None) -> dict[str, Prediction]:
    """Answers from every member's split (each featurized by that member) combined on the reference's positions."""
    if len(splits) != len(ensemble.members):
        raise ValueError(f"{len(splits)} splits for {len(ensemble.members)} members: give one per member")
    _check_same_questions(ensemble, splits)
    runs = [_MemberRun(member, split.features, batch_size) for member, split in zip(ensemble.members, splits)]
    contexts = splits[0].contexts
    predictions = _combine_and_decode(ensemble, [run.positions for run in runs], contexts)
    if any(run.precision != "no" for run in runs):
        ids = runs[0].positions.example_ids

        def decide_in_fp32(rows: list[int]) -> dict[str, Prediction]:
            close = {ids[r] for r in rows}
            return _combine_and_decode(ensemble, [run.in_fp32(close) for run in runs], contexts)

        recheck_close_calls(predictions, ids, ensemble.cfg.decode, decide_in_fp32)
    return predictions


def combined_positions(ensemble: Ensemble, examples) -> Positions:
    """The members' scores on `examples`, each featurized by its member (in memory), combined on the reference's
    positions: logits whose softmax per example is the combined distribution (mrc_cli.combining). What a student
    learns from (mrc_cli.distillation); a one-model ensemble gives that model's logits to the bit. This process
    scores them all, without waiting for the others: several processes share the work by their examples."""
    runs = [_MemberRun(member, build_features(examples, member.tokenizer, member.cfg.data, labels=False, cache=False)[0],
                       None, alone=True) for member in ensemble.members]
    return _combine(ensemble, [run.positions for run in runs])


def _combine(ensemble: Ensemble, positions: list[Positions]) -> Positions:
    reference, *others = positions
    start, end = combined_logits(reference, others, ensemble.weights, ensemble.combine)
    return Positions(reference.example_ids, reference.offsets, start, end)


def _combine_and_decode(ensemble: Ensemble, positions: list[Positions], contexts: dict[str, str]):
    combined = _combine(ensemble, positions)
    return decode(combined.example_ids, combined.offsets, combined.start, combined.end, contexts, ensemble.cfg.decode)


class _MemberRun:
    """One member's logits on its features, placed on its device at its precision; `alone`: all of them computed in
    this process, else the batches are shared between the processes and gathered."""

    def __init__(self, member: Loaded, features, batch_size: int | None, alone: bool = False):
        cfg = member.cfg
        self.model, self.state, self.precision = place_for_inference(member.model, cfg)
        if alone:
            self.state = OneProcess(self.state.device)
        self.features, self.batch_size = features, batch_size or cfg.train.eval_batch_size
        self.width, self.span_level = cfg.data.max_seq_length, cfg.model.span_level
        self.tokens_per_batch = eval_token_budget(cfg.train, self.width, self.state.device)
        self.positions = self._positions(self.features, self.precision)

    def _positions(self, features, precision: str) -> Positions:
        logits = predict_logits(self.model, features, self.state, self.batch_size, precision, self.width,
                                self.tokens_per_batch)
        offsets = position_offsets(features, self.width, self.span_level)
        return Positions(column(features, "example_id"), offsets, logits.start, logits.end)

    def in_fp32(self, example_ids: set[str]) -> Positions:
        """The windows of these examples, from fp32 logits."""
        rows = [i for i, e in enumerate(self.positions.example_ids) if e in example_ids]
        if self.precision == "no":
            return self.positions.select(rows)
        return self._positions(self.features.select(rows), "no")


def _check_same_questions(ensemble: Ensemble, splits: list[Split]) -> None:
    expected = set(column(splits[0].features, "example_id"))
    for number, (source, split) in enumerate(zip(ensemble.sources[1:], splits[1:]), start=2):
        found = set(column(split.features, "example_id"))
        if found != expected:
            extra, missing = sorted(found - expected), sorted(expected - found)
            raise DataError(
                f"ensemble member {number} ({source}) answers other questions than the reference "
                f"({ensemble.sources[0]}): {len(missing)} missing (e.g. {missing[:3]}), {len(extra)} extra "
                f"(e.g. {extra[:3]}); every member must featurize the same examples"
            )


def load_ensemble(folder: str | Path) -> Ensemble:
    """A folder saved by `mrc ensemble --save` (or save_ensemble), its members loaded."""
    folder = Path(folder)
    settings_file = folder / ENSEMBLE_SETTINGS
    settings, shares, paths = check_saved_ensemble(folder)
    members = []
    for number, path in enumerate(paths, start=1):
        try:
            members.append(load_trained(path))
        except CheckpointError as err:
            raise CheckpointError(f"{settings_file}: member {number}: {err}") from None
    cfg = copy.deepcopy(members[0].cfg)
    for key, value in settings["decode"].items():
        set_value(cfg, f"decode.{key}", value, source=str(settings_file))
    return Ensemble(members, list(settings["members"]), shares, settings["combine"], cfg, folder)


def check_saved_ensemble(folder: Path) -> tuple[dict, list[float], list[Path]]:
    """A saved ensemble's settings, weights (normalised) and member folders, each there; nothing loaded (a teacher is
    checked so before a run reads its data)."""
    settings_file = folder / ENSEMBLE_SETTINGS
    settings = _read_settings(settings_file)
    for key, value in settings["decode"].items():  # checked on a config of its own: the members' are not loaded
        set_value(RunConfig(), f"decode.{key}", value, source=str(settings_file))
    weights = settings["weights"] if isinstance(settings["weights"], list) else [settings["weights"]]
    shares = normalised_weights(weights, len(settings["members"]), f"{settings_file}: weights")
    paths = [folder / source for source in settings["members"]]  # an absolute source stays as it is
    for number, path in enumerate(paths, start=1):
        if not path.exists():
            raise CheckpointError(f"{settings_file}: member {number} {path} does not exist; restore it, or save the "
                                  "ensemble again (--copy-members keeps copies of the members inside its folder)")
    return settings, shares, paths


def _read_settings(path: Path) -> dict:
    settings = read_yaml(path)
    keys = {"members", "weights", "combine", "decode"}
    if not isinstance(settings, dict) or set(settings) != keys:
        raise ConfigError(f"{path}: expected the keys {', '.join(sorted(keys))}, as `mrc ensemble --save` writes them")
    members = settings["members"]
    if not (isinstance(members, list) and members and all(isinstance(m, str) and m.strip() for m in members)):
        raise ConfigError(f"{path}: members must be a list of model folders")
    if settings["combine"] not in COMBINATIONS:
        raise ConfigError(f"{path}: combine {settings['combine']!r}: choose {' or '.join(COMBINATIONS)}")
    if not isinstance(settings["decode"], dict):
        raise ConfigError(f"{path}: decode must hold decode.* settings (n_best_size, null_score_diff_threshold, ...)")
    return settings


def check_save_folder(folder: str | Path) -> None:
    """Refused before any work: saving must not mix an ensemble into another folder's files."""
    folder = Path(folder)
    check_output_folder(folder, "--save")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConfigError(f"{folder}: exists and is not an empty folder; save the ensemble into a new one")


def save_ensemble(ensemble: Ensemble, folder: str | Path, copy_members: bool = False) -> Path:
    """Write ensemble.yaml (and with `copy_members` the members' weights, config and tokenizer, not their optimizer
    state) into a new folder; the ensemble then belongs to it (a stored threshold is written there)."""
    folder = Path(folder)
    check_save_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if copy_members:
        sources = []
        for number, member in enumerate(ensemble.members, start=1):
            copied = Path(MEMBERS_FOLDER) / f"{number}-{member.path.name}"
            # not the optimizer state, nor a cached ONNX export (mrc_cli.backends), which the ensemble does not load
            shutil.copytree(member.path, folder / copied, ignore=shutil.ignore_patterns(TRAINING_STATE, "onnx"))
            sources.append(str(copied))
        ensemble.sources = sources
    ensemble.path = folder
    store_settings(ensemble)
    return folder


def store_settings(ensemble: Ensemble) -> None:
    """(Re)write the saved folder's ensemble.yaml from the ensemble: members, weights, combination, decoding."""
    settings = {"members": ensemble.sources, "weights": ensemble.weights, "combine": ensemble.combine,
                "decode": dataclasses.asdict(ensemble.cfg.decode)}
    write_yaml_atomically(settings, ensemble.path / ENSEMBLE_SETTINGS)
