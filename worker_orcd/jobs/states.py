"""A job's states and phases: what every part of the front names, so a leaf."""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (JobState.COMPLETED, JobState.CANCELLED, JobState.FAILED)


class Phase(str, Enum):
    """Where a job is, finer than its state: what a cancel interrupts."""

    QUEUED = "queued"
    PROMPT = "prompt"  # evaluating the prompt
    DECODE = "decode"  # generating tokens
    FINISHED = "finished"
