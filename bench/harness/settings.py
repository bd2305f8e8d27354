"""What a benchmark run does: which scenarios, how many samples, against what."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

SCENARIOS = ("stream", "ttft", "cancel-decode", "cancel-prompt", "overhead", "memory", "neighbours")


@dataclass(frozen=True)
class BenchSettings:
    url: str | None = None  # a running worker; None: start one
    model: Path | None = None  # None: the worker's default model
    worker_args: tuple[str, ...] = ()  # `serve` flags: passed to a started worker, read for baselines
    worker_pid: int | None = None  # for memory figures of a worker at --url
    api_token: str | None = None
    scenarios: tuple[str, ...] = SCENARIOS
    peer: bool = True
    llama_server: Path | None = None  # llama.cpp's llama-server binary: a side for scale
    bare_threads: tuple[int, ...] = ()  # (): 1 and the worker's thread count
    rounds: int = 10  # streaming runs per side
    max_tokens: int = 256
    ttft_samples: int = 100
    cancels: int = 100
    cancel_after: int = 20
    prompt_cancels: int = 100
    prompt_cancel_delay_s: float = 0.3
    long_prompt_repeat: int = 466
    peer_cancels: int = 20
    peer_prompt_cancels: int = 3
    overhead_rounds: int = 12
    overhead_tokens: int = 256
    cycles: int = 500
    first_cycles: int = 10
    neighbour_rounds: int = 4  # streaming runs per side beside 0, 1 and 2 busy processes
    neighbour_tokens: int = 64
    neighbour_cancels: int = 20  # cancels during decode beside 1 busy process
    settle_s: float = 0.2
    quiet_limit: float | None = 0.15  # None: keep every sample, disturbed or not
    quiet_retries: int = 3
    quiet_wait_s: float = 60.0
    json_path: Path | None = None


# The smallest run that exercises every code path: a smoke test, not a measurement.
QUICK = dict(
    rounds=1,
    max_tokens=24,
    ttft_samples=2,
    cancels=3,
    cancel_after=4,
    prompt_cancels=2,
    peer_cancels=1,
    peer_prompt_cancels=1,
    overhead_rounds=2,
    overhead_tokens=24,
    cycles=12,
    first_cycles=2,
    neighbour_rounds=1,
    neighbour_tokens=12,
    neighbour_cancels=2,
    settle_s=0.05,
    quiet_limit=None,
)


def quick(settings: BenchSettings) -> BenchSettings:
    return replace(settings, **QUICK)


@dataclass(frozen=True)
class WorkerSettings:
    """The worker flags the baselines copy."""

    n_ctx: int
    threads: int
    prefill_chunk: int | None  # None: auto, measured by the worker at start (see `running`)
    gpu_device: int | None  # None: the CPU

    @property
    def gpu_layers(self) -> int:
        """The worker's offload, for the baselines: every layer, or none."""
        return -1 if self.gpu_device is not None else 0


FALLBACK_CHUNK = 256  # for a worker that does not report its chunk


def running(flags: WorkerSettings, health: dict) -> WorkerSettings:
    """What the worker really runs with, from its /health: the chunk it chose, and a GPU
    only where its engine runs on one (a CPU build ignores --gpu-device)."""
    chunk = (health.get("prefill_chunk") or {}).get("tokens") or flags.prefill_chunk or FALLBACK_CHUNK
    on_gpu = health.get("backend", "cpu") != "cpu"
    return replace(flags, prefill_chunk=chunk, gpu_device=health.get("gpu_device") if on_gpu else None)


def worker_settings(worker_args: tuple[str, ...]) -> WorkerSettings:
    """Read the `serve` flags as the worker reads them, so defaults cannot drift."""
    from worker_orcd.settings.command_line import serve_parser

    args = serve_parser().parse_args(list(worker_args))
    return WorkerSettings(
        n_ctx=args.n_ctx,
        threads=args.n_threads or os.cpu_count() or 1,
        prefill_chunk=args.prefill_chunk,
        gpu_device=args.gpu_device,
    )
