"""Files that readers must never see half-written (configs, run records, results and charts, the best-checkpoint
pointer), and JSON that every reader can parse."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from mrc_cli.errors import ConfigError, Interrupted

LEFTOVER_AGE = 3600.0  # seconds: a temporary file or folder of a dead process untouched that long was left behind


def write_text_atomically(path: str | Path, text: str) -> None:
    """`text` as the whole of `path`, or `path` as it was (`written_atomically`)."""
    with written_atomically(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def written_atomically(path: str | Path) -> Iterator[Path]:
    """A path beside `path`, under this process's own name, to write the file to (text, a chart's PNG), renamed over
    `path` when the block ends without an error: a write cut short (a full disk, an exception, a kill) leaves the
    previous file whole (and, unless the process was killed outright, no temporary file behind: SIGTERM unwinds the
    block, `sigterm_unwinds`), and two processes never share one. The temporary name ends in
    `path`'s suffix, by which matplotlib's savefig picks the format."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    with sigterm_unwinds():
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def folder_written_whole(folder: str | Path, keep: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """A folder of this process's own beside `folder` to write into, which replaces `folder` (and whatever it held)
    when the block ends without an error: no reader meets a half-written folder, and none of an earlier one's files
    stay beside the new ones (a folder cannot be renamed onto a full one: the old one is moved aside first). An
    existing empty folder is written in place (a mount point cannot be renamed), and emptied again where the block
    fails. `keep(folder)` true when the block ends: another process wrote it meanwhile, and its folder stays (such a
    folder, which processes may write at once, is never written in place). SIGTERM unwinds the block as an error
    does (`sigterm_unwinds`); what a process killed outright left beside `folder` goes the next time it is written."""
    folder = Path(folder).resolve()
    with sigterm_unwinds():
        if keep is None and folder.is_dir() and not any(folder.iterdir()):
            try:
                yield folder
            except BaseException:
                for child in folder.iterdir():
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
                raise
            return
        with _written_beside(folder, keep) as mine:
            yield mine


@contextlib.contextmanager
def _written_beside(folder: Path, keep: Callable[[Path], bool] | None) -> Iterator[Path]:
    _remove_leftovers(folder)
    mine = folder.with_name(f".{folder.name}.{os.getpid()}")
    stale = folder.with_name(f".{folder.name}.stale.{os.getpid()}")
    shutil.rmtree(mine, ignore_errors=True)
    mine.mkdir(parents=True)
    try:
        yield mine
        if keep is not None and keep(folder):
            return
        if folder.exists():
            folder.rename(stale)
        try:
            mine.rename(folder)
        except OSError as err:  # another process's folder came first, between the two renames
            if not (err.errno in (errno.ENOTEMPTY, errno.EEXIST) and keep is not None and keep(folder)):
                raise
    finally:
        shutil.rmtree(mine, ignore_errors=True)
        shutil.rmtree(stale, ignore_errors=True)


def _remove_leftovers(folder: Path) -> None:
    """The folders `_written_beside` left beside `folder` in processes that no longer run (a kill -9, an out-of-memory
    kill): `.NAME.PID` and `.NAME.stale.PID`, untouched for an hour (a process of that number on another machine, on a
    shared file system, may still be writing one)."""
    pattern = re.compile(rf"\.{re.escape(folder.name)}\.(?:stale\.)?(\d+)")
    for leftover in folder.parent.iterdir() if folder.parent.is_dir() else []:
        match = pattern.fullmatch(leftover.name)
        if match and leftover.is_dir() and not process_alive(int(match.group(1))) \
                and time.time() - leftover.stat().st_mtime > LEFTOVER_AGE:
            shutil.rmtree(leftover, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (another user's counts: it may still be writing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """SIGTERM (`kill`, a scheduler's time limit) raises `Interrupted` in the block, as Ctrl-C raises
    KeyboardInterrupt: by default it ends the process on the spot, and the block's `finally` (which removes its
    temporary files) never runs. A handler someone else set (training's checkpoint-and-stop) stays theirs, and a
    thread other than the main one cannot set any."""
    ours = signal.getsignal(signal.SIGTERM) == signal.SIG_DFL and threading.current_thread() is threading.main_thread()
    if ours:
        signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        if ours:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted(f"stopped by {signal.Signals(signum).name} before its output was complete; nothing was replaced "
                      "and its temporary files are removed: run the command again", signum)


def check_output_file(path: str | Path, flag: str = "--out", example: str = "predictions.json",
                      data: str | Path | None = None) -> None:
    """Refused before any work: an output file whose name is taken by a folder, or whose folder's by a file, or
    that is the `data` file read."""
    _check_creatable(Path(path), flag)  # first: a name too long makes is_dir raise
    if Path(path).is_dir():
        raise ConfigError(f"{flag} {path}: a folder; give a file name (e.g. {Path(path) / example})")
    _check_parents(Path(path), flag)
    if data is not None and Path(data).is_file() and Path(path).resolve() == Path(data).resolve():
        raise ConfigError(f"{flag} {path}: the data file itself, which this would overwrite; write to another file, "
                          f"e.g. {flag} {example}")


def check_output_folder(path: str | Path, flag: str = "--out") -> None:
    """Refused before any work: an output folder whose name, or a parent's, is taken by a file."""
    path = Path(path)
    _check_creatable(path, flag)  # first: a name too long makes exists raise
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path}: an existing file; give a folder")
    _check_parents(path, flag)


def refuse_other_files(folder: Path, flag: str, ours: Callable[[Path], bool], what: str, ignored: str = "") -> None:
    """A folder that holds files and none of `ours` (what the command writes there) is refused before any work: a run
    directory, a saved ensemble or a model folder would get the command's folders among its files. `ignored`: a file
    that says nothing about the folder (the lock file the command itself may have just made)."""
    others = sorted(entry for entry in folder.iterdir() if entry.name != ignored) if folder.is_dir() else []
    if others and not any(ours(entry) for entry in others):
        names = ", ".join(entry.name for entry in others[:4]) + (f" and {len(others) - 4} more" if len(others) > 4 else "")
        raise ConfigError(f"{flag} {folder} holds other files ({names}) and no {what}: choose a new or empty folder")


def _check_creatable(path: Path, flag: str) -> None:
    """What the system would refuse when the command writes its results, after the work: a name too long for the
    file system, a link to nothing on the way, a folder this user cannot write in. Walked from the root: a name too
    long makes even the check of whether it exists fail."""
    path = Path(os.path.abspath(path))
    holder, rest = Path(path.anchor), list(path.parts[1:])  # holder: the deepest existing folder, which gets the writes
    limit = os.pathconf(holder, "PC_NAME_MAX")
    while rest:
        _refuse_long_name(rest[0], limit, path, flag)
        step = holder / rest[0]
        if step.is_symlink() and not step.exists():
            raise ConfigError(f"{flag} {path}: {step} is a link to {os.readlink(step)}, which does not exist")
        if not step.is_dir():
            break
        holder, limit = step, os.pathconf(step, "PC_NAME_MAX")
        rest.pop(0)
    for part in rest[1:]:  # folders and the file still to be made, on the holder's file system
        _refuse_long_name(part, limit, path, flag)
    if not os.access(holder, os.W_OK):
        raise ConfigError(f"{flag} {path}: {holder} is not writable by this user; choose another place")


def _refuse_long_name(name: str, limit: int, path: Path, flag: str) -> None:
    if len(os.fsencode(name)) > limit:
        raise ConfigError(f"{flag} {path}: the name {name[:20]}... is {len(os.fsencode(name))} bytes long, and the "
                          f"file system takes {limit} at most; choose a shorter name")


def _check_parents(path: Path, flag: str) -> None:
    taken = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if taken is not None:
        raise ConfigError(f"{flag} {path}: {taken} is a file, not a folder")


def to_json(obj, **options) -> str:
    """JSON that strict parsers read too (jq, JavaScript: RFC 8259 has no Infinity or NaN, which Python's json
    writes): +-inf as +-the largest float, so orders hold (the null odds of a question without a span against any
    threshold), NaN as null, numpy numbers as Python's."""
    return json.dumps(_strict(obj), allow_nan=False, **options)


def from_json(text: str, **options):
    """JSON as `to_json` wrote it: +-the largest float back to +-inf (infinite null odds stay infinite, "1 above the
    highest finite odds" skips them, a setting of inf equals itself again). `options`: json.loads's others."""
    return json.loads(text, parse_float=lambda number: _infinite_again(float(number)), **options)


def _infinite_again(value: float) -> float:
    return math.copysign(math.inf, value) if abs(value) == sys.float_info.max else value


def _strict(value):
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return None
        return math.copysign(sys.float_info.max, value) if math.isinf(value) else value
    if isinstance(value, np.integer):
        return int(value)
    return value
