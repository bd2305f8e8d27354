"""The supervisor keeps its promises whatever the engine does next (specs/internals.md,
"The engine process"; specs/operating.md, "Shutdown").

Each test starts its own worker: they kill, hang and restart its engine process, and
stop the worker with signals.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from testkit.processes import free_port
from testkit.streams import StreamThread, assert_error, cancel, job_of, terminal, uid, wait_job
from testkit.waiting import wait_until
from testkit.wire import execute
from testkit.worker import WorkerProcess
from tests.e2e.helpers import engine_of, live_children, long_answer_job, short_job, wait_engine

ARGS = ["--threads", "1"]
FAULTS = "WORKER_ORCD_FAULTS"


def health(worker: WorkerProcess) -> dict:
    with worker.client() as c:
        return c.get("/health").json()


def test_a_cancel_then_a_kill_of_the_engine_ends_cancelled(own_worker):
    """WO-ENGINE-7: POST /cancel, then SIGKILL of the engine at once: the raiser's outcome."""
    w = own_worker()
    job_id = uid("cancel-kill")
    stream = StreamThread(w, long_answer_job(job_id)).start()
    stream.wait_tokens(3)
    pid = engine_of(w)["pid"]
    with w.client() as c:
        cancel(c, job_id)
    os.kill(pid, signal.SIGKILL)
    end = terminal(stream.join())
    assert end.name == "error" and end.data["code"] == "CANCELLED", end.data
    assert end.data["stop_ms"] <= end.data["cancel_ms"]
    with w.client() as c:
        record = wait_job(c, job_id, "cancelled")
        assert record["error"]["code"] == "CANCELLED" and record["cancel_reason"] == "client"
        wait_engine(w, "ready", not_pid=pid)
        assert terminal(execute(c, short_job(uid("after")))).name == "end"


@pytest.mark.parametrize(
    ("how", "code", "state"),
    [("cancel", "CANCELLED", "cancelled"), ("timeout", "INFERENCE_TIMEOUT", "failed")],
)
def test_an_engine_that_dies_after_saying_stopped_ends_as_the_raiser_decided(own_worker, how, code, state):
    """WO-ENGINE-7: the engine sees the raised word, says `stopped`, and crashes before
    freeing (fault die_on_cancel): the process is gone, its memory back, and the job
    ends as its cancel or its timeout decided, never ENGINE_FAILED."""
    args = ("--inference-timeout-sec", "1") if how == "timeout" else ()
    w = own_worker(*args, env={FAULTS: "die_on_cancel=dies-"})
    job_id = uid("dies")
    stream = StreamThread(w, long_answer_job(job_id)).start()
    stream.wait_tokens(1)
    pid = engine_of(w)["pid"]
    if how == "cancel":
        with w.client() as c:
            cancel(c, job_id)
    end = terminal(stream.join())
    assert end.name == "error" and end.data["code"] == code, end.data
    assert not os.path.exists(f"/proc/{pid}")  # reaped before the event
    with w.client() as c:
        assert wait_job(c, job_id, state)["error"]["code"] == code
        wait_engine(w, "ready", not_pid=pid)
    assert w.log.wait_for("engine_died")["pid"] == pid  # a crash all the same: counted


def test_two_signals_during_a_drain_record_worker_shutdown(own_worker, tmp_path):
    """WO-SHUT-1: SIGTERM, then a second one while a job runs and one waits: both jobs are
    recorded WORKER_SHUTDOWN (the running one cancelled for the shutdown, not recorded as
    its stream's disconnect)."""
    w = own_worker("--shutdown-grace-sec", "30", state_dir=tmp_path)
    running, waiting = uid("running"), uid("waiting")
    first = StreamThread(w, long_answer_job(running)).start()
    first.wait_tokens(3)
    second = StreamThread(w, short_job(waiting)).start()
    w.log.wait_for("job_queued", job_id=waiting)
    w.proc.send_signal(signal.SIGTERM)
    w.log.wait_for("shutdown_requested")
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(30) == 0
    # Streams may be cut before their terminal event (WO-SHUT-1): what counts is the ledger.
    assert first.done.wait(30) and second.done.wait(30)
    # The ledger, as the next worker on the same state dir reads it.
    again = own_worker(state_dir=tmp_path)
    with again.client() as c:
        for job_id in (running, waiting):
            record = job_of(c, job_id)
            assert (record["state"], (record["error"] or {}).get("code"), record["cancel_reason"]) == (
                "failed",
                "WORKER_SHUTDOWN",
                "shutdown",
            ), record


