"""The Serve application: a Router (the HTTP ingress) in front of the Worker replicas.

    serve.run(build_app(ServeSettings(replicas=2, threads=1)), name="worker-orcd", route_prefix="/")

or, from a Serve config file, `import_path: worker_orcd.serve_ray.app:app_builder`
with the settings as `args` (deploy/ray/serve-config.yaml).
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig

from worker_orcd.serve_ray.replica import WorkerReplica
from worker_orcd.serve_ray.router import Router
from worker_orcd.serve_ray.routing import DrainAwareRouter
from worker_orcd.serve_ray.settings import ServeSettings

WORKER_DEPLOYMENT = "Worker"
ROUTER_DEPLOYMENT = "Router"


def worker_options(settings: ServeSettings) -> dict[str, Any]:
    s = settings
    options: dict[str, Any] = {
        "name": WORKER_DEPLOYMENT,
        # The worker's own queue decides what waits where: Serve sends a replica no more
        # jobs than its worker takes (one running, --max-queue waiting), and holds the
        # rest, up to serve_queue, for the first replica with room.
        "max_ongoing_requests": s.max_queue + 1,
        "max_queued_requests": s.serve_queue_limit,
        "ray_actor_options": {"num_cpus": s.cpus_per_replica, "num_gpus": s.replica_gpus},
        "graceful_shutdown_timeout_s": s.graceful_shutdown_timeout_s,
        "graceful_shutdown_wait_loop_s": 0.2,
        "health_check_period_s": s.health_check_period_s,
        "health_check_timeout_s": 30.0,
        "request_router_config": RequestRouterConfig(
            request_router_class=DrainAwareRouter,  # type: ignore[arg-type]  # Serve takes the class too
            request_router_kwargs={
                "app_name": s.app_name,
                "cancel_mark_sec": float(s.worker_flags().early_cancel_sec),
            },
        ),
    }
    if s.replicas is not None:
        options["num_replicas"] = s.replicas
    else:
        options["num_replicas"] = "auto"
        options["autoscaling_config"] = {
            "min_replicas": s.min_replicas,
            "max_replicas": s.max_replicas,
            "initial_replicas": max(1, s.min_replicas),
            "target_ongoing_requests": s.target_ongoing_requests,
            "upscale_delay_s": s.upscale_delay_s,
            "downscale_delay_s": s.downscale_delay_s,
            "look_back_period_s": s.look_back_period_s,
            # Serve checks the window against this (deprecated) interval; the replicas' and
            # handles' push intervals are Serve's environment variables.
            "metrics_interval_s": min(10.0, s.look_back_period_s / 2),
        }
    return options


def router_options(settings: ServeSettings) -> dict[str, Any]:
    return {
        "name": ROUTER_DEPLOYMENT,
        "num_replicas": settings.router_replicas,
        # Every open stream is one ongoing request here; the workers' queues bound them.
        "max_ongoing_requests": 10_000,
        # Light: forwarding bytes. Counted as no CPU so it fits beside the workers.
        "ray_actor_options": {"num_cpus": 0},
        "graceful_shutdown_timeout_s": settings.graceful_shutdown_timeout_s,
        "graceful_shutdown_wait_loop_s": 0.2,
    }


def build_app(settings: ServeSettings):
    """The application, ready for serve.run."""
    data = settings.to_dict()
    # Serve's stubs know only the decorator form of serve.deployment.
    worker = serve.deployment(WorkerReplica).options(**worker_options(settings))  # type: ignore[attr-defined]
    router = serve.deployment(Router).options(**router_options(settings))  # type: ignore[attr-defined]
    return router.bind(worker.bind(data), data)


def app_builder(args: dict[str, Any]):
    """For a Serve config file: `import_path: worker_orcd.serve_ray.app:app_builder`,
    `args:` the fields of ServeSettings."""
    return build_app(ServeSettings.from_dict(args or {}))
