"""The job directory: which replica holds which job, and which replicas are there.

One detached, named Ray actor per application (`job_directory`). Replicas
register themselves (their worker's URL) and keep a call open on it (`watch`),
which also tells a replica that Serve is removing it. A job id is claimed by
the router before its execute is sent (a live or remembered id of the same
tenant is a 409 across the whole application), bound to the replica whose
worker accepted it, and marked ended when its stream ends. A claim is released
when the execute reaches no worker; one whose router died lapses (CLAIM_SEC
without a renewal).

A cancel or a look-up asks `locate`: the owner's worker URL when the owner is
known and not known to be dead, and every replica's URL for a fan-out. A cancel
for an id the directory does not know yet (or one claimed but not yet accepted)
leaves a mark that the binding replica reads, so a cancel that overtook its
execute reaches it even on a replica started after the cancel was fanned out.

What is remembered is bounded without touching live jobs: ended jobs' ids (the
newest MAX_JOBS), and cancel marks per tenant as each worker bounds its early
cancels, so anyone's flood of cancels for unknown ids evicts only their own
tenant's oldest marks, never a claimed or bound id.

The actor holds no state that cannot be rebuilt: if it dies it is restarted
empty, replicas register again at once (their `watch` fails), and cancels and
look-ups fall back to fanning out until jobs are bound again.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worker_orcd.jobs.cancel_flag import CancelReason
from worker_orcd.jobs.early_cancels import EarlyCancels

WATCH_SEC = 30.0  # a replica's open `watch` call returns this often, to show it is alive
MAX_JOBS = 100_000  # ended jobs' ids remembered; the oldest are forgotten first
# A claim not renewed for this long is free again: its router renews it while Serve holds
# the execute (router.CLAIM_RENEW_SEC), so only a dead router's claims lapse.
CLAIM_SEC = 60.0

LIVE, DRAINING, DEAD = "live", "draining", "dead"
CLAIMED, BOUND, ENDED = "claimed", "bound", "ended"


@dataclass
class Replica:
    replica_id: str
    url: str
    node: str
    slot: str
    seen: float
    state: str = LIVE
    drain: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Entry:
    state: str
    at: float  # claimed (or renewed) at
    owner: str | None = None
    cancel: bool = False  # a cancel came before the job was bound, or before its worker answered


class JobDirectory:
    def __init__(self, cancel_mark_sec: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.replicas: dict[str, Replica] = {}
        self.live: dict[tuple[str, str], Entry] = {}  # claimed or bound: never evicted
        self.finished: OrderedDict[tuple[str, str], Entry] = OrderedDict()  # oldest first
        # Cancels for ids not claimed yet, kept as long as and as many as a worker keeps them.
        self.marks = EarlyCancels(cancel_mark_sec, clock=clock)
        self.views: dict[str, set[str]] = {}  # each router's last view of Serve's running set

    # -- replicas ------------------------------------------------------------------------

    async def watch(self, replica_id: str, url: str, node: str, slot: str) -> str:
        """Register or refresh a replica, then wait: "drain" when Serve is removing it,
        "again" after WATCH_SEC."""
        replica = self.replicas.get(replica_id)
        if replica is None or replica.url != url:
            # A replica that held this slot before is gone: a live one would still hold its lock.
            for other in [r for r in self.replicas.values() if (r.node, r.slot) == (node, slot)]:
                self._forget(other.replica_id)
            replica = self.replicas[replica_id] = Replica(replica_id, url, node, slot, self.clock())
        elif replica.state == DEAD:
            replica.state = LIVE  # a forward failed for a moment; the replica is still here
        replica.seen = self.clock()
        if replica.state == DRAINING:
            # A leaving replica keeps calling, so it stays listed while its jobs end.
            await asyncio.sleep(WATCH_SEC)
            return "drain"
        try:
            await asyncio.wait_for(replica.drain.wait(), WATCH_SEC)
            return "drain"
        except TimeoutError:
            return "again"

    async def unregister(self, replica_id: str) -> None:
        self._forget(replica_id)

    def _forget(self, replica_id: str) -> None:
        """A replica that is gone ended its jobs (its ledger says how): their ids stay taken."""
        self.replicas.pop(replica_id, None)
        for key in [k for k, e in self.live.items() if e.state == BOUND and e.owner == replica_id]:
            self._end(key, self.live[key])

    async def suspect(self, replica_id: str) -> None:
        """A forward to this replica's worker failed twice: no longer named as an owner.
        Fan-outs still include it until it is gone (WATCH_SEC without a call, or its slot
        taken by another replica), so a wrong suspicion costs a refused connection, never a
        cancel that misses its job."""
        replica = self.replicas.get(replica_id)
        if replica is not None:
            replica.state = DEAD

    async def running(self, reporter: str, replica_ids: list[str]) -> list[str]:
        """A router's view of the replicas Serve routes to. A replica that leaves a view it
        was in is being removed (or has died): it is told to drain. Returns those told."""
        now = set(replica_ids)
        left = self.views.get(reporter, set()) - now
        self.views[reporter] = now
        told = []
        for replica_id in left:
            replica = self.replicas.get(replica_id)
            if replica is not None and replica.state == LIVE:
                replica.state = DRAINING
                replica.drain.set()
                told.append(replica_id)
        return told

    def _prune(self) -> None:
        """Forget replicas that stopped calling: a live or leaving one calls every WATCH_SEC."""
        stale = self.clock() - 2 * WATCH_SEC - 10.0
        for replica_id in [r.replica_id for r in self.replicas.values() if r.seen < stale]:
            self._forget(replica_id)

    async def list_replicas(self) -> list[dict[str, Any]]:
        self._prune()
        return [
            {"replica": r.replica_id, "url": r.url, "node": r.node, "slot": r.slot, "state": r.state}
            for r in self.replicas.values()
        ]

    # -- jobs ----------------------------------------------------------------------------

    def _entry(self, key: tuple[str, str]) -> Entry | None:
        entry = self.live.get(key)
        if entry is not None and entry.state == CLAIMED and self.clock() - entry.at > CLAIM_SEC:
            # Its router stopped renewing it (it died): the id is free, a cancel for it kept.
            self._drop(key, entry)
            return None
        return entry if entry is not None else self.finished.get(key)

    def _drop(self, key: tuple[str, str], entry: Entry) -> None:
        del self.live[key]
        if entry.cancel:
            self.marks.remember(*key, CancelReason.CLIENT, "")

    def _end(self, key: tuple[str, str], entry: Entry) -> None:
        del self.live[key]
        entry.state = ENDED
        self.finished[key] = entry
        while len(self.finished) > MAX_JOBS:
            self.finished.popitem(last=False)

    async def claim(self, tenant: str, job_id: str) -> bool:
        """Take the id for an execute about to be sent; False: the tenant already has it.
        The claim lapses after CLAIM_SEC unless renewed."""
        key = (tenant, job_id)
        if self._entry(key) is not None:
            return False
        cancel = self.marks.take(tenant, job_id) is not None
        self.live[key] = Entry(CLAIMED, cancel=cancel, at=self.clock())
        return True

    async def renew(self, tenant: str, job_id: str) -> None:
        """The router still holds the claimed execute (Serve's queue holds it)."""
        entry = self._entry((tenant, job_id))
        if entry is not None and entry.state == CLAIMED:
            entry.at = self.clock()

    async def bind(self, tenant: str, job_id: str, replica_id: str) -> bool:
        """The replica's worker has the job. Returns whether a cancel came first."""
        key = (tenant, job_id)
        entry = self._entry(key)
        cancel = self.marks.take(tenant, job_id) is not None or (entry is not None and entry.cancel)
        self.finished.pop(key, None)
        self.live[key] = Entry(BOUND, owner=replica_id, cancel=cancel, at=self.clock())
        return cancel

    async def release(self, tenant: str, job_id: str, owner: str | None = None) -> None:
        """The execute was refused or never reached a worker (nothing queued): the id is free
        again. A claim is released by anyone; a bound job only by its `owner`."""
        key = (tenant, job_id)
        entry = self._entry(key)
        if entry is not None and (entry.state == CLAIMED or (entry.state == BOUND and entry.owner == owner)):
            self._drop(key, entry)

    async def ended(self, tenant: str, job_id: str) -> None:
        key = (tenant, job_id)
        entry = self._entry(key)
        if entry is not None and entry.state == BOUND:
            self._end(key, entry)

    async def locate(self, tenant: str, job_id: str, for_cancel: bool = False) -> dict[str, Any]:
        """The owner's worker (None when unknown or dead) and every reachable replica's."""
        key = (tenant, job_id)
        entry = self._entry(key)
        if for_cancel:
            if entry is None:
                self.marks.remember(tenant, job_id, CancelReason.CLIENT, "")
            elif entry.state != ENDED:
                entry.cancel = True  # kept as a mark should the execute be refused
        self._prune()
        owner = None
        if entry is not None and entry.owner is not None:
            replica = self.replicas.get(entry.owner)
            if replica is not None and replica.state != DEAD:
                owner = [replica.replica_id, replica.url]
        return {
            "owner": owner,
            "owner_id": entry.owner if entry is not None else None,
            "state": entry.state if entry is not None else None,
            "replicas": [[r.replica_id, r.url] for r in self.replicas.values()],
        }

    async def jobs_of(self, replica_id: str) -> list[list[str]]:
        """(tenant, job id) of the jobs bound to a replica and not ended (for operators, tests)."""
        return [list(k) for k, e in self.live.items() if e.owner == replica_id and e.state == BOUND]

    async def entry(self, tenant: str, job_id: str) -> dict[str, Any] | None:
        entry = self._entry((tenant, job_id))
        if entry is None:
            return None
        return {"state": entry.state, "owner": entry.owner, "cancel": entry.cancel}
