"""ctypes binding of `native/cancel_flag.c`, compiled into `worker_orcd._native` at install."""

from __future__ import annotations

import ctypes
import importlib.util
import threading
from functools import lru_cache


class NativeLibraryMissing(RuntimeError):
    """The compiled cancel flag is absent: the package was not installed with pip."""


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    spec = importlib.util.find_spec("worker_orcd._native")
    if spec is None or not spec.origin or spec.origin.endswith(".py"):
        raise NativeLibraryMissing(
            "worker_orcd._native is not built; install the package with "
            "`pip install -e .` (or `pip install .`) so native/cancel_flag.c is compiled"
        )
    lib = ctypes.CDLL(spec.origin)
    lib.orcd_cancel_flag_new.argtypes = []
    lib.orcd_cancel_flag_new.restype = ctypes.c_void_p
    lib.orcd_cancel_flag_free.argtypes = [ctypes.c_void_p]
    lib.orcd_cancel_flag_free.restype = None
    lib.orcd_cancel_flag_raise.argtypes = [ctypes.c_void_p]
    lib.orcd_cancel_flag_raise.restype = None
    lib.orcd_cancel_flag_clear.argtypes = [ctypes.c_void_p]
    lib.orcd_cancel_flag_clear.restype = None
    lib.orcd_hang_in_c.argtypes = []
    lib.orcd_hang_in_c.restype = None
    lib.orcd_cancel_flag_is_raised.argtypes = [ctypes.c_void_p]
    lib.orcd_cancel_flag_is_raised.restype = ctypes.c_int
    lib.orcd_abort_callback.argtypes = [ctypes.c_void_p]
    lib.orcd_abort_callback.restype = ctypes.c_bool
    lib.orcd_abort_all_callback.argtypes = [ctypes.c_void_p]
    lib.orcd_abort_all_callback.restype = ctypes.c_bool
    return lib


def abort_callback_address() -> int:
    """Address of `bool orcd_abort_callback(void *flag)`, for llama_set_abort_callback."""
    return ctypes.cast(library().orcd_abort_callback, ctypes.c_void_p).value or 0


def abort_all_callback_address() -> int:
    """Address of `bool orcd_abort_all_callback(void *words)`: aborts only when every word
    of a BatchWords is raised."""
    return ctypes.cast(library().orcd_abort_all_callback, ctypes.c_void_p).value or 0


class _BatchWordsStruct(ctypes.Structure):
    _fields_ = [
        ("count", ctypes.c_int),
        ("words", ctypes.POINTER(ctypes.c_void_p)),
        ("arrived", ctypes.c_longlong),
        ("taken", ctypes.c_longlong),
        ("gives_way", ctypes.c_int),
    ]


class BatchWords:
    """The cancel words of the runs in one batched decode, as `orcd_abort_all_callback` reads
    them: filled by the inference thread between decodes, never during one. `arrive()`
    (after the run is queued) and `take()` (the inference thread, as it takes one) count the
    runs: a decode set to give way stops while one has arrived and is not taken."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._words = (ctypes.c_void_p * capacity)()
        self._struct = _BatchWordsStruct(0, ctypes.cast(self._words, ctypes.POINTER(ctypes.c_void_p)), 0, 0, 0)
        self.address = ctypes.addressof(self._struct)  # the callback's data
        self._arriving = threading.Lock()  # `arrived` has one writer at a time

    def set(self, addresses: list[int], *, gives_way: bool = False) -> None:
        if len(addresses) > self.capacity:
            raise ValueError(f"{len(addresses)} words for a batch of at most {self.capacity}")
        for i, address in enumerate(addresses):
            self._words[i] = address
        self._struct.gives_way = gives_way
        self._struct.count = len(addresses)

    def arrive(self) -> None:
        with self._arriving:
            self._struct.arrived += 1

    def take(self) -> None:
        self._struct.taken += 1

    @property
    def count(self) -> int:
        return self._struct.count
