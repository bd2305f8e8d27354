"""The job directory: which replica holds which job, and which replicas are there.

One detached, named Ray actor per application (`job_directory`). Replicas
register themselves (their worker's URL) and keep a call open on it (`watch`),
which also tells a replica that Serve is removing it. A job id is claimed by
the router before its execute is sent (a live or remembered id of the same
tenant is a 409 across the whole application), bound to the replica whose
worker accepted it, and marked ended when its stream ends.

A cancel or a look-up asks `locate`: the owner's worker URL when the owner is
known and not known to be dead, and every replica's URL for a fan-out. A cancel
for an id the directory does not know yet (or one claimed but not yet accepted)
leaves a mark that the binding replica reads, so a cancel that overtook its
execute reaches it even on a replica started after the cancel was fanned out.

The actor holds no state that cannot be rebuilt: if it dies it is restarted
empty, replicas register again at once (their `watch` fails), and cancels and
look-ups fall back to fanning out until jobs are bound again.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

WATCH_SEC = 30.0  # a replica's open `watch` call returns this often, to show it is alive
MAX_JOBS = 100_000  # entries remembered; the oldest ended ones are forgotten first

LIVE, DRAINING, DEAD = "live", "draining", "dead"
CLAIMED, BOUND, ENDED, CANCEL_MARK = "claimed", "bound", "ended", "cancel"


@dataclass
class Replica:
    replica_id: str
    url: str
    node: str
    slot: str
    state: str = LIVE
    drain: asyncio.Event = field(default_factory=asyncio.Event)
    seen: float = field(default_factory=time.monotonic)


@dataclass
class Entry:
    state: str
    owner: str | None = None
    cancel: bool = False  # a cancel came before the job was bound to its replica
    at: float = field(default_factory=time.monotonic)


class JobDirectory:
    def __init__(self, cancel_mark_sec: float = 60.0) -> None:
        self.cancel_mark_sec = cancel_mark_sec  # as the workers keep an early cancel
        self.replicas: dict[str, Replica] = {}
        self.jobs: OrderedDict[tuple[str, str], Entry] = OrderedDict()
        self.views: dict[str, set[str]] = {}  # each router's last view of Serve's running set

    # -- replicas ------------------------------------------------------------------------

    async def watch(self, replica_id: str, url: str, node: str, slot: str) -> str:
        """Register or refresh a replica, then wait: "drain" when Serve is removing it,
        "again" after WATCH_SEC."""
        replica = self.replicas.get(replica_id)
        if replica is None or replica.url != url:
            # A replica that held this slot before is gone: a live one would still hold its lock.
            for other in [r for r in self.replicas.values() if (r.node, r.slot) == (node, slot)]:
                del self.replicas[other.replica_id]
            replica = self.replicas[replica_id] = Replica(replica_id, url, node, slot)
        elif replica.state == DEAD:
            replica.state = LIVE  # a forward failed for a moment; the replica is still here
        replica.seen = time.monotonic()
        if replica.state == DRAINING:
            # A leaving replica keeps calling, so it stays listed while its jobs end.
            await asyncio.sleep(WATCH_SEC)
            return "drain"
        try:
            await asyncio.wait_for(replica.drain.wait(), WATCH_SEC)
            return "drain"
        except asyncio.TimeoutError:
            return "again"

    async def unregister(self, replica_id: str) -> None:
        self.replicas.pop(replica_id, None)

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
        stale = time.monotonic() - 2 * WATCH_SEC - 10.0
        for replica_id in [r.replica_id for r in self.replicas.values() if r.seen < stale]:
            del self.replicas[replica_id]

    async def list_replicas(self) -> list[dict[str, Any]]:
        self._prune()
        return [
            {"replica": r.replica_id, "url": r.url, "node": r.node, "slot": r.slot, "state": r.state}
            for r in self.replicas.values()
        ]

    # -- jobs ----------------------------------------------------------------------------

    def _entry(self, key: tuple[str, str]) -> Entry | None:
        entry = self.jobs.get(key)
        if entry is not None and entry.state == CANCEL_MARK and time.monotonic() - entry.at > self.cancel_mark_sec:
            del self.jobs[key]
            return None
        return entry

    def _put(self, key: tuple[str, str], entry: Entry) -> None:
        self.jobs[key] = entry
        self.jobs.move_to_end(key)
        while len(self.jobs) > MAX_JOBS:
            self.jobs.popitem(last=False)

    async def claim(self, tenant: str, job_id: str) -> bool:
        """Take the id for an execute about to be sent; False: the tenant already has it."""
        key = (tenant, job_id)
        entry = self._entry(key)
        if entry is not None and entry.state != CANCEL_MARK:
            return False
        self._put(key, Entry(CLAIMED, cancel=entry is not None))
        return True

    async def bind(self, tenant: str, job_id: str, replica_id: str) -> bool:
        """The replica's worker accepted the job. Returns whether a cancel came first."""
        key = (tenant, job_id)
        entry = self._entry(key)
        cancel = entry is not None and (entry.cancel or entry.state == CANCEL_MARK)
        self._put(key, Entry(BOUND, owner=replica_id, cancel=cancel))
        return cancel

    async def release(self, tenant: str, job_id: str) -> None:
        """The execute was refused (nothing queued): the id is free again."""
        key = (tenant, job_id)
        entry = self._entry(key)
        if entry is not None and entry.state == CLAIMED:
            if entry.cancel:
                self._put(key, Entry(CANCEL_MARK))
            else:
                del self.jobs[key]

    async def ended(self, tenant: str, job_id: str) -> None:
        entry = self._entry((tenant, job_id))
        if entry is not None and entry.state == BOUND:
            entry.state = ENDED

    async def locate(self, tenant: str, job_id: str, for_cancel: bool = False) -> dict[str, Any]:
        """The owner's worker (None when unknown or dead) and every reachable replica's."""
        key = (tenant, job_id)
        entry = self._entry(key)
        if for_cancel:
            if entry is None:
                self._put(key, Entry(CANCEL_MARK))
            elif entry.state == CLAIMED:
                entry.cancel = True
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
        return [list(k) for k, e in self.jobs.items() if e.owner == replica_id and e.state == BOUND]

    async def entry(self, tenant: str, job_id: str) -> dict[str, Any] | None:
        entry = self._entry((tenant, job_id))
        if entry is None:
            return None
        return {"state": entry.state, "owner": entry.owner, "cancel": entry.cancel}
