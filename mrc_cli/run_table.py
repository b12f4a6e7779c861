"""`mrc runs`: the training runs under some folders side by side (how far each got, its best dev scores, the settings
in which the runs differ), so the best of many runs is found without opening each folder's files."""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from mrc_cli.checkpoint import BEST_POINTER
from mrc_cli.errors import ConfigError, DataError
from mrc_cli.files import from_json
from mrc_cli.run_lock import in_use
from mrc_cli.runs import NOT_RESULTS
from mrc_cli.tracking import read_metrics

RUN_INFO = "run_info.json"  # every run directory has it from its first step (training._write_run_info)
SORTS = ("f1", "exact", "dev_loss", "step", "name")
_NOT_COMPARED = {".".join(key) for key in NOT_RESULTS} | {"train.resume"}


@dataclass
class RunRow:
    run: str  # the run directory, as found under the folder given
    task: str  # train | distil | pretrain
    state: str  # finished | running | stopped (a checkpoint to resume from) | failed (none)
    step: int  # the last logged
    best_step: int | None  # of the best checkpoint, where the run evaluates
    exact: float | None  # dev EM and F1 at the best step (the run's metric: SQuAD's or CMRC 2018's)
    f1: float | None
    dev_loss: float | None
    minutes: float | None  # from the first to the last line of train.log (a resumed run's pause included)
    settings: dict  # config.yaml as dotted keys


def find_runs(folders: list[str | Path]) -> list[Path]:
    """The run directories in or under `folders` (a folder may itself be one)."""
    found = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise ConfigError(f"{folder}: no such folder; give folders that hold run directories (mrc train "
                              "--output-dir, mrc compare/kfold --out)")
        found += [info.parent for info in folder.rglob(RUN_INFO) if "checkpoints" not in info.relative_to(folder).parts]
    return sorted(set(found))


def run_rows(folders: list[str | Path], sort: str = "f1") -> list[RunRow]:
    """A row per run directory under `folders`, best first by `sort` (dev_loss: lowest first)."""
    if sort not in SORTS:
        raise ConfigError(f"--sort {sort!r}: choose one of {', '.join(SORTS)}")
    runs = find_runs(folders)
    if not runs:
        raise ConfigError(f"no run directories (folders with {RUN_INFO}) in {', '.join(map(str, folders))}")
    base = Path(folders[0]) if len(folders) == 1 else None
    rows = [_readable_row(run, str(run.relative_to(base)) if base and run != base else str(run)) for run in runs]

    def key(row: RunRow):
        if sort == "name":
            return (False, 0, row.run)
        value = getattr(row, sort)
        missing = value is None or isinstance(value, float) and math.isnan(value)
        return (missing, 0 if missing else (value if sort == "dev_loss" else -value), row.run)
    return sorted(rows, key=key)


def differing(rows: list[RunRow]) -> list[str]:
    """The settings (dotted keys) whose values are not the same in every run, those that change no weight aside."""
    keys = sorted({key for row in rows for key in row.settings} - _NOT_COMPARED)
    return [key for key in keys if len({repr(row.settings.get(key)) for row in rows}) > 1]


def format_runs(rows: list[RunRow]) -> str:
    """The table `mrc runs` prints: a line per run, the settings in which they differ last."""
    keys = differing(rows)
    header = ["run", "task", "state", "step", "best step", "EM", "F1", "dev loss", "minutes", "differs in"]
    lines = [[row.run, row.task, row.state, str(row.step), _cell(row.best_step), _cell(row.exact, 2),
              _cell(row.f1, 2), _cell(row.dev_loss, 4), _cell(row.minutes, 1),
              " ".join(f"{key}={row.settings.get(key)}" for key in keys)] for row in rows]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in [header, *lines])


def _readable_row(run_dir: Path, name: str) -> RunRow:
    try:
        return _row(run_dir, name)
    except (OSError, ValueError) as err:  # a file cut by a full disk or a kill, or edited by hand
        raise DataError(f"{run_dir}: its run files cannot be read ({type(err).__name__}: {err}); leave the folder out "
                        "or remove it") from None


def _row(run_dir: Path, name: str) -> RunRow:
    info = from_json((run_dir / RUN_INFO).read_text(encoding="utf-8"))
    logged = read_metrics(run_dir / "metrics.jsonl")
    step = max((row["step"] for row in logged), default=0)
    best = _best(run_dir, logged)
    finished = (run_dir / "metrics.json").is_file() and from_json(
        (run_dir / "metrics.json").read_text(encoding="utf-8")).get("step", step) >= step
    state = ("running" if in_use(run_dir) else "finished" if finished
             else "stopped" if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
             else "failed")
    return RunRow(name, info.get("task", "train"), state, step, best.get("step"), *_scores(best), _minutes(run_dir),
                  _settings(run_dir))


def _best(run_dir: Path, logged: list[dict]) -> dict:
    """The evaluation of the best checkpoint's step (best_checkpoint.json), else the run's last evaluation."""
    evaluations = [row for row in logged if "dev_loss" in row or "metric" in row]
    pointer = run_dir / BEST_POINTER
    if pointer.is_file():
        step = from_json(pointer.read_text(encoding="utf-8")).get("metrics", {}).get("step")
        evaluations = [row for row in evaluations if row["step"] == step] or evaluations
    return evaluations[-1] if evaluations else {}


def _scores(evaluation: dict) -> tuple:
    from mrc_cli.inference import headline  # here: it imports torch, which `mrc runs --help` need not wait for

    scores = headline(evaluation)
    return scores["exact"], scores["f1"], evaluation.get("dev_loss")


def _minutes(run_dir: Path) -> float | None:
    log = run_dir / "train.log"
    if not log.is_file():
        return None
    stamps = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            stamps.append(datetime.datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
        except ValueError:  # a line a message continues on
            continue
    return (stamps[-1] - stamps[0]).total_seconds() / 60 if stamps else None


def _settings(run_dir: Path) -> dict:
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):  # a run whose config.yaml is gone: listed without settings
        return {}
    return {f"{section}.{key}": value for section, values in config.items() if isinstance(values, dict)
            for key, value in values.items()}


def _cell(value, digits: int = 0) -> str:
    if value is None or isinstance(value, float) and math.isnan(value):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