@pytest.mark.parametrize("fault", ["start_hang", "start_exit"])
def test_restarts_that_never_get_ready_are_given_up(own_worker, tmp_path, fault):
    """WO-ENGINE-8: a restarted engine that hangs or dies before `ready` counts as a failed
    start; after 3 in a row the engine is given up: /health says not ready with the reason
    meanwhile and unhealthy after, the job waiting for it ends ENGINE_UNAVAILABLE."""
    trigger = tmp_path / "trigger"
    # A quick start (no CPU check, a fixed prompt chunk) keeps well within the deadline.
    fast = ("--cpu-extra-buffers", "off", "--prefill-chunk", "64")
    w = own_worker(*fast, "--engine-start-timeout-sec", "6", env={FAULTS: f"{fault}={trigger}"})
    running, waiting = uid("running"), uid("waiting")
    first = StreamThread(w, long_answer_job(running)).start()
    first.wait_tokens(3)
    second = StreamThread(w, short_job(waiting)).start()
    w.log.wait_for("job_queued", job_id=waiting)
    trigger.touch()
    os.kill(engine_of(w)["pid"], signal.SIGKILL)
    assert terminal(first.join()).data["code"] == "ENGINE_FAILED"
    # No engine serves: not ready, and why, while the worker still answers.
    h = wait_until(lambda: (h := health(w))["engine"]["state"] == "restarting" and h, timeout=10)
    assert h["ready"] is False and "a new one is starting" in h["engine"]["reason"]
    end = terminal(second.join(60))
    assert end.name == "error" and end.data["code"] == "ENGINE_UNAVAILABLE", end.data
    h = health(w)
    assert h["status"] == "unhealthy" and h["ready"] is False and h["engine"]["state"] == "failed"
    assert "3 times in a row" in h["engine"]["reason"]
    expected = "was not ready within 6 s" if fault == "start_hang" else "exited with status 3"
    assert expected in h["engine"]["reason"], h["engine"]["reason"]
    with w.client() as c:
        assert_error(c.post("/execute", json=short_job(uid("refused"))), 503, "ENGINE_UNAVAILABLE")
        assert job_of(c, waiting)["error"]["code"] == "ENGINE_UNAVAILABLE"
    assert len(w.log.events("engine_start_failed")) == 3
    assert not live_children(w.proc.pid)  # no hanging engine left behind


def test_a_first_start_that_hangs_fails_within_its_deadline(tmp_path):
    """WO-START-1, WO-ENGINE-8: a start that never gets ready fails the worker after
    --engine-start-timeout-sec, with the reason, instead of waiting forever."""
    trigger = tmp_path / "trigger"
    trigger.touch()
    port = free_port()
    cmd = [sys.executable, "-m", "worker_orcd", "serve", "--port", str(port), "--state-dir", str(tmp_path)]
    cmd += [*ARGS, "--engine-start-timeout-sec", "2"]
    env = {**os.environ, FAULTS: f"start_hang={trigger}"}
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1
    assert "was not ready within 2 s" in done.stderr.strip().splitlines()[-1], done.stderr
    assert time.monotonic() - t0 < 30


def test_a_frame_the_front_cannot_read_ends_the_job_at_once(own_worker):
    """WO-ENGINE-9: a broken channel (fault garble: a frame the front cannot decode) is the
    engine's death: its job ends ENGINE_FAILED at once, not at its timeout; the engine is
    killed and replaced, and the next job runs."""
    w = own_worker("--inference-timeout-sec", "120", env={FAULTS: "garble=garbled-"})
    pid = engine_of(w)["pid"]
    job_id = uid("garbled")
    t0 = time.monotonic()
    with w.client() as c:
        end = terminal(execute(c, long_answer_job(job_id)))
    assert end.name == "error" and end.data["code"] == "ENGINE_FAILED" and time.monotonic() - t0 < 20
    assert w.log.wait_for("engine_channel_failed")["pid"] == pid
    with w.client() as c:
        wait_engine(w, "ready", not_pid=pid)
        assert terminal(execute(c, short_job(uid("after")))).name == "end"


def test_lookups_answer_while_executes_wait_for_a_restarting_engine(own_worker, tmp_path):
    """WO-ENGINE-10: executes waiting for a restarting engine (to tokenize their prompts)
    never hold the threads that /jobs and the ledger's look-ups need."""
    trigger = tmp_path / "trigger"
    w = own_worker("--engine-start-timeout-sec", "60", env={FAULTS: f"start_hang={trigger}"})
    trigger.touch()
    os.kill(engine_of(w)["pid"], signal.SIGKILL)
    wait_until(lambda: health(w)["engine"]["state"] == "restarting", timeout=10)

    async def run() -> list[float]:
        async with httpx.AsyncClient(base_url=w.url, timeout=60) as client:
            waiting = [
                asyncio.create_task(client.post("/execute", json=short_job(uid("waits")))) for _ in range(48)
            ]
            deadline = time.monotonic() + 20
            while _open_connections(w) < 48:
                assert time.monotonic() < deadline, _open_connections(w)
                await asyncio.sleep(0.02)
            timings = []
            until = time.monotonic() + 3  # look-ups for a while, every execute having arrived
            while time.monotonic() < until:
                for path in ("/jobs", f"/jobs/{uid('unknown')}", "/jobs?state=failed"):
                    t0 = time.perf_counter()
                    r = await client.get(path)
                    timings.append(time.perf_counter() - t0)
                    assert r.status_code in (200, 404), r.text
                    assert timings[-1] < 5, (path, timings)
            assert all(not task.done() for task in waiting)  # still waiting for the engine
            for task in waiting:
                task.cancel()
            return timings

    asyncio.run(run())


def _open_connections(worker: WorkerProcess) -> int:
    """Established TCP connections the worker has accepted (from /proc/net/tcp)."""
    port = f"{worker.port:04X}"
    count = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            count += local.endswith(f":{port}") and state == "01"
    return count
