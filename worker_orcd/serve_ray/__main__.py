"""`python -m worker_orcd.serve_ray`: worker-orcd on Ray Serve, on this machine, in one command.

    python -m worker_orcd.serve_ray --replicas 2 --threads 1
    python -m worker_orcd.serve_ray --min-replicas 1 --max-replicas 4 -- --api-keys-file keys.txt

Starts a local Ray cluster (or joins one with --address), runs the application
(a router and the Worker replicas, each one worker-orcd worker) behind Serve's
HTTP proxy, and serves until SIGINT or SIGTERM, then deletes the application
(each replica drains: its jobs end with their terminal events) and stops Ray.
Flags after `--` are the workers' own (`worker-orcd serve --help`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

from worker_orcd.serve_ray.settings import LOOPBACK, NODE_IP, ServeSettings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m worker_orcd.serve_ray", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="where Serve's HTTP proxy listens (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="its port (default 8000)")
    p.add_argument(
        "--replicas", type=int, default=None, help="a fixed number of replicas (default 2 without autoscaling flags)"
    )
    p.add_argument("--min-replicas", type=int, default=None, help="autoscaling: the fewest replicas")
    p.add_argument("--max-replicas", type=int, default=None, help="autoscaling: the most replicas")
    p.add_argument("--target-ongoing", type=float, default=2.0, help="autoscaling: streams per replica it aims at (2)")
    p.add_argument("--upscale-delay-s", type=float, default=5.0)
    p.add_argument("--downscale-delay-s", type=float, default=30.0)
    p.add_argument("--look-back-s", type=float, default=5.0, help="autoscaling: the window its load is averaged over")
    p.add_argument("--threads", type=int, default=0, help="llama.cpp threads per worker (0: the cores shared out)")
    p.add_argument("--replica-cpus", type=float, default=None, help="Ray CPUs per replica (default: --threads)")
    p.add_argument(
        "--replica-gpus", type=float, default=0.0, help="Ray GPUs per replica: 1 on GPU nodes (default 0: CPU)"
    )
    p.add_argument("--router-replicas", type=int, default=1)
    p.add_argument("--serve-queue", type=int, default=None, help="jobs Serve may hold when every worker is full")
    p.add_argument("--drain-sec", type=float, default=30.0, help="how long a leaving replica's jobs may run on")
    p.add_argument("--worker-host", default=LOOPBACK, help=f"where each worker listens ({LOOPBACK}, or {NODE_IP})")
    p.add_argument(
        "--state-base", default=None, help="the replicas' state dirs (default: under the worker's state dir)"
    )
    p.add_argument("--app-name", default="worker-orcd")
    p.add_argument("--address", default=None, help="join this Ray cluster instead of starting one here")
    p.add_argument("--ready-file", type=Path, default=None, help="write the URL and Ray's address here once serving")
    p.add_argument("worker_args", nargs=argparse.REMAINDER, help="-- then flags of worker-orcd serve")
    return p


def settings_from(args: argparse.Namespace) -> ServeSettings:
    worker_args = list(args.worker_args)
    if worker_args[:1] == ["--"]:
        worker_args = worker_args[1:]
    autoscaling = args.min_replicas is not None or args.max_replicas is not None
    if autoscaling and args.replicas is not None:
        raise ValueError("give --replicas, or --min-replicas/--max-replicas, not both")
    fields = dict(
        app_name=args.app_name,
        replicas=None if autoscaling else (args.replicas or 2),
        target_ongoing_requests=args.target_ongoing,
        upscale_delay_s=args.upscale_delay_s,
        downscale_delay_s=args.downscale_delay_s,
        look_back_period_s=args.look_back_s,
        threads=args.threads,
        replica_cpus=args.replica_cpus,
        replica_gpus=args.replica_gpus,
        router_replicas=args.router_replicas,
        serve_queue=args.serve_queue,
        drain_sec=args.drain_sec,
        worker_host=args.worker_host,
        state_base=args.state_base,
        worker_args=tuple(worker_args),
    )
    if autoscaling:
        fields["min_replicas"] = args.min_replicas if args.min_replicas is not None else 1
        fields["max_replicas"] = args.max_replicas if args.max_replicas is not None else max(4, fields["min_replicas"])
    return ServeSettings(**fields)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except ValueError as exc:
        print(f"worker-orcd serve_ray: {exc}", file=sys.stderr)
        return 2
    try:
        import ray
        from ray import serve
    except ImportError:
        print('worker-orcd serve_ray: Ray Serve is not installed; pip install "worker-orcd[ray]"', file=sys.stderr)
        return 2
    from worker_orcd.serve_ray.app import build_app
    from worker_orcd.serve_ray.cluster import NAMESPACE, directory_name

    if args.address:
        ray.init(address=args.address, logging_level=logging.WARNING, log_to_driver=False)
    else:
        # Ray starts its workers at nice 15, below every ordinary process of the machine:
        # the proxy, the router and the workers' fronts would wait behind any of them (a
        # busy client, Ray's own daemons), the cancel path included. At 0 they compete as
        # equals, and each worker's engine still runs a few levels below its front.
        os.environ.setdefault("RAY_worker_niceness", "0")
        # Logical CPUs: at least what the replicas ask for, so N one-thread workers fit on
        # fewer cores (they then share them, as the threads flag said).
        needed = math.ceil(settings.most_replicas * settings.cpus_per_replica)
        ray.init(
            num_cpus=max(os.cpu_count() or 1, needed),
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    # After ray.init, which installs handlers of its own: a signal here stops serving cleanly.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        started = time.monotonic()
        serve.run(build_app(settings), name=settings.app_name, route_prefix="/")
        url = f"http://{args.host}:{args.port}"
        count = (
            settings.replicas if settings.replicas is not None else f"{settings.min_replicas}..{settings.max_replicas}"
        )
        print(
            f"worker-orcd on Ray Serve: {url} ({count} replicas, {settings.worker_threads} threads each; "
            f"ready in {time.monotonic() - started:.1f}s; logs under {_log_dir()})",
            flush=True,
        )
        if args.ready_file is not None:
            info = {
                "url": url,
                "ray_address": ray.get_runtime_context().gcs_address,
                "app": settings.app_name,
                "namespace": NAMESPACE,
                "directory": directory_name(settings.app_name),
                "state_base": str(settings.state_root),
            }
            tmp = args.ready_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(info))
            tmp.replace(args.ready_file)
        while not stop.wait(1.0):
            pass
        print("worker-orcd on Ray Serve: stopping (each replica drains)", flush=True)
        serve.delete(settings.app_name)
        try:
            ray.kill(ray.get_actor(directory_name(settings.app_name), namespace=NAMESPACE), no_restart=True)
        except ValueError:
            pass
        if not args.address:
            serve.shutdown()
    finally:
        ray.shutdown()
    return 0


def _log_dir() -> str:
    try:
        from ray._private.worker import global_worker

        return str(Path(global_worker.node.get_session_dir_path()) / "logs")  # type: ignore[union-attr]  # a failure is caught below
    except Exception:
        return "Ray's session dir"


if __name__ == "__main__":
    sys.exit(main())
