"""What the front and the engine process say to each other, over one socket pair.

Every message is one frame (`multiprocessing.connection` framing: a length, then
the bytes). A streamed token, the only message per token, is packed by hand:
`T`, the run's number, the model tokens so far and the text. Everything else
is rare (a few per job) and pickled.

Front → engine: `tokenize`, `run`, `exit`. A cancel is no message: the front
raises the job's word on the cancel board, which the engine reads.
Engine → front: `ready` or `failed` (at start), `tokens` (a tokenize answer),
`started`, token frames, `stopped` (the loop saw the flag), `done` (the run's
facts, sent after its context was freed).
"""

from __future__ import annotations

import array
import fcntl
import pickle
import struct
import termios
import threading
from multiprocessing.connection import Connection
from typing import Any

TOKEN = b"T"
MESSAGE = b"M"
_TOKEN_HEAD = struct.Struct("<cII")  # kind, run number, model tokens so far


class Channel:
    """One end of the socket pair; sends from any thread, receives on one."""

    def __init__(self, fd: int) -> None:
        self._conn = Connection(fd)
        self._send_lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        data = MESSAGE + pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        with self._send_lock:
            self._conn.send_bytes(data)

    def send_token(self, run: int, tokens_out: int, text: str) -> None:
        data = _TOKEN_HEAD.pack(TOKEN, run, tokens_out) + text.encode("utf-8")
        with self._send_lock:
            self._conn.send_bytes(data)

    def send_frame(self, data: bytes) -> None:
        """One frame as it is (fault injection sends one the other side cannot decode)."""
        with self._send_lock:
            self._conn.send_bytes(data)

    def recv(self) -> dict[str, Any] | tuple[int, int, str]:
        """The next message: a dict, or (run, tokens_out, text) for a token.

        Raises EOFError (or OSError) once the other process has gone.
        """
        data = self._conn.recv_bytes()
        if data[:1] == TOKEN:
            _, run, tokens_out = _TOKEN_HEAD.unpack_from(data)
            return run, tokens_out, data[_TOKEN_HEAD.size :].decode("utf-8")
        return pickle.loads(data[1:])

    def pending(self) -> int:
        """Bytes the other process has sent that nobody has read yet (0 once closed)."""
        count = array.array("i", [0])
        try:
            fcntl.ioctl(self._conn.fileno(), termios.FIONREAD, count)
        except (OSError, ValueError):
            return 0
        return count[0]

    def close(self) -> None:
        self._conn.close()
