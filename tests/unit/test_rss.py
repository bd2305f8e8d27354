"""Resident memory of a process tree (testkit.rss), as the tests and the benchmark read it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from testkit import rss

MiB = 1 << 20
# A grandchild holds 64 MiB (written, so resident) until its stdin closes.
HOLDER = "import sys; block = b'x' * (64 << 20); print('ready', flush=True); sys.stdin.read()"
PARENT = f"import subprocess, sys; sys.exit(subprocess.call([sys.executable, '-c', {HOLDER!r}]))"


@pytest.fixture
def tree():
    """A child that started a grandchild holding 64 MiB; both end when the fixture does."""
    child = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout.readline() == b"ready\n"
    yield child
    child.stdin.close()
    child.wait(10)


def test_the_tree_counts_more_than_the_process_alone(tree):
    me = os.getpid()
    assert tree.pid in rss.descendants(me)
    (grandchild,) = rss.descendants(tree.pid)
    assert grandchild in rss.descendants(me)  # found by going down, not only one level
    alone = rss._resident_pages(me) * rss.PAGE
    assert rss.rss_bytes(me) - alone > 64 * MiB


def test_scanning_every_process_finds_the_same_tree(tree, monkeypatch):
    found = rss.descendants(os.getpid())
    monkeypatch.setattr(rss, "_CHILDREN_FILES", False)
    assert sorted(rss.descendants(os.getpid())) == sorted(found)


def test_a_gone_process_is_an_error_not_a_small_one():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: its /proc entry is gone
    with pytest.raises(OSError):
        rss.rss_bytes(proc.pid)
