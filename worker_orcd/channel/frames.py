"""Frames between the front and the engine process, over one socket pair.

Every message is one frame (`multiprocessing.connection` framing: a 4-byte
big-endian length, then the bytes). A streamed token, the only message per
token, is packed by hand: `T`, the run's number, the model tokens so far and
the text. Everything else (`channel.messages`, a few per job) is `M` and the
message in msgpack, through one encoder and one decoder of the tagged union.

The engine reads its end with `Channel.recv`; the front reads its end on its
event loop (`Channel.read_available`): whatever has arrived, every frame of it,
in one call, without waiting.
"""

from __future__ import annotations

import array
import fcntl
import socket
import struct
import termios
import threading
from multiprocessing.connection import Connection

import msgspec

from worker_orcd.channel.messages import Message

TOKEN = b"T"
MESSAGE = b"M"
_TOKEN_HEAD = struct.Struct("<cII")  # kind, run number, model tokens so far
_LENGTH = struct.Struct("!i")
_LONG_LENGTH = struct.Struct("!Q")  # after a length of -1 (frames of 2 GiB or more)
READ_BYTES = 1 << 16

Token = tuple[int, int, str]  # run, model tokens so far, text
Frame = Message | Token

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Message).decode


def decode(frame: bytes) -> Frame:
    """A frame's message, or (run, tokens_out, text) for a token. Raises
    msgspec.DecodeError (a ValueError) for a frame that is neither."""
    if frame[:1] == TOKEN:
        _, run, tokens_out = _TOKEN_HEAD.unpack_from(frame)
        return run, tokens_out, frame[_TOKEN_HEAD.size :].decode("utf-8")
    return _decode(memoryview(frame)[1:])


class Channel:
    """One end of the socket pair; sends from any thread, receives on one."""

    def __init__(self, fd: int) -> None:
        self._conn = Connection(fd)
        self._send_lock = threading.Lock()
        self._sock: socket.socket | None = None  # for reads that never wait
        self._pending = bytearray()  # what arrived after the last whole frame

    def fileno(self) -> int:
        return self._conn.fileno()

    def send(self, message: Message) -> None:
        data = MESSAGE + _encode(message)
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

    def recv_frame(self) -> bytes:
        """The next frame as it is, waiting for it (the engine's settings, sent first)."""
        return self._conn.recv_bytes()

    def recv(self) -> Frame:
        """The next message, waiting for it. Raises EOFError (or OSError) once the other
        process has gone."""
        return decode(self._conn.recv_bytes())

    def read_available(self) -> list[bytes] | None:
        """Every whole frame that has arrived, without waiting (one read); None at the end
        of the stream (the other process has gone). The descriptor stays blocking for the
        senders: only this read does not wait."""
        if self._sock is None:
            self._sock = socket.socket(fileno=self._conn.fileno())
        try:
            data = self._sock.recv(READ_BYTES, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            return None
        if not data:
            return None
        buf = self._pending
        buf += data
        frames: list[bytes] = []
        start, end = 0, len(buf)
        while end - start >= 4:
            (size,) = _LENGTH.unpack_from(buf, start)
            head = 4
            if size == -1:
                if end - start < 12:
                    break
                (size,) = _LONG_LENGTH.unpack_from(buf, start + 4)
                head = 12
            if end - start < head + size:
                break
            frames.append(bytes(buf[start + head : start + head + size]))
            start += head + size
        del buf[:start]
        return frames

    def pending(self) -> int:
        """Bytes the other process has sent that are not yet read, or read but not yet
        whole frames (0 once closed)."""
        count = array.array("i", [0])
        try:
            fcntl.ioctl(self._conn.fileno(), termios.FIONREAD, count)
        except (OSError, ValueError):
            return len(self._pending)
        return count[0] + len(self._pending)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.detach()  # the descriptor is the connection's to close
            self._sock = None
        self._conn.close()
