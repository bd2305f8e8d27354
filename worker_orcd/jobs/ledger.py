"""The durable job ledger: every job's record, in an embedded SQLite database.

A row is written at each state change (queued, running, cancel requested,
terminal). The thread that changes a job only snapshots it into a queue; one
writer thread commits the snapshots in order, in batches, so no thread on a
job's path (event loop, dispatcher) waits for the disk. A running job's cancel
request is committed with the job's end when that comes within
CANCEL_ROW_WAIT_SEC (as it does when the engine stops promptly): the commit then
never competes for a core with the engine threads that are stopping for it. WAL mode with
synchronous=NORMAL survives a killed process (not a power cut) and lets readers
run beside the writer.

At start-up, rows a crashed process left queued or running become failed with
WORKER_RESTARTED: nothing is silently lost.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from worker_orcd.api import records
from worker_orcd.api.records import JobRecord, JobSummary
from worker_orcd.errors import ErrorCode
from worker_orcd.jobs.job import Job, now_iso
from worker_orcd.log import log_event

TEXT_CAP_BYTES = 64 * 1024
# A running job's cancel request waits this long for the job's end, to be committed with it.
CANCEL_ROW_WAIT_SEC = 0.05
PRUNE_EVERY = 100  # writes between retention passes
RESTARTED_MESSAGE = "the worker restarted before this job ended; resubmit it"

# Rows are written by column name; the column list is the record's (worker_orcd.api.records).
_COLUMNS = records.COLUMNS

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    job_id TEXT NOT NULL,
    state TEXT NOT NULL,
    correlation_id TEXT,
    prompt_tokens INTEGER,
    queued_at TEXT,
    started_at TEXT,
    ended_at TEXT,
    cancel_requested_at TEXT,
    canceled_at TEXT,
    cancel_reason TEXT,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    stop_reason TEXT,
    error_code TEXT,
    error_message TEXT,
    error_retriable INTEGER,
    stop_ms REAL,
    cancel_ms REAL,
    text TEXT NOT NULL DEFAULT '',
    text_truncated INTEGER NOT NULL DEFAULT 0,
    UNIQUE (tenant, job_id)
);
CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs (tenant, seq);
"""

_INSERT = f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join(':' + c for c in _COLUMNS)}) "
_UPSERT = (
    _INSERT
    + "ON CONFLICT (tenant, job_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c not in records.KEY)
)
# A job id already in this ledger keeps the row it has.
_INSERT_NEW = _INSERT + "ON CONFLICT (tenant, job_id) DO NOTHING"
LEGACY_PATTERN = "jobs-*.sqlite3"


def cap_text(text: str, cap: int = TEXT_CAP_BYTES) -> tuple[str, bool]:
    """At most `cap` bytes of UTF-8, cut on a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= cap:
        return text, False
    return data[:cap].decode("utf-8", "ignore"), True


LedgerRow = dict[str, Any]  # a row by column name


def job_row(job: Job) -> LedgerRow:
    """The job's row as of now; taken on the thread that changed it."""
    row = records.row_of(job)
    row["text"], row["text_truncated"] = cap_text(row["text"])
    return row


def _key(row: LedgerRow) -> tuple[str, str]:
    return row["tenant"], row["job_id"]


