"""Engine threads give way to the HTTP event loop.

llama.cpp's CPU threads keep every core busy while they decode (they spin
between graph nodes), so a cancel, a health check or the write of a token would
wait for a time slice. Engine threads run a few nice levels below the event
loop: it gets a core at once, and when it has nothing to do the engine loses
nothing. llama.cpp's OpenMP workers inherit the level from the thread that
first runs a graph, the inference thread.
"""

from __future__ import annotations

import os
import sys
import threading

ENGINE_NICE = 5


def lower_this_thread() -> None:
    """Lower the calling thread's scheduling priority (Linux: nice is per thread)."""
    if not sys.platform.startswith("linux"):  # elsewhere setpriority would target a process
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), ENGINE_NICE)
    except OSError:  # not allowed here: run at the default priority
        pass
