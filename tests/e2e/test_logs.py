"""Log lines (WO-OBS-2): everything the worker writes to stderr, from start to exit,
is one JSON object per line with ts, level, worker_id and event; lines about a
job carry its job_id and correlation_id."""

from __future__ import annotations

import re
import socket

from testkit.prompts import CHAT, LONG_ANSWER_PROMPT
from testkit.streams import CORRELATION_HEADER, StreamThread, assert_error, cancel, terminal, uid
from testkit.wire import execute
from testkit.worker import WorkerProcess

TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
LEVELS = {"debug", "info", "warning", "error", "critical"}
# Events that are always about one job.
JOB_EVENTS = {"job_queued", "job_failed", "job_internal_error", "cancel_request", "cancel_ack", "cancelled", "cancel_denied"}
SHORT = CHAT.format("Name a tree.")


def test_every_stderr_line_is_a_json_log_line():
    worker = WorkerProcess(
        args=["--threads", "1", "--max-body-bytes", "4096", "--api-key", "ops=ops-token"],
        env={"WORKER_ORCD_FAULTS": "decode=log-fault-"},
    ).start()
    auth = {"Authorization": "Bearer ops-token"}
    try:
        with worker.client(headers=auth) as c:
            ok = uid("log-ok")
            assert terminal(execute(c, {"job_id": ok, "prompt": SHORT, "max_tokens": 3}, headers={CORRELATION_HEADER: "corr-log-ok"})).name == "end"

            long_id = uid("log-long")
            stream = StreamThread(
                worker,
                {"job_id": long_id, "prompt": LONG_ANSWER_PROMPT, "max_tokens": 2048, "temperature": 0},
                headers={**auth, CORRELATION_HEADER: "corr-log-long"},
            ).start()
            stream.wait_tokens(1)
            cancel(c, long_id, headers={CORRELATION_HEADER: "corr-log-cancel"})
            assert terminal(stream.join()).data["code"] == "CANCELLED"
            cancel(c, long_id)  # late
            cancel(c, uid("log-unknown"))

            fault = uid("log-fault")
            assert terminal(execute(c, {"job_id": fault, "prompt": SHORT, "max_tokens": 8})).data["code"] == "INTERNAL"

            assert_error(c.post("/execute", json={"job_id": "bad id"}), 400, "INVALID_REQUEST")
            assert_error(c.post("/execute", content=b"x" * 5000), 413, "PAYLOAD_TOO_LARGE")
            assert_error(c.get("/no-such-route"), 404, "NOT_FOUND")
            assert_error(c.get("/jobs", headers={"Authorization": "Bearer wrong"}), 401, "UNAUTHORIZED")

        # Not HTTP at all: uvicorn's own complaint must be a JSON line too.
        with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as raw:
            raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            raw.recv(1024)

        worker.log.wait_for("cancelled", job_id=long_id)
        worker.log.wait_for("job_failed", job_id=fault)
        assert worker.stop() == 0
        worker.log._thread.join(10)  # until stderr is read to its end: lines written at exit count too
    finally:
        worker.kill()

    assert worker.log.raw, "the worker wrote nothing"
    assert len(worker.log.lines) == len(worker.log.raw), [
        line for line in worker.log.raw if not line.startswith("{")
    ]
    for line in worker.log.lines:
        assert isinstance(line, dict)
        assert list(line)[:4] == ["ts", "level", "worker_id", "event"], line
        assert TS.fullmatch(line["ts"]), line
        assert line["level"] in LEVELS, line
        assert line["worker_id"] == "test-worker", line
        assert isinstance(line["event"], str) and line["event"], line
        if line["event"] in JOB_EVENTS or "job_id" in line:
            assert line.get("job_id"), line
            assert line.get("correlation_id"), line

    # uvicorn's warning about the non-HTTP bytes went through the same formatter.
    assert [line for line in worker.log.lines if line["level"] == "warning" and "Invalid HTTP" in line.get("message", "")]
    seen = {line["event"] for line in worker.log.lines}
    assert {"worker_ready", "job_queued", "cancel_request", "cancel_ack", "cancelled", "job_failed", "worker_stopped"} <= seen
    # A job's lines carry the correlation id its request came with.
    assert worker.log.events("job_queued", job_id=ok)[0]["correlation_id"] == "corr-log-ok"
    assert worker.log.events("cancelled", job_id=long_id)[0]["correlation_id"] == "corr-log-long"
    # The cancel request line is about the cancel's own HTTP request.
    requests = worker.log.events("cancel_request", job_id=long_id)
    assert requests[0]["correlation_id"] == "corr-log-cancel" and requests[0]["phase"] == "decode"
    assert requests[1]["phase"] == "finished"
