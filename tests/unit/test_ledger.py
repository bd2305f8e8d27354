"""The job ledger (specs/operating.md, "The ledger"): rows at every state change, capped text, retention,
crash recovery and listing, on a temporary SQLite file and real Job objects."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from worker_orcd.errors import ErrorCode
from worker_orcd.jobs import events, ledger as ledger_module
from worker_orcd.jobs.cancel_flag import CancelReason
from worker_orcd.jobs.job import Job, JobState, Outcome, Sampling
from worker_orcd.jobs.ledger import TEXT_CAP_BYTES, Ledger, cap_text
from worker_orcd.jobs.manager import JobManager
from worker_orcd.jobs.queue import JobQueue
from worker_orcd.jobs.registry import JobRegistry

SAMPLING = Sampling(max_tokens=8, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0, seed=7)


def new_job(job_id: str, tenant: str = "", **kwargs) -> Job:
    return Job(
        job_id=job_id,
        prompt_tokens=[1, 2, 3, 4],
        sampling=SAMPLING,
        model="test-model",
        correlation_id=f"corr-{job_id}",
        tenant=tenant,
        **kwargs,
    )


def complete(job: Job, text: str = "hello", tokens_out: int = 2) -> None:
    job.tokens_out = tokens_out
    job.append_text(text)
    job.finish(
        Outcome(JobState.COMPLETED, events.end(tokens_out, 1.5, "max_tokens"), stop_reason="max_tokens")
    )


def cancel_running(job: Job, text: str = "par", tokens_out: int = 1) -> None:
    job.request_cancel(CancelReason.CLIENT)
    job.tokens_out = tokens_out
    job.append_text(text)
    job.finish(
        Outcome(
            JobState.CANCELLED,
            events.error(
                ErrorCode.CANCELLED, events.CANCELLED_MESSAGE, False, tokens_out=tokens_out, stop_ms=0.4, cancel_ms=2.5
            ),
            error_code=ErrorCode.CANCELLED,
            stop_ms=0.4,
            cancel_ms=2.5,
        )
    )


def fail(job: Job) -> None:
    job.finish(
        Outcome(
            JobState.FAILED,
            events.error(ErrorCode.INTERNAL, "llama_decode failed with status -3", False, tokens_out=0),
            error_code=ErrorCode.INTERNAL,
        )
    )


@pytest.fixture
def path(tmp_path):
    return tmp_path / "jobs-unit.sqlite3"


@pytest.fixture
def ledger(path):
    led = Ledger(path)
    yield led
    led.close()


def raw_rows(path) -> dict[tuple[str, str], dict]:
    """Every row, every column, through a connection of our own (read-only)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return {(r["tenant"], r["job_id"]): dict(r) for r in conn.execute("SELECT * FROM jobs")}
    finally:
        conn.close()


def recorded(ledger: Ledger, job: Job) -> dict:
    assert ledger.flush(), "ledger writer did not catch up"
    record = ledger.get(job.tenant, job.job_id)
    assert record is not None
    return record


# -- WO-LEDGER-1: every state change -----------------------------------------------------


