"""A child process of the worker dies with its parent: nothing is left running behind it."""

from __future__ import annotations

import signal
import sys


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (Linux); elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
