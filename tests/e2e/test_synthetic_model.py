"""The real worker on a synthetic model (bench.synthetic): it loads, streams, cancels and frees.

The tiny synthetic model is written into a temporary directory for this module:
a llama model with random weights and a SentencePiece-style vocabulary, the kind
the benchmarks make at 1B and 8B on a GPU. Its text is gibberish, so only the
events are checked, never the words.
"""

from __future__ import annotations

import pytest

from bench.synthetic import PRESETS, make_model
from testkit.prompts import CHAT
from testkit.streams import StreamThread, assert_well_formed, cancel, job_of, terminal, uid, wait_active, wait_idle
from testkit.waiting import wait_until
from testkit.wire import execute
from testkit.worker import WorkerProcess

N_CTX = 8192
# ~7,200 tokens with the synthetic vocabulary: on one thread, in chunks of 32, its
# evaluation takes far longer than a cancel's transit, so the cancel lands in it.
LONG_PROMPT = "The quick brown fox jumps over the lazy dog. " * 400
MiB = 1 << 20
SLACK = 8 * MiB  # as tests/e2e/test_memory.py: a leaked context is far more


class SyntheticWorker(WorkerProcess):
    idle_rss: int = 0


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    model = make_model(tmp_path_factory.mktemp("synthetic"), "tiny", "Q4_K_M")
    w = SyntheticWorker(
        args=["--model", str(model), "--threads", "1", "--n-ctx", str(N_CTX), "--prefill-chunk", "32"]
    ).start()
    try:
        with w.client() as c:
            # Warm-up: the first job pages in the weights; then the idle footprint.
            warm = execute(c, {"job_id": uid("synth-warm"), "prompt": CHAT.format("Hi"), "max_tokens": 8})
            assert terminal(warm).name == "end"
            wait_idle(c)
        w.idle_rss = w.settled_rss()
        yield w
    finally:
        w.stop()


@pytest.fixture
def client(synth):
    with synth.client() as c:
        wait_idle(c)
        yield c


def assert_cancelled(event) -> None:
    assert event.name == "error"
    assert event.data["code"] == "CANCELLED" and event.data["retriable"] is False
    assert 0 <= event.data["stop_ms"] <= event.data["cancel_ms"]


def test_the_worker_serves_the_synthetic_model(client):
    h = client.get("/health").json()
    assert h["status"] == "healthy" and h["ready"] is True
    assert h["model"] == "synthetic-llama-tiny-Q4_K_M.gguf"
    assert h["tokenizer_kind"] == "llama" and h["vocab_size"] == PRESETS["tiny"].vocab
    assert h["context_length"] == N_CTX


def test_stream_to_completion(client):
    job_id = uid("synth-stream")
    body = {"job_id": job_id, "prompt": CHAT.format("Write a haiku about GPUs"), "max_tokens": 48, "temperature": 0}
    events = execute(client, body)
    assert_well_formed(events)
    assert events[0].data["prompt_tokens"] > 10  # ChatML tokens parsed, text in pieces
    end = terminal(events)
    # The synthetic model never gives its end-of-turn token a winning logit.
    assert end.name == "end" and end.data["stop_reason"] == "max_tokens"
    assert end.data["tokens_out"] == 48
    job = job_of(client, job_id)
    assert job["state"] == "completed" and job["tokens_out"] == 48 and job["text"]


def test_cancel_during_decode(client, synth):
    job_id = uid("synth-decode")
    body = {"job_id": job_id, "prompt": CHAT.format("Tell me a long story"), "max_tokens": 2000, "temperature": 0}
    stream = StreamThread(synth, body).start()
    stream.wait_tokens(5)
    cancel(client, job_id)
    events = stream.join()

    assert_well_formed(events)
    end = terminal(events)
    assert_cancelled(end)
    assert 5 <= end.data["tokens_out"] < 2000
    job = job_of(client, job_id)
    assert job["state"] == "cancelled" and job["cancel_reason"] == "client"
    assert job["tokens_out"] == end.data["tokens_out"]
    assert synth.log.wait_for("cancel_ack", job_id=job_id)["phase"] == "decode"


def test_cancel_during_long_prompt(client, synth):
    job_id = uid("synth-prompt")
    body = {"job_id": job_id, "prompt": LONG_PROMPT, "max_tokens": 64, "temperature": 0}
    stream = StreamThread(synth, body).start()
    wait_active(client, job_id)
    cancel(client, job_id)
    events = stream.join()

    end = terminal(events)
    assert_cancelled(end)
    assert end.data["tokens_out"] == 0
    assert [e.name for e in events] in (["started", "error"], ["error"])
    job = job_of(client, job_id)
    assert job["state"] == "cancelled" and job["tokens_out"] == 0 and job["text"] == ""
    assert synth.log.wait_for("cancel_ack", job_id=job_id)["phase"] == "prompt"


def test_memory_back_and_worker_healthy_after_cancels(client, synth):
    # Runs after the cancels above (and is meaningful alone: it cancels one of each itself).
    decode_id, prompt_id = uid("synth-mem-decode"), uid("synth-mem-prompt")
    s = StreamThread(
        synth, {"job_id": decode_id, "prompt": CHAT.format("Go on"), "max_tokens": 2000, "temperature": 0}
    ).start()
    s.wait_tokens(2)
    cancel(client, decode_id)
    assert_cancelled(terminal(s.join()))
    s = StreamThread(synth, {"job_id": prompt_id, "prompt": LONG_PROMPT, "max_tokens": 64}).start()
    wait_active(client, prompt_id)
    cancel(client, prompt_id)
    assert_cancelled(terminal(s.join()))
    wait_idle(client)

    wait_until(lambda: synth.rss_bytes() <= synth.idle_rss + SLACK, timeout=30, interval=0.025)
    assert synth.settled_rss() <= synth.idle_rss + SLACK

    h = client.get("/health").json()
    assert h["status"] == "healthy" and h["ready"] is True and h["busy"] is False
    assert h["engine"]["state"] == "ready" and h["engine"]["restarts"] == 0
    events = execute(client, {"job_id": uid("synth-after"), "prompt": CHAT.format("Hi"), "max_tokens": 8})
    assert_well_formed(events)
    assert terminal(events).name == "end"
