"""The connections the front holds, and which one makes room for a new one (WO-LIMIT-4).

Each connection is in one phase. When a new connection comes and `cap` are held,
the one that has been longest in the first phase of EVICTION_ORDER that has any
makes room: a connection that has sent part of a request header and not the
rest, then one that has sent nothing yet, then one idle between requests, then
one whose body is not whole. One that is being answered is never taken.

Part of a header before nothing at all: every client's new connection has sent
nothing for a moment, and only a slow or hostile one stops inside a header. And
one whose client's bytes wait unread in the kernel goes last: it has just come,
or its client has just sent its next request, and the loop has not read it yet.
Under a flood that replaces each connection the worker closes, a new connection
otherwise soon becomes the one there longest, and is closed before its request
is read. When none can go, the new connection may take one of `reserve` places
kept for POST /cancel and GET /health; past those it is refused.
"""

from __future__ import annotations

from collections.abc import Hashable
from enum import Enum
from typing import Protocol


class Phase(Enum):
    SILENT = "silent"  # nothing of a request sent yet (a new connection)
    HEADER = "header"  # part of its request's header sent, not the rest
    BODY = "body"  # the header whole, the body not
    IDLE = "idle"  # between requests
    BUSY = "busy"  # a whole request being answered


EVICTION_ORDER = (Phase.HEADER, Phase.SILENT, Phase.IDLE, Phase.BODY)


class Admission(Enum):
    NORMAL = "normal"
    RESERVE = "reserve"  # a place kept for POST /cancel and GET /health
    REFUSED = "refused"


class Member(Hashable, Protocol):
    def evict(self) -> None:
        """Close at once: the table has already let go of it."""

    def has_unread(self) -> bool:
        """Its client's bytes wait in the kernel, not read yet."""


class ConnectionTable:
    def __init__(self, cap: int, reserve: int) -> None:
        self.cap = cap
        self.reserve = reserve
        self.evicted = 0
        self.refused = 0
        self._in_reserve: dict[Member, bool] = {}
        # Per phase, in the order they entered it: the first is the one there longest.
        self._phases: dict[Phase, dict[Member, None]] = {phase: {} for phase in Phase}
        self._phase_of: dict[Member, Phase] = {}
        self._reserved = 0

    def __len__(self) -> int:
        return len(self._phase_of)

    def admit(self, member: Member, phase: Phase = Phase.SILENT) -> Admission:
        if len(self._phase_of) - self._reserved < self.cap:
            in_reserve = False
        elif (victim := self._oldest_evictable()) is not None:
            in_reserve = self._in_reserve[victim]  # the newcomer takes its place
            self.remove(victim)
            self.evicted += 1
            victim.evict()
        elif self._reserved < self.reserve:
            in_reserve = True
        else:
            self.refused += 1
            return Admission.REFUSED
        self._in_reserve[member] = in_reserve
        self._reserved += in_reserve
        self.move(member, phase)
        return Admission.RESERVE if in_reserve else Admission.NORMAL

    def move(self, member: Member, phase: Phase) -> None:
        """Into `phase`, as its newest member; nothing for a member the table let go."""
        if member not in self._in_reserve:
            return
        old = self._phase_of.get(member)
        if old is not None:
            del self._phases[old][member]
        self._phases[phase][member] = None
        self._phase_of[member] = phase

    def remove(self, member: Member) -> None:
        in_reserve = self._in_reserve.pop(member, None)
        if in_reserve is None:
            return
        self._reserved -= in_reserve
        del self._phases[self._phase_of.pop(member)][member]

    def phase_of(self, member: Member) -> Phase | None:
        return self._phase_of.get(member)

    def count(self, phase: Phase) -> int:
        return len(self._phases[phase])

    def _oldest_evictable(self) -> Member | None:
        # A place of the main pool first: the newcomer then gets a main place. The reserve
        # is small, so skipping its members costs little.
        unread: Member | None = None  # the first candidate that has unread bytes
        for want_reserve in (False, True):
            for phase in EVICTION_ORDER:
                for member in self._phases[phase]:
                    if self._in_reserve[member] is want_reserve:
                        if not member.has_unread():
                            return member
                        unread = unread or member
        return unread
