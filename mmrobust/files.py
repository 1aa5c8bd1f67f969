"""Atomic file writes and folder locks (torch-free, so light commands stay light).

Every file mmrobust writes goes to a temporary sibling first and is renamed
into place: a crash leaves either the old file or the new one, never half of one.
A full disk is reported as such (:class:`DiskFullError`), whatever the writer
raised. A folder that one process writes into (a run, a prepared cache) is
held with an advisory lock (:func:`exclusive`), which the operating system
drops when the process ends, even by kill -9.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

LOCK_FILE = ".lock"
NEARLY_FULL = 1 << 20  # bytes free below which a failed write is put down to a full disk


class DiskFullError(OSError):
    """A write that failed because the file system is full; the message names the file."""


class FolderInUseError(RuntimeError):
    """A folder another process holds with :func:`exclusive`; the message names that process."""


@contextlib.contextmanager
def exclusive(folder: str | Path, what: str) -> Iterator[None]:
    """Hold ``folder`` (created if missing) for the duration; a second holder gets
    :class:`FolderInUseError` naming the first one's pid and command.

    ``what`` says what the folder is ("run directory", "cache") in the message.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl  # noqa: PLC0415 - POSIX only
    except ImportError:  # pragma: no cover - Windows: no lock
        yield
        return
    with open(folder / LOCK_FILE, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise FolderInUseError(f"{what} {folder} is in use by {holder}; wait for it to finish or use "
                                   "another folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} ({' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])})\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(handle)`` on a temporary file, fsync, and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(error, Exception) and _disk_full(error, path.parent):
            raise DiskFullError(errno.ENOSPC, f"no space left on device writing {path}") from error
        raise
    return path


def _disk_full(error: Exception, folder: Path) -> bool:
    """Whether a failed write is down to a full disk: ENOSPC, or (for writers such as torch's that say
    something else) next to nothing free on the file system."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(folder).free < NEARLY_FULL
    except OSError:
        return False


def write_json(path: str | Path, data: Any) -> Path:
    text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n"
    return atomic_write(path, lambda handle: handle.write(text.encode()))


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode()))
