"""`worker-orcd run "prompt"`: one job through a running worker, its tokens to stdout as
they come, a status line on stderr, Ctrl-C to cancel it.

Exit status: 0 the job completed; 1 an error (the worker's code is printed); 2 a usage
error; 130 interrupted (Ctrl-C): the job was cancelled, or had already ended.

The first Ctrl-C sends POST /cancel (from a thread: the main one goes on reading the
stream) and waits for the job's terminal event, whose `stop_ms` and `cancel_ms` are
printed; a second one leaves at once, and the closed connection cancels the job.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from typing import IO, Any

from worker_orcd.argtypes import non_negative, positive

DEFAULT_URL = "http://127.0.0.1:8080"
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
REDRAW_S = 0.1  # status line redraws at most this often
QUEUE_POLL_S = 0.5  # how often a queued job's place is asked for (GET /jobs/{id})
CLEAR_LINE = "\r\x1b[K"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `run` subcommand, for worker_orcd.cli's parser."""
    p = sub.add_parser(
        "run",
        help="stream one prompt through a running worker (Ctrl-C cancels it)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", nargs="?", help="the prompt; absent or -: stdin, exactly as read")
    p.add_argument("--url", default=DEFAULT_URL, help=f"the worker (default {DEFAULT_URL})")
    p.add_argument("--api-token", help="bearer token (default: $WORKER_ORCD_API_TOKEN)")
    p.add_argument("--max-tokens", type=positive, help="default: the worker's (what fits the context)")
    p.add_argument("--temperature", type=float, help="0 is greedy (default: the worker's, 1.0)")
    p.add_argument("--seed", type=non_negative, help="fixed seed, for the same tokens again")
    p.add_argument(
        "--stop", action="append", metavar="TEXT", help="stop when this text appears; repeatable (at most 4)"
    )
    p.add_argument("--job-id", help="the job's id (default: a new one); GET /jobs/ID tells of it later")
    p.add_argument(
        "--chat",
        action="store_true",
        help="send the prompt as a user's message, in the model's own chat template "
        "(the worker applies it: POST /v1/chat/completions)",
    )
    p.add_argument("--json", action="store_true", help="print the events as JSON lines instead of the text")
    p.set_defaults(run=main)
    return p


def main(args: argparse.Namespace) -> int:
    prompt = _prompt(args)
    if prompt is None:
        return EXIT_USAGE
    try:
        from worker_orcd.client._client import Client
    except ImportError as exc:  # its message names the extra to install
        return _fail(str(exc))
    client = Client(args.url, api_token=args.api_token)
    try:
        return Run(client, args, prompt).run()
    finally:
        client.close()


