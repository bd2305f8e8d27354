"""What the front sets on its sockets, and the open-files limit its connections need."""

from __future__ import annotations

import fcntl
import logging
import resource
import socket
import struct
import termios
from asyncio import Transport

from worker_orcd.log import log_event

# Descriptors the front needs besides its connections (ledger, engine channel, logs, pipes).
FD_HEADROOM = 64
# What a connection's unsent answer may take: the front's buffer, then the kernel's
# beyond the bytes in flight (TCP_NOTSENT_LOWAT). Small, so that the writes to a client
# that reads nothing stall once its own buffer is full, not megabytes later.
WRITE_BUFFER_BYTES = 8 * 1024
KERNEL_UNSENT_BYTES = 4 * 1024
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


def connection_cap(wanted: int, reserve: int) -> int:
    """`wanted`, raising the open-files limit for it when the hard limit allows, else lowered
    to what the limit leaves: past the limit accept() fails, which is what the cap avoids."""
    needed = wanted + reserve + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return wanted
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    except (ValueError, OSError):
        pass
    cap = max(1, min(wanted, soft - reserve - FD_HEADROOM))
    if cap < wanted:
        log_event(
            "max_connections_lowered",
            logging.WARNING,
            max_connections=cap,
            asked=wanted,
            open_files_limit=soft,
            message="the open-files limit (ulimit -n) leaves room for fewer connections",
        )
    return cap


def bound_buffers(transport: Transport) -> None:
    transport.set_write_buffer_limits(high=WRITE_BUFFER_BYTES)
    sock = transport.get_extra_info("socket")
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)  # Linux, macOS
    if sock is not None and option is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, option, KERNEL_UNSENT_BYTES)
        except OSError:
            pass


def kernel_unsent(transport: Transport) -> int:
    """Bytes in the kernel's send queue not yet acknowledged by the client (0 if unknown)."""
    return _queued(transport, termios.TIOCOUTQ)


def kernel_unread(transport: Transport) -> int:
    """Bytes the client has sent that the kernel holds and the front has not read yet
    (0 if unknown)."""
    return _queued(transport, termios.FIONREAD)


def _queued(transport: Transport, request: int) -> int:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0" * 4))[0]
    except OSError:
        return 0


def reset_on_close(transport: Transport) -> None:
    """Its close sends a reset and drops what is unsent, instead of a FIN that would wait
    behind those bytes for good."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        except OSError:
            pass
