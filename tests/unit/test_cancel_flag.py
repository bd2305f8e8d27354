"""CancelFlag: the Python view and the native atomic that llama.cpp's abort callback reads (WO-CANCEL-3)."""

from __future__ import annotations

import ctypes
import threading

from worker_orcd import native
from worker_orcd.jobs.cancel_flag import CancelFlag, CancelReason

# The callback's C signature: bool (*)(void *data).
ABORT_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p)


def _callback():
    address = native.abort_callback_address()
    assert address
    return ABORT_CALLBACK(address)


def test_native_callback_sees_the_raise():
    flag = CancelFlag()
    callback = _callback()
    assert callback(flag.address) is False
    assert not flag.raised and not flag.native_is_raised()
    assert flag.raise_(CancelReason.CLIENT) is True
    assert callback(flag.address) is True
    assert flag.raised and flag.native_is_raised()


def test_callback_with_no_flag_never_aborts():
    assert _callback()(None) is False


def test_flags_are_independent():
    a, b = CancelFlag(), CancelFlag()
    assert a.address != b.address
    a.raise_(CancelReason.CLIENT)
    callback = _callback()
    assert callback(a.address) is True and callback(b.address) is False


def test_first_reason_wins():
    flag = CancelFlag()
    assert flag.raise_(CancelReason.DISCONNECT) is True
    raised_at = flag.raised_at
    assert raised_at is not None
    assert flag.raise_(CancelReason.CLIENT) is False
    assert flag.raise_(CancelReason.TIMEOUT) is False
    assert flag.reason is CancelReason.DISCONNECT and flag.raised_at == raised_at


class CountingLibrary:
    """The real native library, counting how often the native flag is raised."""

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
    for i in range(50):
        flag = CancelFlag()
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


def test_python_side_is_complete_before_the_native_store(monkeypatch):
    """WO-CANCEL-11: the moment the abort callback can see the flag (and llama.cpp can
    return "aborted"), the token loop already sees it raised, with its reason and time."""
    seen = []

    class Watching(CountingLibrary):
        def orcd_cancel_flag_raise(self, address):
            seen.append((flag.raised, flag.reason, flag.raised_at))
            return super().orcd_cancel_flag_raise(address)

    watching = Watching(native.library())
    monkeypatch.setattr(native, "library", lambda: watching)
    flag = CancelFlag()
    flag.raise_(CancelReason.TIMEOUT)
    assert seen == [(True, CancelReason.TIMEOUT, flag.raised_at)] and flag.raised_at is not None


def test_raise_keeps_an_earlier_moment():
    flag = CancelFlag()
    assert flag.raise_(CancelReason.CLIENT, at=12.5)
    assert flag.raised_at == 12.5
