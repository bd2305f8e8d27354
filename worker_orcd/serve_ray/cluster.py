"""Where the application's shared pieces live in the Ray cluster."""

from __future__ import annotations

NAMESPACE = "worker-orcd"


def directory_name(app_name: str) -> str:
    return f"job-directory-{app_name}"


def get_directory(app_name: str, cancel_mark_sec: float = 60.0):
    """The application's job directory actor, made by whichever replica asks first.

    Detached, so it outlives the replica that made it; restarted (empty) if it dies.
    It needs no CPU of its own: a few dict operations per job.
    """
    import ray

    from worker_orcd.serve_ray.directory import JobDirectory

    return (
        ray.remote(JobDirectory)
        .options(
            name=directory_name(app_name),
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            num_cpus=0,
            max_concurrency=1000,
        )
        .remote(cancel_mark_sec)
    )
