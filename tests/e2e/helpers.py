"""Helpers of the end-to-end tests only: job bodies, the engine's state, child processes.

What other test directories and the benchmark share is in testkit."""

from __future__ import annotations

import os
import time
from typing import Any

from testkit.prompts import CHAT, LONG_ANSWER_PROMPT, LONG_PROMPT
from testkit.waiting import wait_until
from testkit.worker import WorkerProcess



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
