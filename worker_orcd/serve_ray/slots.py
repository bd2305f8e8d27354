"""State dirs of the replicas on a node, and the ledgers replicas leave behind.

Each replica runs its worker on a slot, `<state base>/replica-<n>`: the lowest
slot no live replica holds. A replica holds its slot with an flock on
`slot.lock`, which the kernel drops however the replica ends; so a replica that
starts after one died takes the dead one's slot, and its worker's start-up marks
the jobs the dead worker left running `WORKER_RESTARTED` (the ledger's own
recovery). Until then the dead slot's ledger is an orphan: no worker serves it,
and look-ups read it directly, read-only, showing those jobs as the recovery
will write them.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from worker_orcd.api.records import JobRecord, JobSummary, from_row, summary_from_row
from worker_orcd.config import LEDGER_FILE
from worker_orcd.errors import ErrorCode
from worker_orcd.jobs.ledger import RESTARTED_MESSAGE
from worker_orcd.state_dir import LOCK_FILE as WORKER_LOCK

SLOT_PREFIX = "replica-"
SLOT_LOCK = "slot.lock"
MAX_SLOTS = 1024


class Slot:
    """A state dir held by this process until `release`."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @property
    def name(self) -> str:
        return self.path.name

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def take_slot(base: Path) -> Slot:
    """The lowest slot under `base` that no live replica holds, locked for this process."""
    base.mkdir(parents=True, exist_ok=True)
    for n in range(MAX_SLOTS):
        path = base / f"{SLOT_PREFIX}{n}"
        path.mkdir(exist_ok=True)
        fd = os.open(path / SLOT_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return Slot(path, fd)
    raise RuntimeError(f"no free replica slot under {base} ({MAX_SLOTS} in use)")


def lock_is_free(lock_path: Path) -> bool:
    """Whether nobody holds the flock on `lock_path` (a missing file is free)."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        # Shared and non-blocking: a holder's exclusive lock refuses it; it is
        # dropped at once, so a replica taking the slot meanwhile only moves on.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def orphan_ledgers(base: Path) -> Iterator[Path]:
    """Ledgers under `base` that no live replica and no live worker holds."""
    if not base.is_dir():
        return
    for path in sorted(base.glob(f"{SLOT_PREFIX}*")):
        ledger = path / LEDGER_FILE
        if ledger.is_file() and lock_is_free(path / SLOT_LOCK) and lock_is_free(path / WORKER_LOCK):
            yield ledger


def _connect(ledger: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=2)
    conn.row_factory = sqlite3.Row
    return conn


R = TypeVar("R", JobRecord, JobSummary)


def _as_recovered(record: R, ledger: Path) -> R:
    """A row its dead worker left queued or running, as the next start will write it."""
    if record["state"] not in ("queued", "running"):
        return record
    try:
        mtime = ledger.with_name(ledger.name + "-wal").stat().st_mtime
    except OSError:
        mtime = ledger.stat().st_mtime
    ended = datetime.fromtimestamp(mtime, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    recovered = record.copy()
    recovered["state"] = "failed"
    recovered["ended_at"] = record["ended_at"] or ended
    recovered["error"] = {"code": ErrorCode.WORKER_RESTARTED.value, "message": RESTARTED_MESSAGE, "retriable": True}
    return recovered


def find_in_orphans(base: Path, tenant: str, job_id: str) -> JobRecord | None:
    for ledger in orphan_ledgers(base):
        try:
            with closing(_connect(ledger)) as conn:
                row = conn.execute("SELECT * FROM jobs WHERE tenant = ? AND job_id = ?", (tenant, job_id)).fetchone()
        except sqlite3.Error:
            continue  # a ledger being replaced under us: the adopter answers soon
        if row is not None:
            return _as_recovered(from_row(row), ledger)
    return None


def list_in_orphans(base: Path, tenant: str, state: str | None, limit: int) -> list[JobSummary]:
    """The tenant's newest jobs in orphan ledgers, filtered by the state they will have."""
    if state in ("queued", "running"):
        return []  # nothing runs on a dead worker: its queued and running jobs read failed
    where, args = "tenant = ?", [tenant]
    if state == "failed":
        where += " AND state IN ('failed', 'queued', 'running')"
    elif state is not None:
        where += " AND state = ?"
        args.append(state)
    found: list[JobSummary] = []
    for ledger in orphan_ledgers(base):
        try:
            with closing(_connect(ledger)) as conn:
                rows = conn.execute(
                    f"SELECT * FROM jobs WHERE {where} ORDER BY seq DESC LIMIT ?", (*args, limit)
                ).fetchall()
        except sqlite3.Error:
            continue
        found += [_as_recovered(summary_from_row(row), ledger) for row in rows]
    return found
