"""What GET /health tells each caller.

/health needs no token, so with keys it must not hand out another tenant's job
id. Without a valid token: only whether the worker is alive and takes jobs. With
a tenant's token: the details, with `active_job` only when the running job is the
caller's own (`busy` still says whether one runs). Operators, and every caller of
a worker without keys (one tenant), see everything.
"""

from __future__ import annotations

from worker_orcd.api.health import Health, HealthSummary
from worker_orcd.worker import Worker


def health_for(worker: Worker, tenant: str | None, operator: bool) -> Health | HealthSummary:
    # Read once: the id shown and the owner checked must be the same job's.
    active = worker.active_job
    health = worker.health()
    if tenant is None:
        return HealthSummary(status=health.status, ready=health.ready)
    own = active is not None and (operator or active.tenant == tenant)
    shown = active.job_id if active is not None and own else None
    return health.model_copy(update={"active_job": shown, "busy": active is not None})
