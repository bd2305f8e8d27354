"""llama-cpp-python's server with the worker's extra-CPU-buffers setting.

    python -m bench.harness.peer_launch --cpu-extra-buffers on|off <llama_cpp.server flags>

The server has no flag for it: this sets it for every model the process loads,
then runs the server's own `main` with the remaining flags.
"""

from __future__ import annotations

import argparse
import sys

from bench.harness.extra_buffers import set_default


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.harness.peer_launch", allow_abbrev=False)
    parser.add_argument("--cpu-extra-buffers", choices=["on", "off"], required=True)
    args, server_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    set_default(args.cpu_extra_buffers == "on")
    from llama_cpp.server.__main__ import main as serve

    sys.argv = ["python -m llama_cpp.server", *server_args]  # serve() reads its flags from here
    serve()


if __name__ == "__main__":
    main()
