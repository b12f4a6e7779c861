"""Files that readers must never see half-written (configs, run records, the best-checkpoint pointer)."""

from __future__ import annotations

import os
from pathlib import Path

from mrc_cli.errors import ConfigError


def write_text_atomically(path: str | Path, text: str) -> None:
    """Written beside `path` under this process's own name and renamed over it: a write cut short (a full disk, a
    kill) leaves the previous file whole and no temporary file behind, and two processes never share one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_output_file(path: str | Path, flag: str = "--out") -> None:
    """Refused before any work: an output file whose name is taken by a folder."""
    if Path(path).is_dir():
        raise ConfigError(f"{flag} {path}: a folder; give a file name (e.g. {Path(path) / 'predictions.json'})")


def check_output_folder(path: str | Path, flag: str = "--out") -> None:
    """Refused before any work: an output folder whose name, or a parent's, is taken by a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path}: an existing file; give a folder")
    taken = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if taken is not None:
        raise ConfigError(f"{flag} {path}: {taken} is a file, not a folder")
