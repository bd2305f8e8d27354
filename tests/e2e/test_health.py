"""GET /health (specs/contract.md, "`GET /health`"): cached, never blocked by a running job;
no GPU figures on the CPU."""

from __future__ import annotations

import time

import llama_cpp
import pytest

from testkit.streams import StreamThread, cancel, job_of, terminal, uid, wait_active
from tests.e2e.helpers import long_prompt_job
from worker_orcd.api.health import Health

pytestmark = pytest.mark.usefixtures("worker_idle")

HEALTH_FIELDS = {
    "status",
    "model",
    "resident",
    "quant_kind",
    "vram_bytes_used",
    "tokenizer_kind",
    "vocab_size",
    "context_length",
    "uptime_seconds",
    "backend",
    "gpu_device",
    "active_job",
    "active_jobs",
    "parallel",
    "slots_busy",
    "slots",
    "kv_cells",
    "batch",
    "queue_depth",
    "busy",
    "engine",
    "ready",
    "cpu_extra_buffers",
    "vram_scope",
    "gpu",
    "prefill_chunk",
    "spare_context",
    "flash_attn",
    "threads",
    "engine_nice",
}


def test_health_fields(client, worker):
    first = client.get("/health")
    assert first.status_code == 200
    h = first.json()
    assert set(h) == HEALTH_FIELDS
    Health.model_validate(h)  # the record as worker_orcd.api.health declares it, no field more
    assert h["status"] == "healthy" and h["resident"] is True
    assert h["model"].endswith(".gguf") and h["quant_kind"]
    assert h["tokenizer_kind"] == "gpt2" and h["vocab_size"] == 49152
    assert h["context_length"] == 4096  # the worker's --n-ctx
    # WO-HEALTH-2, WO-GPU-2: the backend the engine runs on; on the CPU no GPU figures.
    if h["backend"] == "cpu":
        assert h["gpu"] is None and h["gpu_device"] is None
        assert h["vram_bytes_used"] is None and h["vram_scope"] is None
    else:  # a GPU build on a machine with a GPU: every layer on --gpu-device (0)
        assert h["gpu_device"] == 0 and h["gpu"]["backend"] == h["backend"]
    if not llama_cpp.llama_supports_gpu_offload():
        assert h["backend"] == "cpu"
    assert h["prefill_chunk"]["mode"] == "auto" and h["prefill_chunk"]["tokens"] >= 16  # WO-GPU-7
    assert h["spare_context"]["mode"] == "auto" and h["spare_context"]["enabled"] is True  # WO-GPU-4
    assert h["flash_attn"] == "auto"  # WO-GPU-6
    assert h["active_job"] is None and h["queue_depth"] == 0
    assert h["busy"] is False and h["ready"] is True
    # WO-ENGINE-1: the model lives in the engine process, a child of the worker.
    assert h["engine"]["state"] == "ready" and h["engine"]["reason"] is None
    assert h["engine"]["pid"] and h["engine"]["pid"] != worker.proc.pid
    assert set(h["cpu_extra_buffers"]) == {"mode", "enabled", "source", "reason"}  # WO-CPU-1
    # WO-THREADS-1: chosen while it runs among counts up to the cores (the test worker's --threads).
    for kind in ("decode", "batch"):
        threads = h["threads"][kind]
        assert threads["current"] in threads["candidates"] and max(threads["candidates"]) >= 1
        assert set(threads) == {"mode", "current", "candidates", "step_ms", "switches"}
    assert h["engine_nice"] == 0  # WO-ENGINE-6
    later = client.get("/health").json()
    assert later["uptime_seconds"] >= h["uptime_seconds"] > 0


def test_health_during_long_prompt(client, worker):
    job_id = uid("health-busy")
    stream = StreamThread(worker, long_prompt_job(job_id)).start()
    wait_active(client, job_id)
    slowest = 0.0
    for _ in range(20):
        t0 = time.perf_counter()
        r = client.get("/health", timeout=10)
        slowest = max(slowest, time.perf_counter() - t0)
        assert r.status_code == 200
        h = r.json()
        assert h["status"] == "healthy" and h["active_job"] == job_id
    # Still inside the prompt (no token yet): health was answered while llama.cpp computed.
    assert job_of(client, job_id)["tokens_out"] == 0 and stream.events[-1].name == "started"
    # Generous: the prompt takes seconds, a health answer a few milliseconds.
    assert slowest < 2.0, slowest
    cancel(client, job_id)
    assert terminal(stream.join()).data["code"] == "CANCELLED"
