"""Where the engine runs and what it costs there (specs/operating.md, "Devices"), checked on the CPU.

The same flags decide a GPU's offload, spare context, flash attention and
prompt chunk; tests/gpu/ checks what only a GPU can show.
"""

from __future__ import annotations

import pytest

from testkit.prompts import CHAT, LONG_ANSWER_PROMPT
from testkit.streams import StreamThread, terminal, uid
from testkit.wire import execute
from testkit.worker import WorkerProcess


@pytest.fixture(scope="module")
def cpu_worker():
    w = WorkerProcess(
        args=[
            "--threads", "1",
            "--gpu-device", "none",
            "--prefill-chunk", "64",
            "--spare-context", "off",
            "--flash-attn", "off",
        ]
    ).start()
    yield w
    assert w.stop() == 0


def test_the_flags_are_obeyed_and_shown(cpu_worker):
    """WO-GPU-1, WO-GPU-4, WO-GPU-6, WO-GPU-7: --gpu-device none runs on the CPU on any
    build; a fixed chunk, no spare and flash attention off are what /health says."""
    with cpu_worker.client() as c:
        h = c.get("/health").json()
        assert h["backend"] == "cpu" and h["gpu"] is None and h["gpu_device"] is None
        assert h["vram_bytes_used"] is None and h["vram_scope"] is None
        assert h["prefill_chunk"] == {
            "tokens": 64, "mode": "fixed", "budget_ms": None, "stop_points": None, "measured_ms": None
        }
        spare = h["spare_context"]
        assert spare["mode"] == "off" and spare["enabled"] is False and spare["memory"] == "ram"
        assert spare["bytes"] > 0  # measured when the first context was made, then freed
        assert h["flash_attn"] == "off"
        events = execute(c, {"job_id": uid("cpu"), "prompt": CHAT.format("Name a colour."), "max_tokens": 8})
        assert terminal(events).name == "end"


def test_no_spare_context_means_a_smaller_idle_footprint(cpu_worker, worker, worker_idle):
    """WO-GPU-4: at rest a worker without the spare holds about one context less than one
    with it (the spare's cost, as /health reports it)."""
    with worker.client() as c:
        spare = c.get("/health").json()["spare_context"]
    assert spare["enabled"] is True and spare["bytes"] > 0
    with_spare, without = worker.settled_rss(), cpu_worker.settled_rss()
    assert with_spare - without > spare["bytes"] / 2, (with_spare, without, spare)


def test_a_job_without_a_spare_context_still_cancels_and_frees(cpu_worker):
    """WO-GPU-4: with --spare-context off each job makes its own context; a cancel still
    frees it before CANCELLED, so the footprint returns to the model alone."""
    idle = cpu_worker.settled_rss()
    job_id = uid("nospare")
    body = {"job_id": job_id, "prompt": LONG_ANSWER_PROMPT, "max_tokens": 500, "temperature": 0}
    stream = StreamThread(cpu_worker, body).start()
    stream.wait_tokens(5)
    with cpu_worker.client() as c:
        assert c.post("/cancel", json={"job_id": job_id}).status_code == 202
    end = terminal(stream.join())
    assert end.name == "error" and end.data["code"] == "CANCELLED"
    assert cpu_worker.settled_rss() - idle < 16 << 20


def test_the_prompt_chunk_is_measured_against_the_budget(worker):
    """WO-GPU-7: auto (the default) picks the largest chunk whose wait was within the
    budget, from what it measured, and logs the choice."""
    with worker.client() as c:
        chunk = c.get("/health").json()["prefill_chunk"]
    assert chunk["mode"] == "auto" and chunk["budget_ms"] == 20.0
    measured = {int(k): v for k, v in chunk["measured_ms"].items()}
    within = [size for size, ms in measured.items() if ms <= chunk["budget_ms"]]
    assert chunk["tokens"] == (max(within) if within else min(measured))
    assert chunk["stop_points"] == ("graph nodes" if worker_backend(worker) == "cpu" else "chunks")


def worker_backend(worker: WorkerProcess) -> str:
    with worker.client() as c:
        return c.get("/health").json()["backend"]


def test_a_ggml_abort_is_logged_as_json_and_fails_only_its_job(tmp_path):
    """WO-GPU-5: what ggml says before it aborts (a CUDA error's text) is a JSON log line,
    and so is what it writes to standard error as the engine dies; the job ends
    ENGINE_FAILED and the next one is served."""
    w = WorkerProcess(args=["--threads", "1"], env={"WORKER_ORCD_FAULTS": "abort=abort-"}).start()
    try:
        job_id = uid("abort")
        with w.client() as c:
            events = execute(c, {"job_id": job_id, "prompt": LONG_ANSWER_PROMPT, "max_tokens": 64})
            end = terminal(events)
            assert end.name == "error" and end.data["code"] == "ENGINE_FAILED"
            logged = w.log.wait_for("llama_log", message="CUDA error: injected fault")
            assert logged["level"] == "error" and logged["source"] == "llama.cpp"
            output = w.log.wait_for("engine_output", line="faults.py:1: CUDA error")
            assert output["level"] == "warning"
            died = w.log.wait_for("engine_died")
            assert died["how"] == "killed by SIGABRT"
            events = execute(c, {"job_id": uid("after"), "prompt": CHAT.format("Hi."), "max_tokens": 4}, timeout=60)
            assert terminal(events).name == "end"
        assert all(line.startswith("{") for line in w.log.raw), "every line the worker wrote is JSON"
    finally:
        assert w.stop() == 0
