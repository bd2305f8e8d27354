"""Cancels that arrive before their job: kept a while for the execute that may follow.

An orchestrator may send `POST /cancel` while its `POST /execute` for the same
id is still on its way (validated, tokenized, not yet registered). The cancel
for an id the worker does not know is remembered for the caller's tenant, for
`ttl_sec` and at most `max_per_tenant` ids (the oldest forgotten first); an
execute with that id inside the window ends at once as cancelled.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from worker_orcd.jobs.cancel_flag import CancelReason

DEFAULT_TTL_SEC = 60.0
DEFAULT_MAX_PER_TENANT = 1024


@dataclass(frozen=True, slots=True)
class EarlyCancel:
    reason: CancelReason
    requested_at: str  # wall clock, for the ledger
    raised_at: float  # time.perf_counter(), for cancel_ms
    expires: float  # on the store's clock


class EarlyCancels:
    def __init__(
        self,
        ttl_sec: float = DEFAULT_TTL_SEC,
        max_per_tenant: int = DEFAULT_MAX_PER_TENANT,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_sec = ttl_sec
        self.max_per_tenant = max_per_tenant
        self._clock = clock
        self._by_tenant: dict[str, OrderedDict[str, EarlyCancel]] = {}
        self._lock = threading.Lock()

    def remember(self, tenant: str, job_id: str, reason: CancelReason, requested_at: str) -> None:
        """Keep a cancel for an unknown id; a repeat keeps the first one's times."""
        if self.ttl_sec <= 0 or self.max_per_tenant <= 0:
            return
        now = self._clock()
        with self._lock:
            kept = self._by_tenant.setdefault(tenant, OrderedDict())
            self._expire(kept, now)
            if job_id in kept:
                return
            kept[job_id] = EarlyCancel(reason, requested_at, time.perf_counter(), now + self.ttl_sec)
            while len(kept) > self.max_per_tenant:
                kept.popitem(last=False)

    def take(self, tenant: str, job_id: str) -> EarlyCancel | None:
        """The cancel kept for this id, once; None when there is none or it expired."""
        with self._lock:
            kept = self._by_tenant.get(tenant)
            if not kept:
                return None
            self._expire(kept, self._clock())
            found = kept.pop(job_id, None)
            if not kept:
                del self._by_tenant[tenant]
            return found

    def __len__(self) -> int:
        with self._lock:
            return sum(len(k) for k in self._by_tenant.values())

    @staticmethod
    def _expire(kept: OrderedDict[str, EarlyCancel], now: float) -> None:
        # Insertion order is arrival order and the ttl is fixed: expired ones lead.
        while kept:
            first = next(iter(kept.values()))
            if first.expires > now:
                return
            kept.popitem(last=False)
