"""A replica's worker: `worker-orcd serve`, bound to die with the replica.

    python -m worker_orcd.serve_ray.child PARENT_PID serve --port … --state-dir …

The replica is a Ray actor; if it dies (killed, its node lost), its worker must
not live on holding a model, a port and a state dir nobody routes to. The
kernel sends SIGKILL to this process when the thread that started it ends (the
replica keeps that thread waiting on this process for as long as it runs), so
the worker dies with the replica as a whole machine would: its engine follows
(its own parent-death signal) and its ledger keeps the jobs it was running,
which the next worker on the slot marks WORKER_RESTARTED.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the replica died before the signal was armed
        os._exit(1)


def main(argv: list[str]) -> int:
    parent, *rest = argv
    die_with_parent(int(parent))
    from worker_orcd.cli import main as worker_main

    return worker_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
