"""What GET /health tells each caller.

/health needs no token, so with keys it must not hand out another tenant's job
id. Without a valid token: only whether the worker is alive and takes jobs. With
a tenant's token: the details, with `active_job`, `active_jobs` and each slot's
`job_id` naming only the caller's own running jobs (`busy` and `slots_busy` still
say whether and how many run). Operators, and every caller of a worker without
keys (one tenant), see everything.
"""

from __future__ import annotations

from worker_orcd.api.health import Health, HealthSummary
from worker_orcd.worker import Worker


def health_for(worker: Worker, tenant: str | None, operator: bool) -> Health | HealthSummary:
    health = worker.health()
    if tenant is None:
        return HealthSummary(status=health.status, ready=health.ready)

    # The record's own reading of the slots: the ids shown and the owners checked are the same jobs'.
    def mine(job_id: str | None) -> bool:
        return job_id is not None and (operator or health.owner_of(job_id) == tenant)

    shown = [job_id for job_id in health.active_jobs if mine(job_id)]
    slots = [s if mine(s.job_id) else s.model_copy(update={"job_id": None}) for s in health.slots]
    return health.model_copy(update={"active_job": shown[0] if shown else None, "active_jobs": shown, "slots": slots})
