"""What the engine in its own process costs and buys: the channel, a death, a stuck engine.

    python -m bench.engine [--deaths 20] [--forced 5] [--frames 200000] [--json PATH]

1. The channel's cost per token: a child process sends token frames as the
   engine does (`channel.frames.Channel.send_token`), this process receives them as the
   front does (on its event loop, every frame that has come per wake-up); CPU time per frame on each side.
2. The engine killed (SIGKILL) mid-stream: from the kill to the terminal event
   at the client, and from the kill to the first token of the next job (sent
   at once: it waits for the new engine).
3. A stuck engine (the test-only fault `hang=`: the engine calls into C and
   never returns, deaf to its flag): from `POST /cancel` to `CANCELLED` with
   `forced: true` at the client (the deadline, the kill, the reaping), and
   the resident memory of the worker's processes right after, against idle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness.machine import describe
from bench.harness.processes import worker_server
from bench.harness.prompts import story
from bench.harness.stats import summary
from bench.harness.worker_client import WorkerClient
from testkit.processes import scratch_dir
from testkit.rss import rss_bytes
from worker_orcd.channel.frames import Channel, decode

TOKEN_TEXT = " token"  # a typical piece: one short word
DEATHS_PER_WORKER = 4
_SENDER = """
import resource, sys
from worker_orcd.channel.frames import Channel
ch = Channel(int(sys.argv[1])); n = int(sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF)
for i in range(n):
    ch.send_token(1, i, {text!r})
after = resource.getrusage(resource.RUSAGE_SELF)
print((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime))
"""


async def _receive_on_a_loop(channel: Channel, frames: int) -> None:
    """As the front reads its engine's channel: on the event loop, every frame that has
    come per wake-up, until the last token."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    seen = 0

    def readable() -> None:
        nonlocal seen
        for frame in channel.read_available() or ():
            message = decode(frame)
            if isinstance(message, tuple):
                seen += 1
        if seen == frames and not done.done():
            loop.remove_reader(channel.fileno())
            done.set_result(None)

    loop.add_reader(channel.fileno(), readable)
    await done


def channel_cost(frames: int) -> dict[str, Any]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    code = _SENDER.format(text=TOKEN_TEXT)
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(theirs.fileno()), str(frames)],
        pass_fds=(theirs.fileno(),),
        stdout=subprocess.PIPE,
        text=True,
    )
    theirs.close()
    channel = Channel(ours.detach())
    t0 = time.perf_counter()
    c0 = time.process_time()
    asyncio.run(_receive_on_a_loop(channel, frames))
    receive_cpu = time.process_time() - c0
    wall = time.perf_counter() - t0
    send_cpu = float(child.communicate()[0])  # the sender's CPU time over its frames
    channel.close()
    return {
        "frames": frames,
        "send_us_per_token": round(send_cpu / frames * 1e6, 3),
        "receive_us_per_token": round(receive_cpu / frames * 1e6, 3),
        "frames_per_s": round(frames / wall),
    }


def engine_deaths(rounds: int, model: Path | None, worker_args: list[str]) -> dict[str, Any]:
    to_event: list[float] = []
    to_next_token: list[float] = []
    while len(to_event) < rounds:
        # A worker gives its engine up after 5 deaths in a minute (WO-ENGINE-4): a fresh
        # worker for every DEATHS_PER_WORKER of them.
        server = worker_server(model, worker_args, scratch_dir()).start()
        client = WorkerClient(server.url)
        try:
            client.warm_up()
            for _ in range(min(DEATHS_PER_WORKER, rounds - len(to_event))):
                pid = _engine_ready(client)
                job = client.open_job(story(1), max_tokens=1500)
                client.read_tokens(job, 5)
                killed = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
                end = next(e for e in job.events if e.name in ("end", "error"))
                job.close()
                if end.data.get("code") != "ENGINE_FAILED":
                    raise RuntimeError(f"expected ENGINE_FAILED, got {end.raw}")
                to_event.append((end.at - killed) * 1000.0)
                first = client.first_token(story(2))  # waits for the new engine
                to_next_token.append((first.token_times[0] - killed) * 1000.0)
                _engine_ready(client, not_pid=pid)
        finally:
            client.close()
            server.stop()
    return {
        "rounds": rounds,
        "kill_to_terminal_event_ms": summary(to_event),
        "kill_to_next_first_token_ms": summary(to_next_token),
    }


def forced_cancels(rounds: int, model: Path | None, worker_args: list[str]) -> dict[str, Any]:
    server = worker_server(model, worker_args, scratch_dir())
    server.env["WORKER_ORCD_FAULTS"] = "hang=bench-"  # every job of this client hangs after 3 tokens
    server.start()
    client = WorkerClient(server.url)
    client_ms, cancel_ms, rss_after, rss_idle = [], [], [], []
    deadline_ms = None
    try:
        for _ in range(rounds):
            pid = _engine_ready(client)
            rss_idle.append(rss_bytes(server.pid))
            job = client.open_job(story(1), max_tokens=1500)
            client.read_tokens(job, 3)
            run = client.cancel_and_finish(job)
            rss_after.append(rss_bytes(server.pid))
            if run.code != "CANCELLED":
                raise RuntimeError(f"expected CANCELLED, got {run.code}")
            client_ms.append(run.client_ms)
            cancel_ms.append(run.cancel_ms)
            _engine_ready(client, not_pid=pid)
        deadline_ms = _deadline_of(worker_args)
    finally:
        client.close()
        server.stop()
    return {
        "rounds": rounds,
        "cancel_deadline_ms": deadline_ms,
        "client_ms": summary(client_ms),
        "cancel_ms": summary(cancel_ms),
        "rss_idle_mib": round(max(rss_idle) / 2**20, 1),
        "rss_right_after_cancelled_mib": round(max(rss_after) / 2**20, 1),
    }


def _engine_ready(client: WorkerClient, not_pid: int | None = None, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        engine = client.health()["engine"]
        if engine["state"] == "ready" and engine["pid"] and engine["pid"] != not_pid:
            return engine["pid"]
        if time.monotonic() > deadline:
            raise RuntimeError(f"the engine did not become ready: {engine}")
        time.sleep(0.02)


def _deadline_of(worker_args: list[str]) -> int:
    if "--cancel-deadline-ms" in worker_args:
        return int(worker_args[worker_args.index("--cancel-deadline-ms") + 1])
    return 4000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--frames", type=int, default=200_000)
    p.add_argument("--deaths", type=int, default=20)
    p.add_argument("--forced", type=int, default=5)
    p.add_argument("--json", type=Path, dest="json_path")
    p.add_argument("--worker-arg", action="append", default=[], dest="worker_args", help="a flag for the worker")
    args = p.parse_args(argv)
    worker_args = args.worker_args
    result = {
        "machine": describe(None),
        "command": "python -m bench.engine " + " ".join(argv if argv is not None else sys.argv[1:]),
        "worker_args": worker_args,
        "channel": channel_cost(args.frames),
        "engine_death": engine_deaths(args.deaths, args.model, worker_args),
        "forced_cancel": forced_cancels(args.forced, args.model, worker_args),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_path:
        args.json_path.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
