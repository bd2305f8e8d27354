"""worker_orcd.api: each wire format declared once, and what is derived from it."""

from __future__ import annotations

import sqlite3

import pytest

from worker_orcd.api import errors, events, records
from worker_orcd.api.ids import is_job_id
from worker_orcd.errors import ErrorCode
from worker_orcd.jobs import events as job_events
from worker_orcd.jobs import ledger


def test_every_code_has_a_status():
    assert set(errors.HTTP_STATUS) == set(ErrorCode)


def test_the_native_envelope_lists_details_only_when_given():
    assert errors.error_body(ErrorCode.JOB_EXISTS, "m", "c") == {
        "error": {"code": "JOB_EXISTS", "message": "m", "correlation_id": "c"}
    }
    body = errors.error_body(ErrorCode.INVALID_REQUEST, "m", None, [{"field": "f", "reason": "r"}])
    assert list(body["error"]) == ["code", "message", "details", "correlation_id"]


def test_the_openai_envelope_takes_worker_codes_and_openai_codes():
    busy = errors.openai_error_body(503, "m", ErrorCode.WORKER_BUSY)["error"]
    assert busy == {"message": "m", "type": "server_error", "param": None, "code": "WORKER_BUSY"}
    cancelled = errors.openai_error_body(499, "m", "CANCELLED", tokens_out=2)["error"]
    assert cancelled["type"] == "cancelled" and cancelled["tokens_out"] == 2
    assert errors.openai_error_body(400, "m", "invalid_value", "n")["error"]["param"] == "n"
    assert errors.status_of("NOT_A_CODE") == 500 and errors.status_of("TENANT_BUSY") == 429


@pytest.mark.parametrize(
    "value, ok",
    [
        ("a.b_c:d-1", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        ("a b", False),
        (7, False),
        (None, False),
    ],
)
def test_the_job_id_rule(value, ok):
    assert is_job_id(value) is ok


def test_the_decoder_finds_terminal_events_of_both_framings():
    wire = events.encode_events([job_events.token("a", 0), job_events.end(1, 2.0, "eos")])
    assert [events.is_terminal(e) for e in events.iter_events([wire])] == [False, True]
    error = events.encode_data(errors.openai_error_body(503, "m", ErrorCode.REPLICA_FAILED)).encode()
    chunk = events.encode_data({"choices": [{"delta": {"content": '"error"'}}]}).encode()
    found = list(events.iter_events([chunk, error, events.DONE.encode()]))
    assert [events.is_openai_terminal(e) for e in found] == [False, True, True]
    assert events.openai_error_of(found[1]) == {
        "message": "m",
        "type": "server_error",
        "param": None,
        "code": "REPLICA_FAILED",
    }


def test_the_ledger_schema_has_the_declared_columns(tmp_path):
    conn = sqlite3.connect(tmp_path / "l.sqlite3")
    conn.executescript(ledger._SCHEMA)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(jobs)")]
    assert sorted(columns) == sorted(("seq", *records.COLUMNS))


def test_a_record_has_the_declared_fields_in_order_from_either_source():
    row = {c: None for c in records.COLUMNS} | {"tokens_out": 0, "text": "", "text_truncated": 0, "state": "queued"}
    assert tuple(records.from_row(row)) == records.FIELDS
    assert "text" not in records.summary_from_row(row)
