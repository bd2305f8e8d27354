"""Helpers of the end-to-end tests only: job bodies, the engine's state, child processes.

What other test directories and the benchmark share is in testkit."""

from __future__ import annotations

import os
import time
from typing import Any

import httpx

from testkit.prompts import CHAT, LONG_ANSWER_PROMPT, LONG_PROMPT
from testkit.streams import StreamThread, uid, wait_active
from testkit.waiting import wait_until
from testkit.worker import WorkerProcess

# The keyed worker's callers (tests/e2e/conftest.py, `keyed_worker`): tenants alice and bob
# from --api-key, carol from --api-keys-file, the operator ops from --admin-key.
TOKENS = {
    "alice": "alice-token-1f2e",
    "bob": "bob-token-9c8d",
    "carol": "carol-token-from-file",
    "ops": "ops-token-5d1a",
}
ALICE, BOB, CAROL, OPS = ({"Authorization": f"Bearer {TOKENS[name]}"} for name in ("alice", "bob", "carol", "ops"))
KEYED_MAX_QUEUE = 8
APP_ORIGIN = "https://app.example"  # the one foreign origin the keyed worker lets in


def long_answer_job(job_id: str, max_tokens: int = 1500) -> dict[str, Any]:
    """A job that decodes for seconds (greedy, over a thousand tokens): it runs while a test acts."""
    return {"job_id": job_id, "prompt": LONG_ANSWER_PROMPT, "max_tokens": max_tokens, "temperature": 0}


def short_job(job_id: str) -> dict[str, Any]:
    """A job that ends in a moment."""
    return {"job_id": job_id, "prompt": CHAT.format("Name three colours."), "max_tokens": 8, "temperature": 0}


def engine_of(worker: WorkerProcess) -> dict:
    with worker.client() as c:
        return c.get("/health").json()["engine"]


def wait_engine(worker: WorkerProcess, state: str, *, not_pid: int | None = None, timeout: float = 30.0) -> dict:
    def seen() -> dict | None:
        engine = engine_of(worker)
        fresh = not_pid is None or engine["pid"] != not_pid
        return engine if engine["state"] == state and fresh else None

    return wait_until(seen, timeout, interval=0.02)


def live_children(pid: int) -> list[int]:
    """The child processes of `pid` that still run (zombies left out)."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(c) for c in f.read().split()]
    return [c for c in found if not _gone(c)]


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def long_prompt_job(job_id: str, **extra: Any) -> dict[str, Any]:
    """A job whose prompt takes seconds to evaluate: tests cancel it long before it ends."""
    return {"job_id": job_id, "prompt": LONG_PROMPT, "max_tokens": 64, "temperature": 0, **extra}


def elapsed_since(t0: float) -> float:
    return time.perf_counter() - t0


def start_blocker(worker: WorkerProcess, client: httpx.Client, headers: dict | None = None) -> StreamThread:
    """A job (of `headers`' tenant) that holds the engine until cancelled: running when this returns."""
    blocker = StreamThread(worker, long_prompt_job(uid("blocker")), headers=headers).start()
    wait_active(client, blocker.job_id)
    return blocker


def queue_in_order(worker: WorkerProcess, bodies: list[dict], headers: dict | None = None) -> list[StreamThread]:
    """Submit each job once the one before is queued."""
    streams = []
    for body in bodies:
        streams.append(StreamThread(worker, body, headers=headers).start())
        worker.log.wait_for("job_queued", job_id=body["job_id"])
    return streams
