"""What GET /health tells each caller.

/health needs no token, so with keys it must not hand out another tenant's job
id. Without a valid token: only whether the worker is alive and takes jobs. With
a tenant's token: the details, with `active_job` only when the running job is the
caller's own (`busy` still says whether one runs). Operators, and every caller of
a worker without keys (one tenant), see everything.
"""

from __future__ import annotations

from typing import Any

from worker_orcd.worker import Worker


def health_for(worker: Worker, tenant: str | None, operator: bool) -> dict[str, Any]:
    health = worker.health()
    # Read once: the id shown and the owner checked must be the same job's.
    active = worker.active_job
    ready = worker.ready
    if tenant is None:
        return {"status": health["status"], "ready": ready}
    own = active is not None and (operator or active.tenant == tenant)
    health["active_job"] = active.job_id if active is not None and own else None
    health["busy"] = active is not None
    health["ready"] = ready
    return health
