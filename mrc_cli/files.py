"""Files that readers must never see half-written (configs, run records, the best-checkpoint pointer)."""

from __future__ import annotations

import os
from pathlib import Path


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