class Ledger:
    def __init__(self, path: Path, *, max_jobs: int = 10000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_jobs = max_jobs
        self._reader = self._connect()
        self._reader_lock = threading.Lock()
        with self._reader_lock:
            self._reader.executescript(_SCHEMA)
        self.adopted = self._adopt_port_named_files()
        self.recovered = self._recover_crashed()
        self._prune(self._reader)
        self._writes: queue.SimpleQueue[LedgerRow | None] = queue.SimpleQueue()
        self._written = 0
        self._queued = 0
        self._count_lock = threading.Lock()
        self._flushed = threading.Condition()
        self._thread = threading.Thread(target=self._write_loop, name="ledger", daemon=True)
        self._thread.start()

    def _with_ends(self, batch: list[LedgerRow]) -> LedgerRow | None:
        """Wait for the ends of the jobs whose cancel request is in `batch`, appending what
        comes meanwhile; returns None if the ledger is closing."""
        waiting = {_key(row) for row in batch if row["state"] == "running" and row["cancel_requested_at"] is not None}
        deadline = time.monotonic() + CANCEL_ROW_WAIT_SEC
        while waiting and (left := deadline - time.monotonic()) > 0:
            try:
                row = self._writes.get(timeout=left)
            except queue.Empty:
                break
            if row is None:
                return None
            batch.append(row)
            if row["state"] not in ("queued", "running"):
                waiting.discard(_key(row))
        return batch[-1]

    # -- writing ---------------------------------------------------------------------------

    def record(self, job: Job) -> None:
        """Queue the job's current state for writing; returns at once."""
        # Snapshot and enqueue under one lock: two threads recording the same job
        # (a cancel request and the job's end) must write in snapshot order, or a
        # stale "running" row could land after the terminal one.
        with self._count_lock:
            row = job_row(job)
            self._queued += 1
            self._writes.put(row)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything recorded so far is committed."""
        with self._count_lock:
            target = self._queued
        with self._flushed:
            return self._flushed.wait_for(lambda: self._written >= target, timeout)

    def close(self) -> None:
        self.flush()
        self._writes.put(None)
        self._thread.join(timeout=10)
        with self._reader_lock:
            self._reader.close()

    # -- reading ---------------------------------------------------------------------------

    def get(self, tenant: str, job_id: str) -> JobRecord | None:
        with self._reader_lock:
            row = self._reader.execute(
                "SELECT * FROM jobs WHERE tenant = ? AND job_id = ?", (tenant, job_id)
            ).fetchone()
        return records.from_row(row) if row is not None else None

    def exists(self, tenant: str, job_id: str) -> bool:
        with self._reader_lock:
            row = self._reader.execute(
                "SELECT 1 FROM jobs WHERE tenant = ? AND job_id = ?", (tenant, job_id)
            ).fetchone()
        return row is not None

    def list(self, tenant: str, *, state: str | None = None, limit: int = 50) -> list[JobSummary]:
        """The tenant's most recent jobs, newest first, without their text."""
        sql = "SELECT * FROM jobs WHERE tenant = ?"
        args: list[Any] = [tenant]
        if state is not None:
            sql += " AND state = ?"
            args.append(state)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        with self._reader_lock:
            rows = self._reader.execute(sql, args).fetchall()
        return [records.summary_from_row(r) for r in rows]

    # -- internals -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _adopt_port_named_files(self) -> int:
        """Take in the rows of ledgers that earlier versions named after host and port
        (`jobs-<worker_id>.sqlite3` in the same dir), so no history is lost by the
        move to one ledger per state dir; each adopted file is renamed `*.adopted`."""
        adopted = 0
        for old in sorted(self.path.parent.glob(LEGACY_PATTERN), key=lambda p: (p.stat().st_mtime, p.name)):
            if old == self.path:
                continue
            source = sqlite3.connect(old, isolation_level=None)
            source.row_factory = sqlite3.Row
            try:
                rows = [dict(r) for r in source.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs ORDER BY seq")]
            except sqlite3.Error as exc:
                log_event("ledger_adopt_failed", logging.WARNING, file=old.name, error=str(exc))
                continue
            finally:
                source.close()  # the last connection: its WAL is folded in and removed
            with self._reader_lock:
                self._reader.execute("BEGIN")
                before = self._reader.total_changes
                self._reader.executemany(_INSERT_NEW, rows)
                adopted += self._reader.total_changes - before
                self._reader.execute("COMMIT")
            old.rename(old.with_name(old.name + ".adopted"))
            log_event("ledger_adopted", file=old.name, jobs=len(rows))
        return adopted

    def _recover_crashed(self) -> int:
        with self._reader_lock:
            cur = self._reader.execute(
                "UPDATE jobs SET state = 'failed', error_code = ?, error_message = ?, "
                "error_retriable = 1, ended_at = ? WHERE state IN ('queued', 'running')",
                (ErrorCode.WORKER_RESTARTED.value, RESTARTED_MESSAGE, now_iso()),
            )
            return cur.rowcount

    def _prune(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "DELETE FROM jobs WHERE seq <= (SELECT seq FROM jobs ORDER BY seq DESC LIMIT 1 OFFSET ?)",
            (self.max_jobs,),
        )

    def _write_loop(self) -> None:
        conn = self._connect()
        since_prune = 0
        while True:
            row = self._writes.get()
            batch = []
            while row is not None:
                batch.append(row)
                if len(batch) >= 256:
                    break
                try:
                    row = self._writes.get_nowait()
                except queue.Empty:
                    break
            if row is not None:
                row = self._with_ends(batch)
            if batch:
                try:
                    conn.execute("BEGIN")
                    conn.executemany(_UPSERT, batch)
                    since_prune += len(batch)
                    if since_prune >= PRUNE_EVERY:
                        self._prune(conn)
                        since_prune = 0
                    conn.execute("COMMIT")
                except sqlite3.Error as exc:  # a full disk must not stop the worker
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    log_event("ledger_write_failed", logging.ERROR, rows=len(batch), error=str(exc))
                with self._flushed:
                    self._written += len(batch)
                    self._flushed.notify_all()
            if row is None:
                conn.close()
                return
