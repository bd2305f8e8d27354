"""The engine's extra CPU buffer types are checked, not assumed (WO-CPU-1..3).

A CPU that advertises instructions it cannot run (AMX on some VMs) kills the
process that runs them. The probe child meets that fate instead of the worker;
here the fault injection (`cpu_probe=sigill|hang`) plays that CPU on any machine.
"""

from __future__ import annotations

import json
import re

import pytest

from testkit.prompts import CHAT
from testkit.streams import terminal, uid
from testkit.wire import execute
from testkit.worker import WorkerProcess
from worker_orcd.config import default_model_path
from worker_orcd.engine import cpu_features
from worker_orcd.engine.cpu_features import CACHE_FILE

FAULTS = "WORKER_ORCD_FAULTS"
# Well over the 16 tokens from which the engine's batched matrix kernels (AMX's among them) run.
PROMPT = CHAT.format("Hello there, " * 40 + "tell me a story.")


def start(state_dir, *args: str, faults: str | None = None) -> WorkerProcess:
    env = {FAULTS: faults} if faults else {}
    return WorkerProcess(args=["--threads", "1", *args], env=env, state_dir=state_dir).start()


def extra_buffers(worker: WorkerProcess) -> dict:
    with worker.client() as c:
        return c.get("/health").json()["cpu_extra_buffers"]


def stop(worker: WorkerProcess) -> list[dict]:
    """Stop the worker; its whole log."""
    assert worker.stop() == 0
    worker.log.wait_for("worker_stopped")
    return list(worker.log.lines)


def test_probe_killed_by_sigill_leaves_the_worker_serving_without_them(tmp_path):
    worker = start(tmp_path, faults="cpu_probe=sigill")
    try:
        health = extra_buffers(worker)
        assert health["mode"] == "auto" and health["enabled"] is False and health["source"] == "probe"
        assert "SIGILL" in health["reason"]
        with worker.client() as c:
            events = execute(c, {"job_id": uid("cpu"), "prompt": PROMPT, "max_tokens": 4, "temperature": 0})
        assert events[0].name == "started" and events[0].data["prompt_tokens"] >= 64
        end = terminal(events)
        assert end.name == "end" and end.data["stop_reason"] == "max_tokens" and end.data["tokens_out"] == 4
        assert worker.log.wait_for("worker_ready")["cpu_extra_buffers"] == health
    finally:
        lines = stop(worker)
    [warning] = [line for line in lines if line["level"] == "warning"]
    assert warning["event"] == "cpu_extra_buffers" and warning["enabled"] is False
    assert warning["probe_ms"] > 0 and warning["buffer_types"]  # the child named what it tried
    for needle in ("SIGILL", "plain CPU kernels", "--cpu-extra-buffers on", "--cpu-extra-buffers off"):
        assert needle in warning["message"], needle
    # The verdict is kept: the next start does not run the risky code again.
    entries = json.loads((tmp_path / CACHE_FILE).read_text())["entries"]
    assert [(e["enabled"], "SIGILL" in e["reason"]) for e in entries] == [(False, True)]


@pytest.fixture(scope="module")
def machine_runs_them() -> bool:
    """This machine's own answer, from the probe itself: whether the extra buffer types run
    here (AMD EPYC: they do; an Intel Xeon whose VM hides AMX: the probe child traps)."""
    result = cpu_features.probe(default_model_path(), threads=1, gpu_device=None)
    assert result.conclusive, result.reason
    return result.enabled


def test_auto_probes_once_then_the_cached_verdict_serves_restarts(tmp_path, machine_runs_them):
    first = start(tmp_path)
    try:
        health = extra_buffers(first)
        assert (health["mode"], health["source"]) == ("auto", "probe")
        # The worker's probe agrees with this machine's, whichever vendor it is.
        assert health["enabled"] is machine_runs_them
        assert (health["reason"] is None) is machine_runs_them
        line = first.log.wait_for("cpu_extra_buffers")
        assert line["probe_ms"] > 0 and line["level"] == ("info" if machine_runs_them else "warning")
        with first.client() as c:  # the engine serves a batch of the size the probe tried
            assert terminal(execute(c, {"job_id": uid("cpu"), "prompt": PROMPT, "max_tokens": 2})).name == "end"
    finally:
        stop(first)

    second = start(tmp_path)
    try:
        assert extra_buffers(second) == {**health, "source": "cache"}
        line = second.log.wait_for("cpu_extra_buffers")
        assert "probe_ms" not in line  # no probe child ran
    finally:
        lines = stop(second)
    warnings = [line for line in lines if line["level"] == "warning"]
    if machine_runs_them:
        assert not warnings
    else:  # off by an earlier start's probe: said again, with how to check anew
        [warning] = warnings
        assert warning["event"] == "cpu_extra_buffers" and "found at an earlier start" in warning["message"]


@pytest.mark.parametrize("mode", ["off", "on"])
def test_the_flag_skips_the_probe(tmp_path, mode, machine_runs_them):
    # The probe would die here; with the flag it never runs.
    if mode == "on" and not machine_runs_them:
        # Forced on a CPU that cannot run them, the engine dies at its first batch
        # (measuring the prompt chunk) and the start fails with the signal's name.
        with pytest.raises(RuntimeError, match=r"worker exited with 1") as failed:
            start(tmp_path, "--cpu-extra-buffers", mode, faults="cpu_probe=sigill")
        assert re.search(r"worker-orcd: .*killed by SIG[A-Z]+", str(failed.value)), str(failed.value)
        assert not (tmp_path / CACHE_FILE).exists()
        return
    worker = start(tmp_path, "--cpu-extra-buffers", mode, faults="cpu_probe=sigill")
    try:
        expected = {"mode": mode, "enabled": mode == "on", "source": "flag", "reason": None}
        assert extra_buffers(worker) == expected
        assert "probe_ms" not in worker.log.wait_for("cpu_extra_buffers")
        with worker.client() as c:
            assert terminal(execute(c, {"job_id": uid("cpu"), "prompt": PROMPT, "max_tokens": 2})).name == "end"
    finally:
        lines = stop(worker)
    assert not [line for line in lines if line["level"] == "warning"]
    assert not (tmp_path / CACHE_FILE).exists()


def test_a_probe_that_hangs_is_ended_by_its_timeout_and_counts_as_off(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULTS, "cpu_probe=hang")
    decision = cpu_features.decide(
        "auto", model_path=default_model_path(), state_dir=tmp_path, threads=1, gpu_device=None, timeout=2
    )
    assert (decision.enabled, decision.source) == (False, "probe")
    assert "did not finish within 2 s" in decision.reason and decision.failed_probe
    assert 2000 <= decision.probe_ms < 10_000
    [entry] = json.loads((tmp_path / CACHE_FILE).read_text())["entries"]
    assert entry["enabled"] is False


def test_a_model_the_probe_cannot_load_is_off_uncached(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    result = cpu_features.probe(bad, threads=1, gpu_device=None)
    assert (result.enabled, result.conclusive) == (False, False)
    assert "exit status 1" in result.reason