def test_every_state_change_is_recorded(ledger, path):
    manager = JobManager(JobQueue(4), JobRegistry())
    manager.add_listener(ledger.record)
    job = new_job("lifecycle", tenant="acme")

    manager.submit(job)
    row = recorded(ledger, job)
    assert row["state"] == "queued" and row["queued_at"] == job.queued_at
    assert row["started_at"] is None and row["ended_at"] is None and row["error"] is None

    assert manager.queue.take() is job
    job.start()
    row = recorded(ledger, job)
    assert row["state"] == "running" and row["started_at"] == job.started_at

    assert manager.cancel("acme", "lifecycle", CancelReason.CLIENT).value == "prompt"
    row = recorded(ledger, job)
    assert row["state"] == "running"
    assert row["cancel_requested"] is True and row["cancel_requested_at"] == job.cancel_requested_at
    assert row["cancel_reason"] == "client"

    job.tokens_out = 3
    job.append_text("Once upon")
    job.finish(
        Outcome(
            JobState.CANCELLED,
            events.error(ErrorCode.CANCELLED, events.CANCELLED_MESSAGE, False, tokens_out=3, stop_ms=0.7, cancel_ms=3.2),
            error_code=ErrorCode.CANCELLED,
            stop_ms=0.7,
            cancel_ms=3.2,
        )
    )
    row = recorded(ledger, job)
    assert row == job.snapshot()  # the ledger answers exactly what memory answered
    assert row["state"] == "cancelled" and row["text"] == "Once upon" and row["tokens_out"] == 3
    assert row["error"] == {"code": "CANCELLED", "message": events.CANCELLED_MESSAGE, "retriable": False}
    assert (row["stop_ms"], row["cancel_ms"]) == (0.7, 3.2)
    assert row["ended_at"] == row["canceled_at"] == job.ended_at

    # Columns the API does not show are kept too.
    raw = raw_rows(path)[("acme", "lifecycle")]
    assert raw["correlation_id"] == "corr-lifecycle" and raw["prompt_tokens"] == 4
    assert raw["error_retriable"] == 0


@pytest.mark.parametrize(
    "drive, state, error",
    [
        (lambda j: (j.start(), complete(j, "hi there", 2)), "completed", None),
        (lambda j: (j.start(), fail(j)), "failed", ("INTERNAL", False)),
        (
            lambda j: (j.request_cancel(CancelReason.SHUTDOWN), j.finish_cancelled_unstarted()),
            "failed",
            ("WORKER_SHUTDOWN", True),
        ),
        (
            lambda j: (j.request_cancel(CancelReason.CLIENT), j.finish_cancelled_unstarted()),
            "cancelled",
            ("CANCELLED", False),
        ),
    ],
    ids=["completed", "failed", "queued-shutdown", "queued-cancel"],
)
def test_terminal_rows(ledger, drive, state, error):
    job = new_job(f"terminal-{state}-{error and error[0]}", on_change=ledger.record)
    drive(job)
    row = recorded(ledger, job)
    assert row == job.snapshot()
    assert row["state"] == state and row["ended_at"] is not None
    if error is None:
        assert row["error"] is None and row["stop_reason"] == "max_tokens"
        assert row["text"] == "hi there" and row["tokens_out"] == 2
    else:
        assert (row["error"]["code"], row["error"]["retriable"]) == error
        assert row["error"]["message"]


def test_writes_happen_on_the_writer_thread(ledger, path):
    # Another connection holds the write lock: a writer on the caller's thread
    # would block in record(); the ledger's must only queue.
    blocker = sqlite3.connect(path, isolation_level=None, timeout=10)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        jobs = [new_job(f"offthread-{i}") for i in range(20)]
        done = threading.Event()

        def record_all() -> None:
            for job in jobs:
                ledger.record(job)
            done.set()

        threading.Thread(target=record_all, daemon=True).start()
        assert done.wait(5), "record() waited for the database"
        assert ledger.flush(timeout=0.2) is False  # nothing could be committed yet
        assert ledger.get("", "offthread-0") is None
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert ledger.flush()
    assert all(ledger.exists("", f"offthread-{i}") for i in range(20))


def test_flush_makes_rows_visible_to_other_readers(ledger, path):
    job = new_job("flushed")
    ledger.record(job)
    assert ledger.flush()
    assert raw_rows(path)[("", "flushed")]["state"] == "queued"


def test_close_commits_what_was_recorded(path):
    led = Ledger(path)
    for i in range(50):
        led.record(new_job(f"closing-{i}"))
    led.close()
    assert len(raw_rows(path)) == 50


# -- text cap ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "char",
    ["a", "é", "€", "😀"],
    ids=["1-byte", "2-byte", "3-byte", "4-byte"],
)
@pytest.mark.parametrize("extra", [0, 1, 2, 3])
def test_cap_text_cuts_on_a_character_boundary(char, extra):
    cap = 64
    text = "x" * extra + char * 40
    capped, truncated = cap_text(text, cap)
    data = text.encode()
    assert truncated is (len(data) > cap)
    out = capped.encode()
    assert len(out) <= cap
    assert text.startswith(capped)
    if truncated:
        # Only a character that did not fit whole is dropped.
        assert cap - len(char.encode()) < len(out)
    else:
        assert capped == text


