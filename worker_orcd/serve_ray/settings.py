"""What a worker-orcd application on Ray Serve is made of, as plain data.

The same settings come from the local command's flags (`python -m
worker_orcd.serve_ray`) and from a Serve config file's `args` (the application
builder, `worker_orcd.serve_ray.app:app_builder`); they travel to every replica
as a dict. Nothing here imports Ray.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker_orcd.config import WorkerConfig, default_state_dir
from worker_orcd.settings.command_line import ApiKeys, parse_api_keys, read_serve_flags
from worker_orcd.settings.schema import declared

# Flags of `worker-orcd serve` that each replica sets itself: one worker per replica,
# on its own port and state dir, on the replica's own device.
OWNED_FLAGS = tuple(field.flag.name for field in declared(WorkerConfig) if field.flag.per_replica)
LOOPBACK = "127.0.0.1"
NODE_IP = "node-ip"  # worker_host: the address Ray knows the replica's node by


@dataclass(frozen=True)
class ServeSettings:
    app_name: str = "worker-orcd"
    # Fixed replica count; None: autoscaling between min_replicas and max_replicas.
    replicas: int | None = 2
    min_replicas: int = 1
    max_replicas: int = 4
    # Serve's autoscaling target: ongoing requests (streams) per replica, those
    # waiting in Serve's queue included.
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 30.0
    look_back_period_s: float = 5.0
    threads: int = 0  # llama.cpp threads per worker; 0: the node's cores shared by the replicas
    replica_cpus: float | None = None  # Ray CPUs per replica; None: `threads`
    replica_gpus: float = 0.0  # 1 on GPU nodes: each replica's worker gets its own GPU
    router_replicas: int = 1
    # Requests Serve itself may hold for the workers when every worker's queue is full;
    # beyond it the answer is 503 WORKER_BUSY. None: max_queue × max replicas.
    serve_queue: int | None = None
    worker_host: str = LOOPBACK  # where each worker listens; NODE_IP on a multi-node cluster
    state_base: str | None = None  # the replicas' state dirs, one per slot, on each node
    # How long a replica that Serve removes lets its jobs run before its worker drains
    # (queued jobs end WORKER_SHUTDOWN, the running one gets --shutdown-grace-sec).
    drain_sec: float = 30.0
    health_check_period_s: float = 2.0
    worker_start_timeout_s: float = 300.0
    worker_args: tuple[str, ...] = ()  # passed to `worker-orcd serve` as they are
    python: str | None = None  # the interpreter that runs the workers; None: the replica's

    def __post_init__(self) -> None:
        for flag in OWNED_FLAGS:
            if any(a == flag or a.startswith(flag + "=") for a in self.worker_args):
                raise ValueError(f"{flag} is set by each replica; leave it out of the worker's flags")
        if self.replicas is not None and self.replicas < 1:
            raise ValueError("replicas must be at least 1")
        if self.replicas is None and not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError("need 0 <= min_replicas <= max_replicas")
        if self.router_replicas < 1:
            raise ValueError("router_replicas must be at least 1")
        self.worker_flags()  # fails early on flags `worker-orcd serve` would refuse

    # -- derived -----------------------------------------------------------------------

    @property
    def most_replicas(self) -> int:
        return self.replicas if self.replicas is not None else self.max_replicas

    @property
    def worker_threads(self) -> int:
        if self.threads:
            return self.threads
        return max(1, (os.cpu_count() or 1) // max(1, self.most_replicas))

    @property
    def cpus_per_replica(self) -> float:
        return self.replica_cpus if self.replica_cpus is not None else float(self.worker_threads)

    @property
    def state_root(self) -> Path:
        if self.state_base:
            return Path(self.state_base)
        return default_state_dir() / "serve" / self.app_name

    def worker_flags(self) -> argparse.Namespace:
        """`worker-orcd serve`'s own reading of the worker's flags, read once (one attribute
        per WorkerConfig field)."""
        return self._worker_flags

    @functools.cached_property
    def _worker_flags(self) -> argparse.Namespace:
        return read_serve_flags(self.worker_args)

    @property
    def max_queue(self) -> int:
        return int(self.worker_flags().max_queue)

    @property
    def shutdown_grace_sec(self) -> float:
        return float(self.worker_flags().shutdown_grace_sec)

    @property
    def cancel_deadline_sec(self) -> float:
        return float(self.worker_flags().cancel_deadline_ms) / 1000.0

    @property
    def serve_queue_limit(self) -> int:
        if self.serve_queue is not None:
            return self.serve_queue
        return max(1, self.max_queue) * self.most_replicas

    @property
    def graceful_shutdown_timeout_s(self) -> float:
        """Serve's force-kill deadline for a leaving replica: its jobs' time (drain_sec),
        then the worker's own drain (grace, a forced cancel), with room to exit."""
        return self.drain_sec + self.shutdown_grace_sec + self.cancel_deadline_sec + 15.0

    def api_keys(self) -> ApiKeys:
        """The worker's keys, read as the worker reads them."""
        flags = self.worker_flags()
        return parse_api_keys(flags.api_keys, flags.api_keys_file, flags.admin_keys)

    @property
    def keyed(self) -> bool:
        keys = self.api_keys()
        return bool(keys.tenants or keys.operators)

    # -- transport ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["worker_args"] = list(self.worker_args)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServeSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown worker-orcd Serve settings: {', '.join(unknown)}")
        values = dict(data)
        if "worker_args" in values:
            args = values["worker_args"]
            if isinstance(args, str):
                raise ValueError("worker_args is a list of flags, not one string")
            values["worker_args"] = tuple(str(a) for a in args)
        return cls(**values)
