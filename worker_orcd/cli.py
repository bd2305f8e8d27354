"""`worker-orcd serve …`: parse flags, fail fast on a bad model or a busy port, serve."""

from __future__ import annotations

import argparse
import socket
import sys

from worker_orcd.settings.command_line import add_serve_flags, config_from


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="worker-orcd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve one GGUF model over HTTP with SSE streaming")
    from worker_orcd.client import terminal  # `run`: a client of a running worker

    terminal.add_parser(sub)
    add_serve_flags(serve)  # one per WorkerConfig field
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "run":
        return args.run(args)
    return 2


def serve(args: argparse.Namespace) -> int:
    from worker_orcd import log

    try:
        config = config_from(args)
    except ValueError as exc:
        return _fail(str(exc))
    try:
        sock = bind(config.host, config.port)
    except OSError as exc:
        return _fail(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}; choose another --port or --host"
        )
    from worker_orcd.state_dir import StateDirInUse, StateDirLock

    try:
        lock = StateDirLock(config.state_path).acquire()
    except StateDirInUse as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot use state dir {config.state_path}: {exc.strerror or exc}")
    log.configure(config.worker_id, config.log_level)

    from worker_orcd.engine.gguf import ModelLoadError
    from worker_orcd.server import run

    try:
        return run(config, sock)
    except ModelLoadError as exc:
        return _fail(str(exc))
    finally:
        lock.release()


def bind(host: str, port: int) -> socket.socket:
    """Bind before loading the model, so a busy port fails in milliseconds."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP;
    # without it a response written in two parts waits for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _fail(message: str) -> int:
    print(f"worker-orcd: {message}", file=sys.stderr)
    return 1
