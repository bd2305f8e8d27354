"""GET /metrics (WO-OBS-1, WO-LEDGER-4): the counters move by exactly what the jobs did.

A dedicated worker, so no other test's jobs move the counts."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from testkit.prompts import CHAT, LONG_ANSWER_PROMPT
from testkit.streams import StreamThread, assert_error, cancel, terminal, uid
from testkit.waiting import wait_until
from testkit.wire import execute
from testkit.worker import WorkerProcess

SHORT = CHAT.format("Name a planet.")


@pytest.fixture(scope="module")
def metrics_worker():
    # Jobs whose id starts with "m-fault-" meet a failing decode (specs/internals.md, "Fault injection");
    # no other job does.
    w = WorkerProcess(args=["--threads", "1"], env={"WORKER_ORCD_FAULTS": "decode=m-fault-"}).start()
    yield w
    w.stop()


def scrape(worker: WorkerProcess) -> dict[tuple[str, frozenset], float]:
    with worker.client() as c:
        r = c.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    values: dict[tuple[str, frozenset], float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            values[(s.name, frozenset(s.labels.items()))] = s.value
    return values


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def names(samples: dict) -> set[str]:
    return {name for name, _ in samples}


def test_metric_names_and_gauges(metrics_worker):
    s = scrape(metrics_worker)
    for outcome in ("completed", "cancelled", "failed", "rejected"):
        assert ("worker_requests_total", frozenset({("outcome", outcome)})) in s
    for phase in ("queued", "prompt", "decode", "finished", "unknown"):
        assert ("worker_cancellations_total", frozenset({("phase", phase)})) in s
    for name in (
        "worker_tokens_generated_total",
        "worker_inference_duration_ms_count",
        "worker_inference_duration_ms_sum",
        "worker_stop_ms_count",
        "worker_cancel_ms_count",
        "worker_queue_depth",
        "worker_uptime_seconds",
    ):
        assert name in names(s), name
    assert value(s, "worker_uptime_seconds") > 0
    assert value(s, "worker_queue_depth") == 0
    # No GPU here: the VRAM gauge is absent rather than zero.
    assert "worker_vram_bytes" not in names(s)
    later = scrape(metrics_worker)
    assert value(later, "worker_uptime_seconds") >= value(s, "worker_uptime_seconds")


def test_counters_move_by_what_the_jobs_did(metrics_worker):
    before = scrape(metrics_worker)
    done, running, queued, faulty = uid("m-done"), uid("m-running"), uid("m-queued"), uid("m-fault")

    with metrics_worker.client() as c:
        # A completed job.
        events = execute(c, {"job_id": done, "prompt": SHORT, "max_tokens": 5, "temperature": 0})
        done_end = terminal(events)
        assert done_end.name == "end"

        # A running job cancelled during decode, with a job queued behind it cancelled first.
        long = StreamThread(
            metrics_worker,
            {"job_id": running, "prompt": LONG_ANSWER_PROMPT, "max_tokens": 2048, "temperature": 0},
        ).start()
        long.wait_tokens(2)
        waiting = StreamThread(metrics_worker, {"job_id": queued, "prompt": SHORT, "max_tokens": 5}).start()
        metrics_worker.log.wait_for("job_queued", job_id=queued)
        assert value(scrape(metrics_worker), "worker_queue_depth") == 1
        cancel(c, queued)
        assert terminal(waiting.join()).data["code"] == "CANCELLED"
        cancel(c, running)
        long_end = terminal(long.join())
        assert long_end.data["code"] == "CANCELLED"

        # A job that meets an engine fault.
        fault_end = terminal(execute(c, {"job_id": faulty, "prompt": SHORT, "max_tokens": 8}))
        assert fault_end.data["code"] == "INTERNAL"

        # Cancels that find nothing to stop, and a request rejected before queueing.
        cancel(c, done)
        cancel(c, uid("m-unknown"))
        assert_error(c.post("/execute", json={"job_id": uid("m-bad"), "prompt": ""}), 400, "INVALID_REQUEST")

    # A job is counted just after its terminal event is sent: wait until all four are in.
    def all_counted() -> dict | None:
        s = scrape(metrics_worker)
        jobs = sum(value(s, "worker_requests_total", outcome=o) for o in ("completed", "cancelled", "failed"))
        jobs_before = sum(value(before, "worker_requests_total", outcome=o) for o in ("completed", "cancelled", "failed"))
        return s if jobs - jobs_before >= 4 else None

    wait_until(all_counted, timeout=10)
    after = scrape(metrics_worker)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert {o: delta("worker_requests_total", outcome=o) for o in ("completed", "cancelled", "failed", "rejected")} == {
        "completed": 1,
        "cancelled": 2,  # the running and the queued job: never counted as completed
        "failed": 1,
        "rejected": 1,
    }
    assert {
        p: delta("worker_cancellations_total", phase=p) for p in ("queued", "prompt", "decode", "finished", "unknown")
    } == {"queued": 1, "prompt": 0, "decode": 1, "finished": 1, "unknown": 1}
    assert delta("worker_tokens_generated_total") == sum(
        e.data["tokens_out"] for e in (done_end, long_end, fault_end)
    )
    # Stop and cancel latencies exist for the two cancelled jobs only.
    assert delta("worker_stop_ms_count") == 2 and delta("worker_cancel_ms_count") == 2
    # Only jobs that ran have a running time: not the one cancelled in the queue.
    assert delta("worker_inference_duration_ms_count") == 3
    assert delta("worker_inference_duration_ms_sum") > 0
    assert value(after, "worker_queue_depth") == 0
