"""One run at a time in a run directory, and a way to ask whether one holds it now.

A second run started into a run directory (by hand, by a requeue script) would interleave its log and metrics with
the first's and overwrite its checkpoints. The main process holds an OS lock (flock) on RUN/.lock for the run's life,
which the OS lets go however the process ends (a kill -9, the kernel's out-of-memory kill; on NFS when the node's
lease lapses): no lock outlives its run, none is judged stale from a pid that may have been reused, and two runs
cannot both take it. The file names the holder for the message.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import IO

from tqdm.auto import tqdm

from mrc_cli.errors import ConfigError
from mrc_cli.files import check_output_folder

LOCK_FILE = ".lock"


def _take(f: IO[str]) -> bool:
    """Take the lock on an open lock file: True when taken, False when another process holds it. OSError where the
    file system has no locks (an NFS mount without a lock service)."""
    import fcntl  # POSIX: Linux and macOS; imported here, so that importing mrc_cli does not need it

    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def in_use(run_dir: Path) -> bool:
    """Whether a run holds `run_dir` now (where locks cannot be taken, none is known to)."""
    lock = run_dir / LOCK_FILE
    if not lock.is_file():
        return False
    with open(lock, "a+", encoding="utf-8") as f, contextlib.suppress(OSError):
        return not _take(f)  # a lock taken here goes when the file closes
    return False


@contextlib.contextmanager
def run_lock(run_dir: Path, flag: str):
    """Hold `run_dir` for this run (the main process only); refuse it, naming the holder, when another run holds it.
    `flag` is the option that chose the folder, for the message."""
    check_output_folder(run_dir, flag)
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_FILE
    with open(lock, "a+", encoding="utf-8") as f:  # kept after the run: the next one locks the same file
        try:
            held = not _take(f)
        except OSError as err:
            held = False
            tqdm.write(f"warning: {lock}: cannot lock it on this file system ({err.strerror}); a second run started "
                       "into this folder would not be refused")
        if held:
            f.seek(0)
            try:
                other = json.loads(f.read())
            except ValueError:  # taken a moment ago, its holder not written yet
                other = {}
            held_by = (f" (process {other.get('pid')} on {other.get('host')}, since {other.get('since')})"
                       if other else "")
            raise ConfigError(f"{run_dir} is in use by another run{held_by}; wait for it or choose another {flag}")
        # a run that failed its checks in a folder it made removes it, lock file and all: one that opened the file
        # before then holds a lock nobody else sees
        if not lock.exists() or os.fstat(f.fileno()).st_ino != os.stat(lock).st_ino:
            raise ConfigError(f"{run_dir} was removed or taken by another run while this one started; start it again")
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                            "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        f.flush()
        try:
            yield
        finally:
            if created and [p.name for p in run_dir.iterdir()] == [lock.name]:  # a run that failed its checks
                lock.unlink()
                run_dir.rmdir()
