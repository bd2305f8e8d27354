"""CancelFlag: the Python side and the shared-memory word the engine's abort callback reads (WO-CANCEL-3)."""

from __future__ import annotations

import ctypes
import os
import threading

from worker_orcd.channel import native
from worker_orcd.channel.cancel_board import SLOT_BYTES, CancelBoard
from worker_orcd.jobs.cancel_flag import CancelFlag, CancelReason

# The callback's C signature: bool (*)(void *data).
ABORT_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p)


def _callback():
    address = native.abort_callback_address()
    assert address
    return ABORT_CALLBACK(address)


_BOARDS: list[CancelBoard] = []  # a word lives as long as its board's mapping: keep them


def _board(slots: int = 1, **kwargs) -> CancelBoard:
    _BOARDS.append(CancelBoard(slots, **kwargs))
    return _BOARDS[-1]


def _bound(board: CancelBoard | None = None, slot: int = 0) -> tuple[CancelFlag, int]:
    board = board or _board()
    flag = CancelFlag()
    flag.bind(board.address(slot))
    return flag, board.address(slot)


def test_native_callback_sees_the_raise():
    flag, word = _bound()
    callback = _callback()
    assert callback(word) is False
    assert not flag.raised and not flag.native_is_raised()
    assert flag.raise_(CancelReason.CLIENT) is True
    assert callback(word) is True
    assert flag.raised and flag.native_is_raised()


def test_callback_with_no_flag_never_aborts():
    assert _callback()(None) is False


def test_slots_are_independent_cache_lines():
    board = _board(2)
    a, word_a = _bound(board, 0)
    b, word_b = _bound(board, 1)
    assert word_b - word_a == SLOT_BYTES
    a.raise_(CancelReason.CLIENT)
    callback = _callback()
    assert callback(word_a) is True and callback(word_b) is False


def test_another_process_mapping_the_board_sees_the_raise():
    """The engine maps the same memory through the inherited descriptor (WO-ENGINE-2)."""
    board = _board()
    flag, _ = _bound(board)
    engine_view = _board(fd=os.dup(board.fd))  # a second mapping, as the engine has
    word = ctypes.c_int.from_address(engine_view.address(0))
    assert word.value == 0
    flag.raise_(CancelReason.CLIENT)
    assert word.value == 1 and _callback()(engine_view.address(0)) is True


def test_bind_carries_an_earlier_raise_and_clears_a_stale_word():
    board = _board()
    stale, word = _bound(board)
    stale.raise_(CancelReason.CLIENT)
    stale.unbind()
    stale_late = stale.raise_(CancelReason.CLIENT)  # already raised: nothing more happens
    assert stale_late is False
    fresh = CancelFlag()
    fresh.bind(word)  # the next job's flag: the word starts clear
    assert not fresh.native_is_raised() and _callback()(word) is False
    early = CancelFlag()
    early.raise_(CancelReason.DISCONNECT)  # raised while queued, before it had a word
    early.bind(word)
    assert _callback()(word) is True


def test_an_unbound_flag_leaves_the_word_alone():
    board = _board()
    old, word = _bound(board)
    old.unbind()
    nxt = CancelFlag()
    nxt.bind(word)
    assert old.raise_(CancelReason.CLIENT) is True  # a late cancel for the job that ended
    assert _callback()(word) is False and not nxt.native_is_raised()


def test_first_reason_wins():
    flag = CancelFlag()
    assert flag.raise_(CancelReason.DISCONNECT) is True
    raised_at = flag.raised_at
    assert raised_at is not None
    assert flag.raise_(CancelReason.CLIENT) is False
    assert flag.raise_(CancelReason.TIMEOUT) is False
    assert flag.reason is CancelReason.DISCONNECT and flag.raised_at == raised_at


class CountingLibrary:
    """The real native library, counting how often a word is raised."""

    def __init__(self, lib) -> None:
        self._lib = lib
        self.raises = 0
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self._lib, name)

    def orcd_cancel_flag_raise(self, address):
        with self._lock:
            self.raises += 1
        return self._lib.orcd_cancel_flag_raise(address)


def test_raised_exactly_once_under_racing_threads(monkeypatch):
    counting = CountingLibrary(native.library())
    monkeypatch.setattr(native, "library", lambda: counting)
    board = _board()
    for i in range(50):
        flag = CancelFlag()
        flag.bind(board.address(0))
        reasons = list(CancelReason) * 4
        barrier = threading.Barrier(len(reasons))
        winners: list[CancelReason] = []
        lock = threading.Lock()

        def race(reason: CancelReason) -> None:
            barrier.wait()
            if flag.raise_(reason):
                with lock:
                    winners.append(reason)

        threads = [threading.Thread(target=race, args=(r,)) for r in reasons]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(winners) == 1
        assert flag.reason is winners[0]
        assert flag.native_is_raised()
        assert counting.raises == i + 1  # one native raise per flag, whatever the race
        flag.unbind()


def test_python_side_is_complete_before_the_native_store(monkeypatch):
    """WO-CANCEL-11: the moment the engine can see the word (and report "aborted"),
    the front already sees the flag raised, with its reason and time."""
    seen = []

    class Watching(CountingLibrary):
        def orcd_cancel_flag_raise(self, address):
            seen.append((flag.raised, flag.reason, flag.raised_at))
            return super().orcd_cancel_flag_raise(address)

    watching = Watching(native.library())
    monkeypatch.setattr(native, "library", lambda: watching)
    flag, _ = _bound()
    flag.raise_(CancelReason.TIMEOUT)
    assert seen == [(True, CancelReason.TIMEOUT, flag.raised_at)] and flag.raised_at is not None


def test_raise_keeps_an_earlier_moment():
    flag = CancelFlag()
    assert flag.raise_(CancelReason.CLIENT, at=12.5)
    assert flag.raised_at == 12.5
