"""The shared-memory words that carry cancel flags from the front to the engine.

The front process creates the board (an anonymous memory file) and hands its
descriptor to every engine process it starts; both map it. A word is one
`atomic_int` on its own cache line: the front raises it with a plain store
(`native/cancel_flag.c`), the engine's token loop and llama.cpp's C abort
callback read it. No message is needed to stop a job.

With several slots the board also carries, after the words, one 64-bit count per
slot on its own line: the KV cells its job holds, which the engine writes after
every step and the front reads for /health (again no message per step).
"""

from __future__ import annotations

import ctypes
import mmap
import os

SLOT_BYTES = 64  # one cache line per word: the front's store never shares a line with another word


class CancelBoard:
    def __init__(self, slots: int = 1, *, fd: int | None = None) -> None:
        """A new board (the front), or the board behind an inherited `fd` (the engine)."""
        self.slots = slots
        self.cells_offset = slots * SLOT_BYTES  # a slot's cells line, this far past its word
        self.size = 2 * slots * SLOT_BYTES
        if fd is None:
            fd = os.memfd_create("worker-orcd-cancel-board", 0)
            os.ftruncate(fd, self.size)
        self.fd = fd
        self._map = mmap.mmap(fd, self.size)
        # A ctypes view pins the mapping, so the base address stays valid while we live.
        self._view = (ctypes.c_char * self.size).from_buffer(self._map)
        self._base = ctypes.addressof(self._view)

    def address(self, slot: int) -> int:
        """The address of a slot's word in this process's mapping."""
        if not 0 <= slot < self.slots:
            raise IndexError(f"cancel board slot {slot} of {self.slots}")
        return self._base + slot * SLOT_BYTES

    def cells(self, slot: int) -> int:
        """The KV cells the engine last said the slot's job holds (0 once its cells are gone)."""
        return ctypes.c_int64.from_address(self.address(slot) + self.cells_offset).value
