"""What GET /health tells each caller.

/health needs no token, so with keys it must not hand out another tenant's job
id. Without a valid token: only whether the worker is alive and takes jobs. With
a tenant's token: the details, with `active_job` and `active_jobs` naming only the
caller's own running jobs (`busy` and `slots_busy` still say whether and how many run). Operators, and every caller of
a worker without keys (one tenant), see everything.
"""

from __future__ import annotations

from worker_orcd.api.health import Health, HealthSummary
from worker_orcd.worker import Worker


def health_for(worker: Worker, tenant: str | None, operator: bool) -> Health | HealthSummary:
    # Read once: the ids shown and the owners checked must be the same jobs'.
    running = worker.active_jobs()
    health = worker.health()
    if tenant is None:
        return HealthSummary(status=health.status, ready=health.ready)
    shown = [job.job_id for job in running if operator or job.tenant == tenant]
    return health.model_copy(
        update={
            "active_job": shown[0] if shown else None,
            "active_jobs": shown,
            "busy": bool(running),
            "slots_busy": len(running),
        }
    )
