"""Records of finished trainings, for the commands that run several and can be run again (`mrc compare`, `mrc kfold`):
a run's record file marks it finished and holds the settings it ran with; a later call skips it, and refuses it
when the settings differ, rather than pass its scores off as those of the new settings."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mrc_cli.config import RunConfig, config_to_dict
from mrc_cli.errors import ConfigError

PLAN_RECORD = "planned.json"  # in a run directory before it trains: a resumed run must be the one planned now
FOLD_RECORD = "kfold_fold.json"  # in a fold's run directory once it has finished: kfold skips it, --weights oof reads it


def write_record(path: Path, record: dict, settings: dict) -> None:
    """`record` with the run's planned config (`settings`, as config_to_dict gives it): the mark of a finished run."""
    write_json(path, {**record, "config": settings})


def start_run(run_dir: Path, settings: dict, facts: dict | None = None) -> None:
    """Called before a run trains. A run begun with other settings, or other `facts` (the questions a fold holds out),
    is refused: resuming it would finish the old run and record it under the new settings. A new run is marked."""
    facts = facts or {}
    planned = load_record(run_dir / PLAN_RECORD, settings, "was started")
    if planned is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_record(run_dir / PLAN_RECORD, facts, settings)
    else:
        check_facts(run_dir, planned, facts, "was started")


def check_facts(run_dir: Path, had: dict, facts: dict, done: str) -> None:
    """Refuse a run that `done` ("finished", "was started") with other facts than planned now (kfold's number of
    folds and held-out questions), `had` and `facts` compared key by key: its results would pass for those of the
    plan or data of now."""
    changed = [f"{key} ({had.get(key)!r} there, {facts.get(key)!r} now)"
               for key in sorted({*had, *facts}) if had.get(key) != facts.get(key)]
    if changed:
        raise ConfigError(f"{run_dir} {done} with other {', '.join(changed)} (another plan, or the data changed); "
                          "choose another --out, or delete that folder to run it again")


def load_record(path: Path, settings: dict, done: str = "finished") -> dict | None:
    """A finished run's record (without its config), or None when there is none. A run finished with other settings
    than `settings` is refused (train.output_dir aside: the folder may have moved)."""
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    then, defaults = record.pop("config"), config_to_dict(RunConfig())
    # a key the record lacks (added to mrc-cli since) had its default then
    was = {section: {key: then.get(section, {}).get(key, default) for key, default in values.items()}
           for section, values in defaults.items()}
    changed = [f"{section}.{key}: {was[section][key]!r} there, {value!r} now"
               for section, values in settings.items() for key, value in values.items()
               if value != was[section][key] and (section, key) != ("train", "output_dir")]
    if changed:
        raise ConfigError(f"{path.parent} {done} with other settings ({'; '.join(changed)}); choose another --out, "
                          "or delete that folder to run it again")
    return record


def write_json(path: Path, obj: dict) -> None:
    """Written beside `path` and renamed over it: a half-written record must not pass for a finished run."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=float), encoding="utf-8")
    os.replace(tmp, path)