def test_cap_text_limits():
    assert cap_text("") == ("", False)
    exact = "a" * TEXT_CAP_BYTES
    assert cap_text(exact) == (exact, False)
    capped, truncated = cap_text(exact + "b")
    assert (capped, truncated) == (exact, True)


def test_long_text_is_capped_in_the_ledger(ledger):
    job = new_job("long-text", on_change=ledger.record)
    job.start()
    text = "日本語" * 30000  # 270,000 bytes of 3-byte characters
    complete(job, text, tokens_out=5000)
    row = recorded(ledger, job)
    assert row["text_truncated"] is True
    stored = row["text"].encode()
    assert TEXT_CAP_BYTES - 3 < len(stored) <= TEXT_CAP_BYTES
    assert text.startswith(row["text"])
    assert row["tokens_out"] == 5000


def test_short_text_is_not_marked_truncated(ledger):
    job = new_job("short-text", on_change=ledger.record)
    job.start()
    complete(job, "é" * 100)
    row = recorded(ledger, job)
    assert row["text"] == "é" * 100 and row["text_truncated"] is False


# -- WO-LEDGER-3: retention ------------------------------------------------------------------


def test_retention(path, monkeypatch):
    monkeypatch.setattr(ledger_module, "PRUNE_EVERY", 1)  # prune after every batch
    led = Ledger(path, max_jobs=5)
    try:
        for i in range(20):
            led.record(new_job(f"keep-{i:02d}"))
            assert led.flush()
        kept = {job_id for _, job_id in raw_rows(path)}
        assert kept == {f"keep-{i:02d}" for i in range(15, 20)}
        # An update of an old job does not make it new: retention goes by submission.
        led.record(new_job("keep-15"))
        led.record(new_job("keep-20"))
        assert led.flush()
        assert {job_id for _, job_id in raw_rows(path)} == {f"keep-{i:02d}" for i in range(16, 21)}
    finally:
        led.close()


def test_retention_at_start_up(path):
    led = Ledger(path, max_jobs=1000)
    for i in range(30):
        led.record(new_job(f"old-{i:02d}"))
    led.close()
    led = Ledger(path, max_jobs=10)
    try:
        assert [r["job_id"] for r in led.list("", limit=1000)] == [f"old-{i:02d}" for i in range(29, 19, -1)]
    finally:
        led.close()


def test_retention_bounds_the_table_between_passes(path):
    led = Ledger(path, max_jobs=10)
    try:
        n = 3 * ledger_module.PRUNE_EVERY
        for i in range(n):
            led.record(new_job(f"many-{i:04d}"))
        assert led.flush()
        kept = {job_id for _, job_id in raw_rows(path)}
        assert {f"many-{i:04d}" for i in range(n - 10, n)} <= kept
        assert len(kept) <= 10 + ledger_module.PRUNE_EVERY
    finally:
        led.close()


# -- WO-LEDGER-2: crash recovery -----------------------------------------------------------


