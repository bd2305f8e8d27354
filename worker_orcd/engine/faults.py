"""Fault injection for tests: make chosen jobs meet an engine failure.

`WORKER_ORCD_FAULTS` holds comma-separated entries; a job whose id starts with
the prefix meets the fault:
- `decode=<prefix>`: its 3rd llama_decode returns -3 (a failed compute);
- `context=<prefix>`: its context cannot be made;
- `hang=<prefix>`: after its 3rd token the engine calls into C and never
  returns, deaf to the cancel word (a wedged kernel or driver call): only the
  front's hard deadline, which kills the engine process, ends the job;
- `abort=<prefix>`: after its 3rd token the engine does what ggml does on a
  CUDA error: logs `CUDA error: injected fault` through ggml's log and calls
  `ggml_abort`, which writes to standard error and kills the process (SIGABRT).
- `garble=<prefix>`: after its 3rd token the engine sends the front a frame it
  cannot decode: a broken channel, which the front treats as the engine's death;
- `die_on_cancel=<prefix>`: when the run sees its raised cancel word it says
  `stopped`, then the process dies (SIGKILL) before its context is freed, as an
  engine that crashes while freeing would.
`start_hang=<path>` or `start_exit=<path>`: while the file at <path> exists, an
engine that starts hangs before loading the model (as in a wedged driver's init),
or exits with status 3: a restart that never gets ready.
`cpu_probe=sigill` or `cpu_probe=hang`: the child that checks the engine's extra
CPU buffer types (engine.cpu_features) kills itself with SIGILL, or never
finishes, just before its decode: what a CPU that advertises instructions it
cannot run does to it, on any machine.

The plan is consulted once per run, so the token loop carries no extra check.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

ENV_VAR = "WORKER_ORCD_FAULTS"
FAILING_DECODE_CALL = 3
DECODE_FAILURE_STATUS = -3  # what llama_decode returns when the compute fails
HANG_AFTER_TOKENS = 3
CPU_PROBE_FAULTS = ("sigill", "hang")
_JOB_FAULTS = ("decode", "context", "hang", "abort", "garble", "die_on_cancel")
_START_FAULTS = ("start_hang", "start_exit")
START_EXIT_STATUS = 3
GARBLED_FRAME = b"M\x00 not a message"

Decode = Callable[..., int]


@dataclass(frozen=True, slots=True)
class FaultPlan:
    decode_prefix: str | None = None
    context_prefix: str | None = None
    hang_prefix: str | None = None
    abort_prefix: str | None = None
    garble_prefix: str | None = None
    die_on_cancel_prefix: str | None = None
    start_hang: str | None = None  # a path: hang at start while it exists
    start_exit: str | None = None  # a path: exit at start while it exists
    cpu_probe: str | None = None  # sigill | hang

    @classmethod
    def from_env(cls, value: str | None = None) -> FaultPlan:
        value = os.environ.get(ENV_VAR, "") if value is None else value
        fields: dict[str, str] = {}
        for entry in filter(None, (e.strip() for e in value.split(","))):
            kind, sep, arg = entry.partition("=")
            if sep and kind == "cpu_probe" and arg in CPU_PROBE_FAULTS:
                fields["cpu_probe"] = arg
                continue
            if sep and kind in _START_FAULTS and arg:
                fields[kind] = arg
                continue
            if not sep or kind not in _JOB_FAULTS or not arg:
                raise ValueError(
                    f"{ENV_VAR}: expected {', '.join(f'{k}=<prefix>' for k in _JOB_FAULTS)}, "
                    f"{', '.join(f'{k}=<path>' for k in _START_FAULTS)} or "
                    f"cpu_probe={'|'.join(CPU_PROBE_FAULTS)}, got {entry!r}"
                )
            fields[f"{kind}_prefix"] = arg
        return cls(**fields)

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    def at_start(self) -> None:
        """Tests only: hang or exit here while the start fault's file exists."""
        if self.start_exit is not None and os.path.exists(self.start_exit):
            os._exit(START_EXIT_STATUS)
        if self.start_hang is not None and os.path.exists(self.start_hang):
            while True:
                time.sleep(3600)

    def dies_on_cancel(self, job_id: str) -> bool:
        return _meets(self.die_on_cancel_prefix, job_id)

    def context_fails(self, job_id: str) -> bool:
        return _meets(self.context_prefix, job_id)

    def token_fault(self, job_id: str, channel: Any) -> tuple[int, Callable[[], None]]:
        """After how many tokens (0: never) the run meets which fault: a hang in C, the
        engine's death as ggml aborts, or a frame on `channel` the front cannot decode."""
        if _meets(self.hang_prefix, job_id):
            return HANG_AFTER_TOKENS, _hang_in_c
        if _meets(self.abort_prefix, job_id):
            return HANG_AFTER_TOKENS, abort_like_ggml
        if _meets(self.garble_prefix, job_id):
            return HANG_AFTER_TOKENS, lambda: channel.send_frame(GARBLED_FRAME)
        return 0, _never

    def decode_for(self, job_id: str, decode: Decode) -> Decode:
        if not _meets(self.decode_prefix, job_id):
            return decode
        calls = 0

        def failing_decode(ctx: int, batch: object) -> int:
            nonlocal calls
            calls += 1
            if calls >= FAILING_DECODE_CALL:
                return DECODE_FAILURE_STATUS
            return decode(ctx, batch)

        return failing_decode


def die() -> None:
    """Tests only: the engine process dies at once, as in a crash (no exit handlers)."""
    os.kill(os.getpid(), signal.SIGKILL)


def _meets(prefix: str | None, job_id: str) -> bool:
    return prefix is not None and job_id.startswith(prefix)


def _never() -> None:
    pass


def _hang_in_c() -> None:
    from worker_orcd.channel import native

    native.library().orcd_hang_in_c()


def abort_like_ggml() -> None:
    """What ggml does on a CUDA error: an error line through its log, then ggml_abort."""
    from worker_orcd.engine.devices import ggml

    lib = ggml()
    lib.ggml_log_internal(4, b"CUDA error: injected fault\n")  # GGML_LOG_LEVEL_ERROR
    lib.ggml_abort(b"faults.py", 1, b"CUDA error")
