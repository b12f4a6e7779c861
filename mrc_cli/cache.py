"""The cache of validated examples and features as a user sees it: its entries, their sizes and last use, and
pruning them. Entries are named by content hashes, so nothing else tells a user which ones a finished experiment
left behind; each is touched when a run loads it (`mark_used`), and pruning goes by that time."""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mrc_cli.files import LEFTOVER_AGE, process_alive

HOUR, DAY = 3600.0, 86400.0
# examples/examples-<hash>/ (a folder); features/features-<hash>[_NNNNN_of_NNNNN].arrow and features-<hash>.counts.json
_FEATURES = re.compile(r"^(features-[0-9a-f]+)(?:_\d+_of_\d+)?\.(?:arrow|counts\.json)$")
_EXAMPLES = re.compile(r"^examples-[0-9a-f]+$")
_PARTIAL = re.compile(r"\.tmp-(\d+)$")  # an examples entry being written by that process (validate._save_to_cache)


@dataclass
class Entry:
    kind: str  # "examples" | "features" | "leftover": a dead process's partial entry, or a file no entry owns
    name: str
    paths: list[Path]
    bytes: int
    last_used: float  # seconds since the epoch: when a run last wrote or loaded it


def mark_used(path: Path) -> None:
    """Record that a run loaded the entry that `path` belongs to (its modification time is the entry's last use)."""
    try:
        os.utime(path)
    except OSError:  # a cache another user owns, say: pruning then goes by when it was written
        pass


def entries(root: str | Path) -> list[Entry]:
    """Every entry under the cache folder `root`, least recently used first."""
    root = Path(root)
    found = [_entry("examples", folder.name, [folder]) for folder in _children(root / "examples")
             if _EXAMPLES.match(folder.name) and folder.is_dir()]
    found += [_entry("leftover", folder.name, [folder]) for folder in _children(root / "examples")
              if not _EXAMPLES.match(folder.name) and not _being_written(folder.name)]
    groups: dict[str, list[Path]] = {}
    for path in _children(root / "features"):
        match = _FEATURES.match(path.name)
        groups.setdefault(match.group(1) if match else f"leftover:{path.name}", []).append(path)
    for name, paths in groups.items():
        leftover = name.startswith("leftover:")
        found.append(_entry("leftover" if leftover else "features", name.removeprefix("leftover:"), paths))
    return sorted(found, key=lambda entry: entry.last_used)


def prune(root: str | Path, unused_days: float | None = None, max_gb: float | None = None, everything: bool = False,
          dry_run: bool = False) -> tuple[list[Entry], list[Entry]]:
    """Remove the entries not used for `unused_days`, then the least recently used ones until the cache holds at most
    `max_gb`, or all of them (`everything`); leftovers of dead processes (older than an hour) go too. Returns (removed,
    kept); `dry_run` removes nothing. A run that loads a removed entry tokenizes again."""
    now, removed, kept, listed = time.time(), [], [], entries(root)
    held = sum(entry.bytes for entry in listed)
    for entry in listed:
        age = (now - entry.last_used) / DAY
        if entry.kind == "leftover":  # a file a running process writes is fresh: one an hour old was left behind
            goes = age > LEFTOVER_AGE / DAY
        else:
            goes = (everything or (unused_days is not None and age > unused_days)
                    or (max_gb is not None and held > max_gb * 1e9))
        if goes:
            held -= entry.bytes
            removed.append(entry)
            if not dry_run:
                for path in entry.paths:
                    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        else:
            kept.append(entry)
    return removed, kept


def describe(listed: list[Entry], now: float | None = None) -> str:
    """`3 entries, 52.1 MB (examples 2, features 1), last used 5 min to 12 days ago`."""
    if not listed:
        return "no entries"
    now = time.time() if now is None else now
    kinds = {kind: sum(entry.kind == kind for entry in listed) for kind in ("examples", "features", "leftover")}
    ages = [now - entry.last_used for entry in listed]
    return (f"{len(listed)} entr{'y' if len(listed) == 1 else 'ies'}, {size(sum(entry.bytes for entry in listed))} ("
            + ", ".join(f"{kind} {n}" for kind, n in kinds.items() if n)
            + f"), last used {_age(min(ages))} to {_age(max(ages))} ago")


def size(num_bytes: int) -> str:
    return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e9 else f"{num_bytes / 1e6:.1f} MB"


def _age(seconds: float) -> str:
    if seconds < 2 * HOUR:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / HOUR:.0f} h" if seconds < 2 * DAY else f"{seconds / DAY:.0f} days"


def _children(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _being_written(name: str) -> bool:
    """A partial examples entry whose process still runs."""
    match = _PARTIAL.search(name)
    return match is not None and process_alive(int(match.group(1)))


def _entry(kind: str, name: str, paths: list[Path]) -> Entry:
    files = [f for path in paths for f in ([path] if path.is_file() else path.rglob("*")) if f.is_file()]
    return Entry(kind, name, paths, sum(f.stat().st_size for f in files),
                 max(path.stat().st_mtime for path in files or paths))
