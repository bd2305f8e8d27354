"""`worker-orcd run` against the real worker, in a real pseudo-terminal where it matters
(specs/contract.md, "Clients": WO-CLIENT-7..9)."""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from testkit.prompts import LONG_ANSWER_PROMPT, SHORT_ANSWER, SHORT_PROMPT
from testkit.streams import uid, wait_job
from testkit.waiting import wait_until

pytestmark = pytest.mark.usefixtures("worker_idle")


def command(url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "worker_orcd", "run", "--url", url, *args]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("WORKER_ORCD_API_TOKEN", None)
    return env


def run_client(url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    """`worker-orcd run` to its end, without a terminal; its output as text."""
    return subprocess.run(command(url, *args), input=stdin, capture_output=True, text=True, timeout=60, env=child_env())


def json_lines(done: subprocess.CompletedProcess) -> list[dict]:
    """What --json printed: one event a line."""
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


class Terminal:
    """A pseudo-terminal: the child's stdin and stderr (and stdout unless piped) are its
    slave; everything written there is collected from the master on a thread."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.output = bytearray()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def start(self, cmd: list[str], *, stdout_pipe: bool = False) -> subprocess.Popen:
        proc = subprocess.Popen(
            cmd,
            stdin=self.slave,
            stdout=subprocess.PIPE if stdout_pipe else self.slave,
            stderr=self.slave,
            start_new_session=True,  # its own process group, which the test signals
            env=child_env(),
        )
        os.close(self.slave)  # the child holds it now: the master reads EOF (EIO) when it exits
        self._thread.start()
        return proc

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError as exc:  # EIO: the slave side is closed
                assert exc.errno == errno.EIO
                data = b""
            with self._cond:
                if not data:
                    self._cond.notify_all()
                    return
                self.output += data
                self._cond.notify_all()

    def wait_for(self, text: bytes, timeout: float = 60) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: text in self.output, timeout), bytes(self.output)

    def text(self, timeout: float = 30) -> str:
        self._thread.join(timeout)
        os.close(self.master)
        return self.output.decode("utf-8", "replace")


def test_ctrl_c_cancels_waits_for_cancelled_and_exits_130(worker, client):
    """WO-CLIENT-8: SIGINT mid-stream sends the cancel, the CANCELLED event's latencies
    are printed on stderr, the exit status is 130."""
    job_id = uid("run-ctrl-c")
    term = Terminal()
    proc = term.start(command(worker.url, LONG_ANSWER_PROMPT, "--max-tokens", "400", "--job-id", job_id))
    wait_until(lambda: client.get(f"/jobs/{job_id}").json().get("tokens_out", 0) >= 3, timeout=60)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(60) == 130
    out = term.text()
    assert "cancelling job" in out and "CANCELLED" in out
    assert "stop_ms" in out and "cancel_ms" in out
    job = wait_job(client, job_id, "cancelled")
    assert job["cancel_reason"] == "client"  # the client's POST /cancel, not a disconnect
    # The text streamed to the terminal before the cancel, once the status redraws and the
    # notes (each on a line of its own, maybe between two tokens) are taken out; the terminal
    # writes each newline of the text as CR LF.
    shown = re.sub(r"\r\x1b\[K(\[[^\]]*\][^\r\n]*)?", "", out)
    shown = re.sub(r"(\r\n)?worker-orcd: [^\r\n]*\r\n", "", shown).replace("\r\n", "\n")
    assert job["text"][:20] in shown, (shown, job["text"])


def test_status_line_is_redrawn_on_a_terminal_stderr(worker):
    """WO-CLIENT-7: tokens to stdout (here a pipe) as they come, exactly the text; on a
    terminal stderr a status line redrawn with \\r, then the summary."""
    term = Terminal()
    proc = term.start(command(worker.url, SHORT_PROMPT, "--temperature", "0"), stdout_pipe=True)
    stdout, _ = proc.communicate(timeout=60)
    err = term.text()
    assert proc.returncode == 0, err
    assert stdout.decode() == SHORT_ANSWER
    assert "\r" in err and "tok/s" in err and "completed" in err and "eos" in err


def test_a_queued_job_shows_its_place(worker, client):
    """WO-CLIENT-7, WO-JOBS-5: while the job waits behind another, the status line says so."""
    blocker_id, job_id = uid("run-blocker"), uid("run-queued")
    with client.stream(
        # Greedy and long: it must outlast the client's start and its first look at the queue.
        "POST",
        "/execute",
        json={"job_id": blocker_id, "prompt": LONG_ANSWER_PROMPT, "max_tokens": 1500, "temperature": 0},
    ) as blocker:
        assert blocker.status_code == 200
        wait_until(lambda: client.get(f"/jobs/{blocker_id}").json().get("tokens_out", 0) >= 1, timeout=60)
        term = Terminal()
        proc = term.start(command(worker.url, SHORT_PROMPT, "--temperature", "0", "--job-id", job_id), stdout_pipe=True)
        term.wait_for(b"[queued] next in the queue")
        client.post("/cancel", json={"job_id": blocker_id})
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, term.text()
    assert stdout.decode() == SHORT_ANSWER


def test_json_lines_and_prompt_from_stdin(worker):
    """WO-CLIENT-9: --json prints every event as one JSON line; the prompt may come on
    stdin; nothing is redrawn when stderr is not a terminal."""
    # The prompt exactly as read: it ends in a newline, which is part of it.
    done = run_client(worker.url, "--json", "--temperature", "0", stdin=SHORT_PROMPT)
    events = json_lines(done)
    names = [e["event"] for e in events]
    assert names[0] == "started" and names[-1] == "end" and set(names[1:-1]) == {"token"}
    assert "".join(e["data"]["t"] for e in events[1:-1]) == SHORT_ANSWER
    assert events[-1]["data"]["stop_reason"] == "eos"
    assert done.stderr == ""


def test_chat_applies_the_models_template_through_the_worker(worker, client):
    """WO-CLIENT-10: --chat sends the prompt as a user's message to /v1/chat/completions,
    whose template the worker applies; the job is the same kind of job, under --job-id."""
    job_id = uid("run-chat")
    # Greedy: sampled at the worker's temperature, the model may end its answer (eos) before 8 tokens.
    args = ("--chat", "--json", "--temperature", "0", "--max-tokens", "8", "--job-id", job_id)
    done = run_client(worker.url, "Name a colour.", *args)
    events = json_lines(done)
    assert events[0]["event"] == "started" and events[0]["data"]["job_id"] == job_id
    assert events[-1]["event"] == "end" and events[-1]["data"]["tokens_out"] == 8
    assert events[-1]["data"]["stop_reason"] == "max_tokens"
    job = wait_job(client, job_id, "completed")
    assert job["text"] == "".join(e["data"]["t"] for e in events if e["event"] == "token")
    assert worker.log.wait_for("job_queued", job_id=job_id)["api"] == "openai.chat"


def test_errors_and_usage(worker):
    """WO-CLIENT-9: a worker's error is printed with its code, exit 1; usage errors exit 2."""
    job_id = uid("run-dup")
    run = functools.partial(run_client, worker.url)
    assert run("Hi", "--max-tokens", "1", "--job-id", job_id).returncode == 0
    again = run("Hi", "--max-tokens", "1", "--job-id", job_id)
    assert again.returncode == 1 and "JOB_EXISTS" in again.stderr and "409" in again.stderr
    bad = run("Hi", "--max-tokens", "99999")
    assert bad.returncode == 1 and "INVALID_REQUEST" in bad.stderr
    assert run("", stdin="").returncode == 2  # an empty prompt
    assert run("Hi", "--max-tokens", "0").returncode == 2
    down = run_client("http://127.0.0.1:9", "Hi")
    assert down.returncode == 1 and "cannot reach" in down.stderr


class StuckWorker(BaseHTTPRequestHandler):
    """Streams `started` and one token, then nothing; never answers a cancel."""

    release = threading.Event()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/execute":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(b'event: started\ndata: {"job_id":"stuck"}\n\nevent: token\ndata: {"t":"Hi","i":0}\n\n')
            self.wfile.flush()
        self.release.wait(120)

    def log_message(self, *args: object) -> None:
        pass


def test_a_second_ctrl_c_leaves_at_once():
    """WO-CLIENT-8: when the cancel goes unanswered, a second SIGINT exits 130 at once."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), StuckWorker)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        term = Terminal()
        proc = term.start(command(url, "Hi"))
        term.wait_for(b"Hi")
        os.killpg(proc.pid, signal.SIGINT)
        term.wait_for(b"cancelling job")  # the first one was handled: the cancel is on its way
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(10) == 130
        assert "left without waiting" in term.text()
    finally:
        StuckWorker.release.set()
        server.shutdown()
        server.server_close()
