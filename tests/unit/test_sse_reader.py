"""The SSE reader every client of the worker uses (worker_orcd.client.sse): bytes in, events out."""

from __future__ import annotations

import time

import pytest

from worker_orcd.api.events import encode_event
from worker_orcd.client.sse import iter_events
from worker_orcd.jobs import events

STREAM = (
    b'event: started\ndata: {"job_id":"j"}\n\n'
    b": ping - 2026-01-01 00:00:00\n\n"
    b'event: token\ndata: {"t":"Hi","i":0}\n\n'
    b'event: end\ndata: {"tokens_out":1,"stop_reason":"eos"}\n\n'
)
EXPECTED = [
    ("started", {"job_id": "j"}),
    ("token", {"t": "Hi", "i": 0}),
    ("end", {"tokens_out": 1, "stop_reason": "eos"}),
]


def read(*chunks: bytes) -> list[tuple[str, object]]:
    return [(e.name, e.data) for e in iter_events(chunks)]


def test_one_chunk():
    assert read(STREAM) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16])
def test_events_split_across_chunks(size):
    assert read(*(STREAM[i : i + size] for i in range(0, len(STREAM), size))) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 5, 37, len(STREAM) * 2])
def test_crlf_line_ends_even_split_between_cr_and_lf(size):
    stream = STREAM.replace(b"\n", b"\r\n")  # as sse-starlette writes them
    assert read(*(stream[i : i + size] for i in range(0, len(stream), size))) == EXPECTED


def test_comments_pings_and_other_fields_make_no_event():
    assert read(b": ping\n\n:\n\nid: 7\nretry: 100\n\nevent: token\n\n") == []
    assert read(b"id: 7\nevent: token\ndata: 1\nretry: 5\n\n") == [("token", 1)]


def test_data_lines_are_joined_and_one_leading_space_dropped():
    assert read(b'data: [1,\ndata:2,\ndata:  3]\n\n') == [("message", [1, 2, 3])]
    assert [e.raw for e in iter_events([b"data:a\ndata: b\n\n"])] == ["a\nb"]


def test_data_that_is_not_json_is_kept_raw():
    (done,) = iter_events([b"data: [DONE]\r\n\r\n"])  # llama-cpp-python's server ends so
    assert done.raw == "[DONE]"
    with pytest.raises(ValueError):
        done.data


def test_an_event_the_stream_ends_in_is_dropped():
    assert read(b'event: token\ndata: {"t":"a","i":0}\n\nevent: end\ndata: {"x"') == [("token", {"t": "a", "i": 0})]
    assert read(b"data: 1\r\n\r") == []


def test_each_event_is_stamped_when_the_chunk_completing_it_was_read():
    marks = {}

    def chunks():
        yield b"data: 1\n\ndata: "
        marks["second"] = time.perf_counter()
        yield b"2\n\n"

    first, second = iter_events(chunks())
    assert first.at < marks["second"] <= second.at


def test_reads_what_the_worker_writes():
    wire = b"".join(encode_event(e) for e in (events.token("a\nb «é»", 0), events.token(" ", 1)))
    assert read(wire) == [("token", {"t": "a\nb «é»", "i": 0}), ("token", {"t": " ", "i": 1})]
