"""One worker per state dir: an exclusive lock taken at start, held until exit.

The state dir holds one worker's history (its ledger) whatever port it serves
on; two workers writing one ledger would mix their histories and mark each
other's running jobs WORKER_RESTARTED. The lock is an flock on a file in the
dir: the kernel drops it when the process dies, however it dies, so a crashed
worker never leaves the dir locked.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "worker.lock"


class StateDirInUse(Exception):
    """Another live worker holds this state dir."""


class StateDirLock:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> StateDirLock:
        """Take the lock or raise StateDirInUse (naming the holder's pid) at once."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StateDirInUse(
                f"state dir {self.path.parent} is in use by another worker (pid {holder}); "
                "give each worker its own --state-dir"
            ) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None
