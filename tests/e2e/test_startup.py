"""Start-up failures (WO-START-1): exit status 1 and the reason in one last line on stderr,
fast; anything before it is a JSON log line (llama.cpp's own errors, WO-GPU-5)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from testkit.processes import free_port
from testkit.worker import WorkerProcess


def _serve(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "worker_orcd", "serve", "--state-dir", str(tmp_path / "state"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _assert_one_line_failure(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 1, result.stderr
    *logged, reason = result.stderr.splitlines()
    assert reason.startswith("worker-orcd: "), result.stderr
    for line in logged:
        assert json.loads(line)["event"] == "llama_log", line
    for needle in needles:
        assert needle in reason, reason
    return reason


def test_missing_model_file(tmp_path):
    missing = tmp_path / "nowhere.gguf"
    result = _serve(tmp_path, "--model", str(missing), "--port", str(free_port()))
    _assert_one_line_failure(result, str(missing))


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not a model\n" * 10, b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64],
    ids=["empty", "text", "gguf-magic-garbage"],
)
def test_invalid_model_file(tmp_path, content):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    result = _serve(tmp_path, "--model", str(bad), "--port", str(free_port()))
    _assert_one_line_failure(result, str(bad))


def test_the_reason_llama_cpp_gives_is_in_the_line_and_the_log(tmp_path):
    """WO-GPU-5: a model llama.cpp refuses says why, in the last line and as JSON log lines."""
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    result = _serve(tmp_path, "--model", str(bad), "--port", str(free_port()))
    reason = _assert_one_line_failure(result, "could not load the model", "number of tensors")
    errors = [json.loads(line) for line in result.stderr.splitlines()[:-1]]
    assert errors and all(e["level"] == "error" and e["source"] == "llama.cpp" for e in errors)
    assert errors[0]["message"] in reason


def test_model_path_is_a_directory(tmp_path):
    result = _serve(tmp_path, "--model", str(tmp_path), "--port", str(free_port()))
    _assert_one_line_failure(result)


def test_port_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _serve(tmp_path, "--port", str(port))
    _assert_one_line_failure(result, str(port))


def test_state_dir_in_use(tmp_path):
    """One worker per state dir (WO-LEDGER-5): a second one, on another port, fails at
    start naming the holder; the first goes on, and once it stops the dir is free."""
    first = WorkerProcess(args=["--threads", "1"], state_dir=tmp_path / "state").start()
    try:
        result = _serve(tmp_path, "--port", str(free_port()))
        _assert_one_line_failure(result, "in use by another worker", f"pid {first.proc.pid}", "--state-dir")
        with first.client() as c:
            assert c.get("/health").json()["status"] == "healthy"
    finally:
        assert first.stop() == 0
    again = WorkerProcess(args=["--threads", "1"], state_dir=tmp_path / "state").start()
    assert again.stop() == 0
