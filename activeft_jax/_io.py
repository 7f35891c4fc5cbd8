"""Atomic file output: write a temporary file beside the target, then rename it over the target.

A reader never sees a half-written file, and a failed write (a full disk, an interrupt)
leaves the target as it was and no temporary file behind.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from typing import IO, Callable, Union

__all__ = ["atomic_write", "remove_stale"]

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Calls `write(f)` on a binary file that becomes `path` only once it is complete.

    The temporary file (`.<name>.<pid>.<random>.tmp`, in the same directory, so the rename is
    atomic) is created with the usual permissions (0o666 less the umask), flushed and
    fsynced, then renamed over `path`. On any error it is removed and the error re-raised.
    An existing `path` that is not a regular file (`/dev/stdout`, a FIFO) is written
    directly, as there is nothing to rename over. Temporary files of earlier writes to
    `path` whose process is gone (killed mid-write) are removed first (`remove_stale`).
    """
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        with open(path, "wb") as f:
            write(f)
        return
    directory, name = os.path.split(os.path.abspath(path))
    remove_stale(directory, name)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True   # someone else's process (or a pid we cannot probe): leave its file
    return True


def remove_stale(directory: PathLike, name: str) -> list:
    """Removes `.<name>.<pid>.<hex>.tmp` in `directory` whose process `pid` is gone.

    Only our own naming pattern is touched, and never the file of a live writer (this
    process's included). Returns the paths removed.
    """
    pattern = re.compile(re.escape(f".{name}.") + r"(\d+)\.[0-9a-f]{8}\.tmp")
    removed = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry)
        if match is None or _alive(int(match.group(1))):
            continue
        stale = os.path.join(directory, entry)
        try:
            os.unlink(stale)
            removed.append(stale)
        except OSError:
            pass
    return removed