class Run:
    """One job: its stream shown, Ctrl-C turned into its cancel."""

    def __init__(self, client: Any, args: argparse.Namespace, prompt: str) -> None:
        self.client = client
        self.args = args
        # --chat: the worker renders the model's template of one user message.
        self.stream = (client.chat if args.chat else client.stream)(
            prompt,
            job_id=args.job_id,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            seed=args.seed,
            stop=args.stop,
        )
        self.job_id: str = self.stream.job_id
        self.interrupts = 0
        self.out = sys.stdout
        self.status = StatusLine(sys.stderr, stdout=self.out, enabled=not args.json)

    def run(self) -> int:
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            return self._run()
        finally:
            signal.signal(signal.SIGINT, previous)

    def _run(self) -> int:
        import httpx

        from worker_orcd.client.errors import IncompleteStream, WorkerError

        try:
            self.status.show("sending", force=True)
            with self.stream:
                self.status.show("queued", force=True)
                watch = self._watch_queue()
                try:
                    for event in self.stream:
                        code = self._event(event)
                        if code is not None:
                            return code
                finally:
                    watch.set()
        except IncompleteStream as exc:
            return self._failed(f"{exc.message}; GET /jobs/{self.job_id} tells how it ended")
        except WorkerError as exc:
            if self.args.chat and exc.code == "NOT_FOUND":
                return self._failed(
                    f"{exc.code} ({exc.status}): this worker has no OpenAI route, which --chat needs; "
                    "write the model's chat template into the prompt instead"
                )
            more = f"; retry after {exc.retry_after:g} s" if exc.retry_after is not None else ""
            return self._failed(f"{exc.code} ({exc.status}): {exc.message}{more}")
        except httpx.ConnectError as exc:
            return self._failed(f"cannot reach the worker at {self.args.url}: {exc}")
        except httpx.HTTPError as exc:
            return self._failed(f"the connection to {self.args.url} failed: {exc!r}")
        except BrokenPipeError:  # stdout went away (`| head`): leaving the block cancelled the job
            _quiet_stdout()
            return EXIT_FAILED
        return self._failed("the stream ended without a terminal event")  # IncompleteStream says it first

    def _watch_queue(self) -> threading.Event:
        """While the job waits, its place in the queue on the status line (a terminal only);
        set the returned event to stop."""
        stop = threading.Event()

        def watch() -> None:
            _leave_sigint_to_the_main_thread()
            while not stop.wait(QUEUE_POLL_S) and self.status.state == "queued":
                try:
                    place = self.client.job(self.job_id).get("queue_position")
                except Exception:  # a failed look-up only leaves the line as it was
                    continue
                if self.status.state == "queued":
                    self.status.queued(place)

        if self.status.live:
            threading.Thread(target=watch, name="queue-watch", daemon=True).start()
        return stop

    def _event(self, event: Any) -> int | None:
        """Show one event; the exit status once it is the terminal one."""
        from worker_orcd.client.events import Error, Started, Token

        if self.args.json:
            self.out.write(json.dumps({"event": event.name, "data": event.data}, ensure_ascii=False) + "\n")
            self.out.flush()
        elif type(event) is Token:
            self.status.before_text()
            self.out.write(event.text)
            self.out.flush()
        kind = type(event)
        if kind is Token:
            self.status.token(event.at)
            return None
        if kind is Started:
            self.status.started()
            return None
        if not event.terminal:
            return None
        self._end_text()
        if kind is Error:
            if event.code == "CANCELLED" and self.interrupts:
                forced = ", forced: the engine was killed" if event.forced else ""
                self.status.finish(
                    f"CANCELLED after {event.tokens_out} tokens: stop_ms {event.stop_ms}, "
                    f"cancel_ms {event.cancel_ms}{forced}",
                    always=True,
                )
                return EXIT_INTERRUPTED
            more = " (retriable)" if event.retriable else ""
            self.status.finish(f"job {self.job_id} failed: {event.code}: {event.message}{more}", always=True)
            return EXIT_INTERRUPTED if self.interrupts else EXIT_FAILED
        self.status.finish(f"completed: {self.status.summary()}, stop reason {event.stop_reason}")
        if self.interrupts:
            self.status.finish("interrupted, but the job had already completed", always=True)
            return EXIT_INTERRUPTED
        return 0

    def _end_text(self) -> None:
        """On a terminal, end the text's last line, so what follows starts on its own."""
        if not self.args.json and self.status.text_open and self.out.isatty():
            self.out.write("\n")
            self.out.flush()
            self.status.text_open = False

    def _failed(self, message: str) -> int:
        self._end_text()
        self.status.finish(message, always=True)
        return EXIT_INTERRUPTED if self.interrupts else EXIT_FAILED

    def _on_sigint(self, signum: int, frame: object) -> None:
        # A signal handler runs between two bytecodes of the main thread, maybe inside a
        # write to stderr: it writes nothing through sys.stderr itself.
        self.interrupts += 1
        if self.interrupts > 1:
            os.write(2, b"\nworker-orcd: left without waiting; the closed connection cancels the job\n")
            os._exit(EXIT_INTERRUPTED)
        threading.Thread(target=self._cancel, name="cancel", daemon=True).start()

    def _cancel(self) -> None:
        _leave_sigint_to_the_main_thread()
        self.status.cancelling(self.job_id)
        try:
            self.client.cancel(self.job_id)
        except Exception as exc:  # reported; a second Ctrl-C still leaves
            self.status.note(f"the cancel was not sent: {exc}; Ctrl-C again to leave")


