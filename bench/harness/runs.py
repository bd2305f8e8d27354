"""What one request of a scenario measured, the same shape for the worker and its baselines."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class StreamRun:
    """One generation: when it was asked for and when each token arrived."""

    sent_at: float  # time.perf_counter() before the request (or the tokenizer) was called
    token_times: list[float] = field(default_factory=list)
    stop_reason: str | None = None

    @property
    def tokens(self) -> int:
        return len(self.token_times)

    @property
    def ttft_ms(self) -> float | None:
        return (self.token_times[0] - self.sent_at) * 1000.0 if self.token_times else None

    @property
    def ms_per_token(self) -> float | None:
        """Time between tokens after the first: decode speed, independent of where EOS fell."""
        if len(self.token_times) < 2:
            return None
        return (self.token_times[-1] - self.token_times[0]) * 1000.0 / (len(self.token_times) - 1)

    @property
    def tokens_per_s(self) -> float | None:
        ms = self.ms_per_token
        return 1000.0 / ms if ms else None


@dataclass(slots=True)
class CancelRun:
    """One cancelled job, seen from the client and from its CANCELLED event."""

    hit: str  # "decode" when tokens had arrived before the cancel, else "prompt"
    client_ms: float  # POST /cancel sent → CANCELLED event read
    ack_ms: float  # POST /cancel sent → 202 read
    tokens_before: int  # token events read before the cancel was sent
    tokens_after: int  # token events read after it
    code: str | None = None
    tokens_out: int | None = None
    stop_ms: float | None = None
    cancel_ms: float | None = None


@dataclass(slots=True)
class DisconnectRun:
    """The peer's only cancel, a disconnect, and what the next request paid for it."""

    tokens_before: int
    next_ttft_ms: float | None  # the request sent right after the disconnect
