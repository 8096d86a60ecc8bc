"""One worker per state folder: an advisory lock taken before the worker joins its consumer group.

Two workers sharing ``STREAMREC_STATE_DIR`` used to both join the group; the second then died
~40 s later on RocksDB's own ``LOCK`` with a traceback naming no setting (and forced a second
rebalance on the first). ``acquire`` takes ``fcntl.flock`` on ``<state_dir>/worker.lock`` at once and
keeps it for the life of the process: the kernel releases it when the process ends in any way
(SIGKILL included), so a crashed worker never blocks its own restart. The holder's pid is written
into the file so the refusal can name it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "worker.lock"


class StateDirUnusable(RuntimeError):
    """The state folder cannot be created or its lock file cannot be opened."""


class StateDirInUse(StateDirUnusable):
    """Another live process holds the state folder."""


def acquire(state_dir: str | os.PathLike) -> int:
    """Lock ``state_dir`` for this process; return the lock file's descriptor (keep it open).

    Raises ``StateDirInUse`` with one line naming the setting, the folder and the holder's pid, or
    ``StateDirUnusable`` (one line naming the setting) when the folder cannot be created or opened.
    """
    folder = Path(state_dir).resolve()
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StateDirUnusable(
            f"STREAMREC_STATE_DIR: cannot use the state folder {folder}: {exc.strerror or exc}"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StateDirInUse(
            f"STREAMREC_STATE_DIR: the state folder {folder} is in use by another worker "
            f"(pid {holder}); give each worker its own STREAMREC_STATE_DIR"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