class StatusLine:
    """The live status on stderr, redrawn in place only when stderr is a terminal.

    When stdout is the same terminal, the text itself shows progress and a redrawn
    line would overwrite it: the line is drawn only until the first token, and the
    summary is printed once the text has ended.
    """

    def __init__(self, err: IO[str], *, stdout: IO[str], enabled: bool) -> None:
        self.err = err
        self.enabled = enabled
        self.live = enabled and _isatty(err)
        self.shared = self.live and _same_terminal(stdout, err)
        self.drawn = False  # a status line is on screen, to be redrawn or cleared
        self.text_open = False  # text was written and its last line not ended
        self.state = "sending"
        self.place: int | None = None  # jobs ahead while queued
        self.tokens = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self._next_draw = 0.0
        self._lock = threading.Lock()  # the cancel thread writes too

    def _draw(self, text: str) -> None:
        with self._lock:
            self.err.write(CLEAR_LINE + text)
            self.err.flush()
            self.drawn = True

    def show(self, state: str, force: bool = False) -> None:
        self.state = state
        if not self.live or (self.shared and self.text_open):
            return
        now = time.monotonic()
        if force or now >= self._next_draw:
            self._next_draw = now + REDRAW_S
            self._draw(f"[{self.state}] {self.summary()}".rstrip())

    def queued(self, place: int | None) -> None:
        self.place = place
        self.show("queued", force=True)

    def started(self) -> None:
        self.show("running", force=True)

    def token(self, at: float) -> None:
        self.tokens += 1
        if self.first_at is None:
            self.first_at = at
        self.last_at = at
        self.show(self.state)

    def before_text(self) -> None:
        """Called before text goes to stdout: on a shared terminal, the line makes way."""
        if self.shared and self.drawn:
            with self._lock:
                self.err.write(CLEAR_LINE)
                self.err.flush()
                self.drawn = False
        self.text_open = True

    def summary(self) -> str:
        if self.state == "queued" and self.place is not None:
            return "next in the queue" if self.place == 0 else f"{self.place} job(s) ahead in the queue"
        if not self.tokens:
            return ""
        rate = ""
        if self.tokens > 1 and self.last_at and self.first_at and self.last_at > self.first_at:
            rate = f", {(self.tokens - 1) / (self.last_at - self.first_at):.1f} tok/s"
        return f"{self.tokens} tokens{rate}"

    def cancelling(self, job_id: str) -> None:
        self.state = "cancelling"
        self.note(f"cancelling job {job_id} (Ctrl-C again to leave at once)")

    def note(self, message: str) -> None:
        """A line of its own on stderr, whatever the mode."""
        with self._lock:
            lead = CLEAR_LINE if self.drawn else ("\n" if self.shared and self.text_open else "")
            self.err.write(f"{lead}worker-orcd: {message}\n")
            self.err.flush()
            self.drawn = False
            if self.shared:
                self.text_open = False  # the text's line was ended before the note

    def finish(self, message: str, always: bool = False) -> None:
        """The final word: on a terminal always, elsewhere only when it matters (`always`)."""
        if always or self.live:
            self.note(message)
        elif self.drawn:
            self._draw("")


def _leave_sigint_to_the_main_thread() -> None:
    """Block SIGINT in the calling (helper) thread. The kernel gives a signal to any thread
    that does not block it, and Python runs its handler only in the main thread: a Ctrl-C
    that lands in a thread waiting on the network would leave the main thread's own wait
    uninterrupted, and a second Ctrl-C would not leave until that wait ended."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def _prompt(args: argparse.Namespace) -> str | None:
    if args.prompt is not None and args.prompt != "-":
        prompt = args.prompt
    elif args.prompt is None and _isatty(sys.stdin):
        _usage("give a prompt, or pipe one on stdin (or name stdin with -)")
        return None
    else:
        prompt = sys.stdin.read()  # as it is: a template's prompt may end in a newline
    if not prompt:
        _usage("the prompt is empty")
        return None
    return prompt


def _usage(message: str) -> None:
    print(f"usage: worker-orcd run [options] [PROMPT]\nworker-orcd run: error: {message}", file=sys.stderr)


def _fail(message: str) -> int:
    print(f"worker-orcd: {message}", file=sys.stderr)
    return EXIT_FAILED


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _same_terminal(a: IO[str], b: IO[str]) -> bool:
    try:
        return a.isatty() and b.isatty() and os.fstat(a.fileno()).st_rdev == os.fstat(b.fileno()).st_rdev
    except (AttributeError, ValueError, OSError):
        return False


def _quiet_stdout() -> None:
    """After a broken pipe, keep the interpreter's final flush of stdout from failing too."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