def test_crash_recovery_marks_unfinished_rows_restarted(path):
    led = Ledger(path)
    jobs = {name: new_job(name, tenant=("t2" if name == "running-b" else "t1"), on_change=led.record) for name in (
        "queued", "running", "running-b", "cancel-requested", "completed", "cancelled", "failed",
    )}
    for job in jobs.values():
        led.record(job)
    jobs["running"].start()
    jobs["running-b"].start()
    jobs["cancel-requested"].start()
    jobs["cancel-requested"].request_cancel(CancelReason.CLIENT)
    jobs["completed"].start()
    complete(jobs["completed"])
    jobs["cancelled"].start()
    cancel_running(jobs["cancelled"])
    fail(jobs["failed"])
    led.close()  # as a killed process would leave it: the unfinished rows stay unfinished
    before = raw_rows(path)
    unfinished = {("t1", "queued"), ("t1", "running"), ("t2", "running-b"), ("t1", "cancel-requested")}
    assert {k for k, r in before.items() if r["state"] in ("queued", "running")} == unfinished

    led = Ledger(path)
    try:
        assert led.recovered == len(unfinished)
        after = raw_rows(path)
        assert after.keys() == before.keys()
        recovery_columns = {"state", "error_code", "error_message", "error_retriable", "ended_at"}
        for key, row in after.items():
            if key not in unfinished:
                assert row == before[key], key
                continue
            assert row["state"] == "failed"
            assert row["error_code"] == "WORKER_RESTARTED" and row["error_retriable"] == 1
            assert row["error_message"] and row["ended_at"]
            assert {k: v for k, v in row.items() if k not in recovery_columns} == {
                k: v for k, v in before[key].items() if k not in recovery_columns
            }, key
        record = led.get("t1", "running")
        assert record["error"]["retriable"] is True and record["state"] == "failed"
        # The cancel request made before the crash is still on record.
        assert led.get("t1", "cancel-requested")["cancel_reason"] == "client"
    finally:
        led.close()

    # A second start finds nothing left to recover and changes nothing.
    led = Ledger(path)
    try:
        assert led.recovered == 0
        assert raw_rows(path) == after
    finally:
        led.close()


# -- reading: get, exists, list ---------------------------------------------------------------


def test_get_and_exists_are_per_tenant(ledger):
    a = new_job("same-id", tenant="a", on_change=ledger.record)
    b = new_job("same-id", tenant="b", on_change=ledger.record)
    a.start()
    complete(a, "from a")
    ledger.record(b)
    assert ledger.flush()
    assert ledger.get("a", "same-id")["text"] == "from a"
    assert ledger.get("b", "same-id")["state"] == "queued"
    assert ledger.get("c", "same-id") is None
    assert ledger.exists("a", "same-id") and ledger.exists("b", "same-id")
    assert not ledger.exists("", "same-id")


def test_list_by_tenant_state_and_limit(ledger):
    for i in range(6):
        job = new_job(f"list-{i}", tenant="t", on_change=ledger.record)
        ledger.record(job)
        if i % 2 == 0:
            job.start()
            complete(job)
    ledger.record(new_job("list-other", tenant="u"))
    assert ledger.flush()

    listed = ledger.list("t")
    assert [r["job_id"] for r in listed] == [f"list-{i}" for i in range(5, -1, -1)]  # newest first
    assert all("text" not in r for r in listed)
    assert [r["job_id"] for r in ledger.list("t", state="completed")] == ["list-4", "list-2", "list-0"]
    assert [r["job_id"] for r in ledger.list("t", state="queued", limit=2)] == ["list-5", "list-3"]
    assert [r["job_id"] for r in ledger.list("t", limit=1)] == ["list-5"]
    assert ledger.list("t", state="cancelled") == []
    assert [r["job_id"] for r in ledger.list("u")] == ["list-other"]
    assert ledger.list("nobody") == []


def test_a_stale_snapshot_never_overwrites_a_newer_one(ledger, monkeypatch):
    # A cancel request (HTTP thread) and the job's end (inference thread) record the
    # same job at once. Whatever the interleaving, the last row written must be the
    # newest state: here the HTTP thread is paused between its snapshot and its write.
    job = new_job("stale-race")
    job.start()
    real_job_row = ledger_module.job_row
    snapped = threading.Event()
    other_recorded = threading.Event()

    def slow_job_row(j):
        row = real_job_row(j)
        if threading.current_thread().name == "cancel-side":
            snapped.set()
            other_recorded.wait(0.5)  # a ledger that orders its writes blocks the other side meanwhile
        return row

    monkeypatch.setattr(ledger_module, "job_row", slow_job_row)
    job.on_change = ledger.record
    side = threading.Thread(target=lambda: job.request_cancel(CancelReason.CLIENT), name="cancel-side")
    side.start()
    assert snapped.wait(5)

    def finish_then_signal() -> None:
        cancel_running(job)
        other_recorded.set()

    finisher = threading.Thread(target=finish_then_signal)
    finisher.start()
    side.join(10)
    finisher.join(10)
    assert ledger.flush()
    assert ledger.get("", "stale-race")["state"] == "cancelled"


