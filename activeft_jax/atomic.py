"""Temporary files of atomic writes, and removing the ones a killed process left behind.

An atomic write creates ``<name>.tmp-<host>-<pid>-<8 hex digits>`` beside the
file, writes and fsyncs it, then renames it over ``<name>``; a reader sees the
old file or the new one, never a mix. A process killed before the rename leaves
the temporary file behind; `remove_stale` (called before the next write or read
of ``<name>``) deletes those of ``<name>`` whose writer is gone: written on this
host by a process id that no longer runs. Nothing else is touched: not other
names, not files of another host (on a shared file system), not a live
process's write in progress.

    with atomic_file("out.json", "w") as f:
        f.write(text)
    atomic_write("fig.png", lambda f: fig.savefig(f, format="png"))
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import stat
import time
from typing import IO, Callable, Iterator, Union

__all__ = ["atomic_file", "atomic_write", "remove_stale", "tmp_name"]

PathLike = Union[str, "os.PathLike[str]"]

_SUFFIX = re.compile(r"\.tmp-([A-Za-z0-9]{0,32})-([0-9]{1,10})-[0-9a-f]{8}\Z")
# Names written before this module: active_finetune's `<name>.tmp-<pid>` (removed when the
# process is gone) and the embedding cache's tempfile.mkstemp `<name>.<8 chars>.tmp` (no
# process id: removed once an hour old).
_LEGACY_PID_SUFFIX = re.compile(r"\.tmp-([0-9]{1,10})\Z")
_LEGACY_CACHE_SUFFIX = re.compile(r"\.[a-z0-9_]{8}\.tmp\Z")
_LEGACY_AGE_S = 3600.0


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32]


def tmp_name(path: PathLike) -> str:
    """A fresh temporary name beside `path` for this process."""
    return f"{os.fspath(path)}.tmp-{_host()}-{os.getpid()}-{secrets.token_hex(4)}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":  # no harmless liveness probe (os.kill(pid, 0) is CTRL_C_EVENT)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's live process
        return True
    return True


def remove_stale(path: PathLike) -> list[str]:
    """Deletes the temporary files of killed writes of `path`; returns their paths."""
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    try:
        entries = os.listdir(directory)
    except OSError:  # no directory yet, or unreadable: nothing of ours to remove
        return []
    host, now, removed = _host(), time.time(), []
    for entry in entries:
        if not entry.startswith(name + "."):
            continue
        rest = entry[len(name):]
        full = os.path.join(directory, entry)
        m, legacy = _SUFFIX.fullmatch(rest), _LEGACY_PID_SUFFIX.fullmatch(rest)
        if m is not None:
            stale = m.group(1) == host and not _alive(int(m.group(2)))
        elif legacy is not None:
            stale = not _alive(int(legacy.group(1)))
        elif _LEGACY_CACHE_SUFFIX.fullmatch(rest) and name.endswith(".npz"):
            try:
                stale = now - os.stat(full).st_mtime > _LEGACY_AGE_S
            except OSError:
                continue
        else:
            continue
        if stale and os.path.isfile(full) and not os.path.islink(full):
            try:
                os.unlink(full)
            except FileNotFoundError:
                continue
            removed.append(full)
    return removed


@contextlib.contextmanager
def atomic_file(path: PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """A file object whose content replaces `path` when the block ends without error.

    Stale temporary files of `path` are removed first; on an error the
    temporary file is deleted and `path` is left as it was. After the rename the
    directory is fsynced, so the new name survives a crash too.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb'; got {mode!r}")
    path = os.fspath(path)
    remove_stale(path)
    tmp = tmp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _sync_directory(path)


def _sync_directory(path: str) -> None:
    """Makes the rename itself durable (fsync of the directory), where the system allows it."""
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Calls `write(f)` on a binary file that becomes `path` only once it is complete.

    `atomic_file(path, "wb")`, except that an existing `path` that is not a regular file
    (`/dev/stdout`, a FIFO) is written directly: there is nothing to rename over.
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
    with atomic_file(path, "wb") as f:
        write(f)
