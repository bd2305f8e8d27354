"""A job's cancel flag.

Two readers, two representations of the same fact:
- the inference thread checks `raised` (a Python bool) before every token, which
  costs one attribute load;
- llama.cpp's abort callback (C, no GIL) reads the native atomic at `address`
  after every graph node, so a cancel can stop a decode half-way.
The first raise wins and records why and when; later raises change nothing.
"""

from __future__ import annotations

import threading
import time
import weakref
from enum import Enum

from worker_orcd import native


class CancelReason(str, Enum):
    CLIENT = "client"  # POST /cancel
    DISCONNECT = "disconnect"  # the SSE client went away
    TIMEOUT = "timeout"  # --inference-timeout-sec elapsed
    SHUTDOWN = "shutdown"  # SIGTERM / POST /shutdown grace period elapsed


class CancelFlag:
    __slots__ = ("raised", "reason", "raised_at", "address", "_lock", "__weakref__")

    def __init__(self) -> None:
        lib = native.library()
        self.raised = False
        self.reason: CancelReason | None = None
        self.raised_at: float | None = None  # time.perf_counter() of the first raise
        self.address: int = lib.orcd_cancel_flag_new()
        if not self.address:
            raise MemoryError("could not allocate a native cancel flag")
        self._lock = threading.Lock()
        # The native flag lives as long as this object: a late cancel may still
        # raise it after the job's context (the callback's only user) is gone.
        weakref.finalize(self, lib.orcd_cancel_flag_free, self.address)

    def raise_(self, reason: CancelReason, *, at: float | None = None) -> bool:
        """Raise the flag; True only for the call that raised it.

        `at` is when the cancel was asked for (a perf_counter() reading), if
        earlier than now. The Python side is complete before the native store:
        the ctypes call lets go of the GIL, and llama.cpp may return "aborted"
        the moment the native flag is up; whoever then looks must already find
        the flag raised, with its reason, or an abort would read as a failure.
        """
        with self._lock:
            if self.raised:
                return False
            self.reason = reason
            self.raised_at = time.perf_counter() if at is None else at
            self.raised = True
            native.library().orcd_cancel_flag_raise(self.address)
            return True

    def native_is_raised(self) -> bool:
        """What the abort callback would see; for tests and diagnostics."""
        return bool(native.library().orcd_cancel_flag_is_raised(self.address))