def test_ledgers_named_after_a_port_are_adopted(tmp_path):
    """WO-LEDGER-5: one ledger per state dir. Files earlier versions named after host and
    port are taken in at start (their unfinished rows then recovered like any), not lost."""
    def legacy(name: str, *jobs: Job) -> None:
        """A ledger file as an earlier version left it (written apart, then moved in)."""
        apart = tmp_path / "apart" / name
        old = Ledger(apart / name)
        for job in jobs:
            old.record(job)
        old.close()
        (apart / name).rename(tmp_path / name)

    done, cut = new_job("done", tenant="acme"), new_job("cut")
    for job in (done, cut):
        job.start()
    complete(done)  # `cut` is left running: the process died
    legacy("jobs-worker-host-8080.sqlite3", done, cut)
    legacy("jobs-worker-host-9090.sqlite3", new_job("done", tenant="acme"))  # the same id, queued
    current = Ledger(tmp_path / "jobs.sqlite3")
    try:
        assert current.adopted == 2  # the second "done" is not taken over the first
        assert current.recovered == 1
        assert current.get("acme", "done")["state"] == "completed"
        assert current.get("", "cut")["error"]["code"] == ErrorCode.WORKER_RESTARTED.value
        assert sorted(p.name for p in tmp_path.glob("jobs-*")) == [
            "jobs-worker-host-8080.sqlite3.adopted",
            "jobs-worker-host-9090.sqlite3.adopted",
        ]
    finally:
        current.close()
    again = Ledger(tmp_path / "jobs.sqlite3")  # nothing left to adopt at the next start
    assert again.adopted == 0 and again.get("acme", "done")["state"] == "completed"
    again.close()


class _WriterSpy:
    """The writer's connection, recording each committed batch of rows."""

    def __init__(self, conn: sqlite3.Connection, batches: list[list[tuple]]) -> None:
        self._conn, self._batches = conn, batches

    def executemany(self, sql, rows):
        rows = list(rows)
        self._batches.append(rows)
        return self._conn.executemany(sql, rows)

    def __getattr__(self, name):
        return getattr(self._conn, name)


@pytest.fixture
def committed_batches(path, monkeypatch):
    batches: list[list[dict]] = []
    connect = Ledger._connect
    monkeypatch.setattr(Ledger, "_connect", lambda self: _WriterSpy(connect(self), batches))
    led = Ledger(path)
    yield led, batches
    led.close()


def test_a_running_jobs_cancel_request_is_committed_with_its_end(committed_batches, monkeypatch):
    """WO-LEDGER-1: the commit of a cancel's row waits for the job's end (which comes as the
    engine stops), so it never takes a core from the engine while it stops."""
    monkeypatch.setattr(ledger_module, "CANCEL_ROW_WAIT_SEC", 5.0)
    ledger, batches = committed_batches
    job = new_job("stops")
    job.on_change = ledger.record
    job.start()
    assert ledger.flush()
    before = len(batches)
    job.request_cancel(CancelReason.CLIENT)
    cancel_running(job)
    assert ledger.flush()
    [batch] = batches[before:]
    assert [row["state"] for row in batch] == ["running", "cancelled"]
    assert ledger.get("", "stops")["cancel_requested_at"] == job.cancel_requested_at


def test_a_cancel_request_without_its_end_is_still_committed(committed_batches):
    ledger, batches = committed_batches
    job = new_job("hangs")
    job.on_change = ledger.record
    job.start()
    job.request_cancel(CancelReason.CLIENT)
    assert ledger.flush()  # within CANCEL_ROW_WAIT_SEC of the request
    row = ledger.get("", "hangs")
    assert row["state"] == "running" and row["cancel_requested_at"] == job.cancel_requested_at
