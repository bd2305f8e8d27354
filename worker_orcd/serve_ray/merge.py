"""What the router makes of several workers' answers: one /health, one /metrics,
one /jobs, and the end of a stream that its replica could not finish.

Pure functions over bytes and dicts, so they are tested without Ray.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from worker_orcd.api.errors import HTTP_STATUS, openai_error_body
from worker_orcd.api.events import SseParser, encode_data, encode_event, is_openai_terminal, is_terminal
from worker_orcd.api.records import JobSummary
from worker_orcd.errors import ErrorCode
from worker_orcd.jobs import events

REPLICA_FAILED_MESSAGE = (
    "the replica running this job died; the job's record reads failed with WORKER_RESTARTED "
    "(GET /jobs/{id}); resubmit it under a new job_id"
)

# -- /health ---------------------------------------------------------------------------------

ANONYMOUS_KEYS = {"status", "ready"}


def merge_health(views: Sequence[tuple[str, str, dict[str, Any]]]) -> dict[str, Any]:
    """One /health of every replica's, as the caller may see them: (replica, its state in
    the directory, its /health). Healthy and ready when one live replica is; the queue
    and the caller's own running job summed over replicas; each replica's own view under
    `replicas` (not for anonymous callers, who get `status` and `ready` only)."""
    live = [(rid, state, v) for rid, state, v in views if state == "live"]
    healthy = any(v.get("status") == "healthy" for _, _, v in live)
    ready = any(v.get("ready") is True for _, _, v in live)
    summary = {"status": "healthy" if healthy else "unhealthy", "ready": ready}
    full = [(rid, state, v) for rid, state, v in views if set(v) - ANONYMOUS_KEYS]
    if not full:
        return summary
    base = next((v for _, state, v in full if state == "live" and v.get("status") == "healthy"), full[0][2])
    merged = dict(base)
    merged.update(summary)
    if "queue_depth" in base:
        merged["queue_depth"] = sum(int(v.get("queue_depth") or 0) for _, _, v in full)
    if "busy" in base:
        merged["busy"] = any(bool(v.get("busy")) for _, _, v in full)
    if "active_job" in base:
        merged["active_job"] = next((v["active_job"] for _, _, v in full if v.get("active_job")), None)
    merged["replicas"] = [{"replica": rid, "replica_state": state, **v} for rid, state, v in full]
    return merged


# -- /metrics --------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?(\s.*)$")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def merge_metrics(texts: Sequence[tuple[str, str]]) -> str:
    """Prometheus text of several replicas as one exposition: each family's HELP and
    TYPE once, then its samples of every replica with a `replica` label."""
    order: list[str] = []
    meta: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for replica, text in texts:
        label = f'replica="{_escape(replica)}"'
        family = ""
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    if family not in meta:
                        meta[family] = []
                        samples[family] = []
                        order.append(family)
                    if not any(m.split(None, 3)[1] == parts[1] for m in meta[family]):
                        meta[family].append(line)
                continue
            m = _SAMPLE.match(line)
            if m is None:
                continue
            name, labels, rest = m.groups()
            labels = f"{{{label},{labels[1:]}" if labels and labels != "{}" else f"{{{label}}}"
            key = family if family and name.startswith(family) else name
            if key not in samples:
                meta.setdefault(key, [])
                samples[key] = []
                order.append(key)
            samples[key].append(f"{name}{labels}{rest}")
    out: list[str] = []
    for family in order:
        out += meta.get(family, [])
        out += samples[family]
    return "\n".join(out) + "\n"


# -- /jobs -----------------------------------------------------------------------------------


def merge_jobs(lists: Iterable[Sequence[JobSummary]], limit: int) -> list[JobSummary]:
    """The caller's newest jobs over every replica (earlier lists win a duplicate id),
    newest first by `queued_at`."""
    seen: dict[str, JobSummary] = {}
    for jobs in lists:
        for job in jobs:
            seen.setdefault(job["job_id"], job)
    ordered = sorted(seen.values(), key=lambda j: j["queued_at"] or "", reverse=True)
    return ordered[:limit]


# -- streams ---------------------------------------------------------------------------------


class StreamEnd:
    """Watches a relayed event stream for its terminal event, across chunk boundaries,
    with the worker's own decoder.

    `/execute` ends with an `end` or `error` event; the OpenAI routes with
    `data: [DONE]` or a `data: {"error": …}` chunk.
    """

    def __init__(self, openai: bool) -> None:
        self.openai = openai
        self.ended = False
        self._feed = SseParser().feed
        self._ends = is_openai_terminal if openai else is_terminal

    def feed(self, chunk: bytes) -> None:
        if self.ended:
            return
        self.ended = any(map(self._ends, self._feed(chunk)))

    def failure(self, job_id: str | None) -> bytes:
        """The one terminal event for a stream whose replica died before it ended."""
        code = ErrorCode.REPLICA_FAILED
        if self.openai:
            error = openai_error_body(HTTP_STATUS[code], REPLICA_FAILED_MESSAGE, code, retriable=True)
            return encode_data(error).encode()
        extra = {"job_id": job_id} if job_id is not None else {}
        return encode_event(events.error(code, REPLICA_FAILED_MESSAGE, True, **extra))
