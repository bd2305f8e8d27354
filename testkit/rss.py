"""Resident memory of a process and everything it started, from /proc (Linux).

The worker's engine may run in a child process, so its footprint is the sum over
the whole tree: the process, its children, theirs, and so on.
"""

from __future__ import annotations

import os

PAGE = os.sysconf("SC_PAGE_SIZE")
# Without CONFIG_PROC_CHILDREN there is no children file: scan every process's parent instead.
_CHILDREN_FILES = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def rss_bytes(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants.

    Raises OSError when `pid` itself is gone (a reading of a dead worker must not look
    like a small one); a descendant that exits while the tree is read counts 0.
    """
    pages = _resident_pages(pid)
    for child in descendants(pid):
        try:
            pages += _resident_pages(child)
        except OSError:
            pass
    return pages * PAGE


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, parents before their children."""
    children = _children if _CHILDREN_FILES else _children_by_scan()
    found: list[int] = []
    parents = [pid]
    while parents:
        below = [c for p in parents for c in children(p)]
        found += below
        parents = below
    return found


def _resident_pages(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1])


def _children(pid: int) -> list[int]:
    """From each thread's children file: a child belongs to the thread that forked it."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out: list[int] = []
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:  # the thread ended meanwhile
            pass
    return out


def _children_by_scan():
    """A children() over one reading of every process's parent pid."""
    by_parent: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])  # after the name, which may hold spaces
        except (OSError, ValueError, IndexError):
            continue
        by_parent.setdefault(ppid, []).append(int(entry))
    return lambda pid: by_parent.get(pid, [])
