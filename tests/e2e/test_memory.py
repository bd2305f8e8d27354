"""Memory (specs/internals.md, "Memory and contexts"; WO-CANCEL-4): every job, cancelled or not,
leaves the worker at its idle footprint."""

from __future__ import annotations

import pytest

from testkit.prompts import LONG_ANSWER_PROMPT, SHORT_PROMPT
from testkit.streams import StreamThread, cancel, terminal, uid, wait_active, wait_idle
from testkit.waiting import wait_until
from testkit.wire import execute
from testkit.worker import WorkerProcess
from tests.e2e.helpers import long_prompt_job

MiB = 1 << 20
# Python's own allocations (jobs kept in memory, HTTP buffers) may grow a little;
# one leaked context would be ~100 MiB (its KV cache is cleared, so resident).
SLACK = 8 * MiB


@pytest.fixture
def fresh_worker():
    # Its own worker: the shared one's footprint depends on what ran before.
    w = WorkerProcess(args=["--threads", "1"]).start()
    yield w
    w.stop()


def test_memory_returns_to_idle_after_cancel(fresh_worker):
    w = fresh_worker
    with w.client() as c:
        # Warm-up: the first job pages in the weights.
        warm_up = execute(c, {"job_id": uid("warm"), "prompt": SHORT_PROMPT, "max_tokens": 8})
        assert terminal(warm_up).name == "end"
        wait_idle(c)
        idle = w.settled_rss()

        # WO-CANCEL-4: the job's memory is back before CANCELLED is sent, so resident
        # memory read the moment the event is parsed is already at idle.
        at_cancelled: list[int] = []

        def read_rss_at_terminal(_stream: StreamThread, event) -> None:
            if event.name in ("end", "error"):
                at_cancelled.append(w.rss_bytes())

        for n in range(3):  # cancelled while generating
            job_id = uid(f"mem-decode{n}")
            body = {"job_id": job_id, "prompt": LONG_ANSWER_PROMPT, "max_tokens": 400}
            s = StreamThread(w, body, on_event=read_rss_at_terminal).start()
            s.wait_tokens(2)
            cancel(c, job_id)
            assert terminal(s.join()).data["code"] == "CANCELLED"
        job_id = uid("mem-prompt")  # cancelled inside the prompt
        s = StreamThread(w, long_prompt_job(job_id), on_event=read_rss_at_terminal).start()
        wait_active(c, job_id)
        cancel(c, job_id)
        assert terminal(s.join()).data["code"] == "CANCELLED"
        assert len(at_cancelled) == 4 and max(at_cancelled) <= idle + SLACK, (idle, at_cancelled)
        for n in range(2):  # completed
            events = execute(c, {"job_id": uid(f"mem-done{n}"), "prompt": SHORT_PROMPT, "max_tokens": 16})
            assert terminal(events).name == "end"
        wait_idle(c)

        wait_until(lambda: w.rss_bytes() <= idle + SLACK, timeout=30, interval=0.025)
        # And it stays there (no context is made or kept behind our back).
        assert w.settled_rss() <= idle + SLACK


def test_engine_runs_under_glibc_tunables(worker):
    # WO-MEM-3: the engine process was spawned with the malloc tunables set; the front
    # (which allocates no contexts) neither needs them nor re-executes itself for them.
    # glibc cuts GLIBC_TUNABLES at each ':' in place when it reads it, so look at the raw block.
    with worker.client() as c:
        engine_pid = c.get("/health").json()["engine"]["pid"]
    assert engine_pid and engine_pid != worker.proc.pid
    with open(f"/proc/{engine_pid}/environ", "rb") as f:
        items = f.read().split(b"\0")
    assert b"GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in items
    assert any(item.startswith(b"glibc.malloc.mmap_threshold=") for item in items)
    with open(f"/proc/{worker.proc.pid}/environ", "rb") as f:
        assert not any(item.startswith(b"GLIBC_TUNABLES=") for item in f.read().split(b"\0"))
