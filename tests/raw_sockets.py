"""Raw client sockets, for clients no HTTP library lets misbehave: half a request, a
receive buffer nobody empties, bytes that are not HTTP."""

from __future__ import annotations

import socket

import httpx


def connect(port: int, data: bytes = b"", rcvbuf: int | None = None) -> socket.socket:
    """A connection to 127.0.0.1:port that has sent `data`; `rcvbuf`: its receive buffer."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    if data:
        s.sendall(data)
    return s


def read_to_end(s: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything until the server closes the connection (raises if it does not, in time)."""
    s.settimeout(timeout)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def as_response(raw: bytes) -> httpx.Response:
    """An answer read off a socket, as httpx's."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(line.split(": ", 1)) for line in lines[1:]]
    return httpx.Response(int(lines[0].split()[1]), headers=headers, content=body)


def read_response(s: socket.socket, timeout: float = 10.0) -> httpx.Response:
    """One whole answer of a kept-alive connection (its Content-Length), however it arrives."""
    s.settimeout(timeout)
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = s.recv(65536)
        assert chunk, f"closed after {raw!r}"
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    length = int(as_response(head + b"\r\n\r\n").headers["content-length"])
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, "closed mid-body"
        body += chunk
    return as_response(head + b"\r\n\r\n" + body)
