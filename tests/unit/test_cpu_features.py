"""The extra-CPU-buffers decision (WO-CPU-1..3) without a model: flags, the cache and its
key, the warning; the probe itself is replaced by a stand-in that counts its calls."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import pytest

from worker_orcd.engine import cpu_features, gguf
from worker_orcd.engine.cpu_features import CACHE_FILE, Decision, ProbeResult, decide
from worker_orcd.engine.faults import FaultPlan

PASSED = ProbeResult(True, True, None, ("CPU_REPACK",), 12.0)
KILLED = ProbeResult(False, True, "a test process that used them was killed by SIGILL (x)", ("AMX",), 9.0)
FAILED = ProbeResult(False, False, "the probe failed with exit status 1 (x): bad file", (), 5.0)


class StandInProbe:
    def __init__(self, result: ProbeResult) -> None:
        self.result = result
        self.calls = 0

    def __call__(self, *args, **kwargs) -> ProbeResult:
        self.calls += 1
        return self.result


@pytest.fixture
def stand_in(monkeypatch):
    def install(result: ProbeResult) -> StandInProbe:
        fake = StandInProbe(result)
        monkeypatch.setattr(cpu_features, "probe", fake)
        return fake

    return install


def gguf_bytes(file_type: int | None) -> bytes:
    """A GGUF header: a string array (as a vocabulary is) before general.file_type."""

    def string(text: str) -> bytes:
        data = text.encode()
        return struct.pack("<Q", len(data)) + data

    kvs = [string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 3) + b"".join(map(string, "abc"))]
    kvs.append(string("general.name") + struct.pack("<I", 8) + string("tiny"))
    if file_type is not None:
        kvs.append(string("general.file_type") + struct.pack("<II", 4, file_type))
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs)


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(gguf_bytes(3))  # MOSTLY_Q4_1
    return path


def run(model: Path, state_dir: Path, mode: str = "auto") -> Decision:
    return decide(mode, model_path=model, state_dir=state_dir, threads=1, gpu_device=None)


@pytest.mark.parametrize("mode", ["on", "off"])
def test_flags_never_probe_nor_cache(stand_in, model, tmp_path, mode):
    fake = stand_in(KILLED)
    decision = run(model, tmp_path, mode)
    assert decision.health() == {"mode": mode, "enabled": mode == "on", "source": "flag", "reason": None}
    assert fake.calls == 0 and not (tmp_path / CACHE_FILE).exists()
    assert not decision.failed_probe


def test_a_passing_probe_is_cached_and_reused(stand_in, model, tmp_path):
    fake = stand_in(PASSED)
    first, second = run(model, tmp_path), run(model, tmp_path)
    assert (first.source, first.enabled, first.probe_ms) == ("probe", True, 12.0)
    assert (second.source, second.enabled, second.probe_ms) == ("cache", True, None)
    assert second.buffer_types == ("CPU_REPACK",)
    assert fake.calls == 1


def test_a_killed_probe_is_cached_with_its_reason(stand_in, model, tmp_path):
    fake = stand_in(KILLED)
    first, second = run(model, tmp_path), run(model, tmp_path)
    assert first.health() == {"mode": "auto", "enabled": False, "source": "probe", "reason": KILLED.reason}
    assert second.health() == {"mode": "auto", "enabled": False, "source": "cache", "reason": KILLED.reason}
    assert first.failed_probe and second.failed_probe  # each start warns
    assert fake.calls == 1


def test_a_probe_that_failed_otherwise_is_not_cached(stand_in, model, tmp_path):
    fake = stand_in(FAILED)
    first, second = run(model, tmp_path), run(model, tmp_path)
    assert (first.enabled, first.source, second.source) == (False, "probe", "probe")
    assert fake.calls == 2 and not (tmp_path / CACHE_FILE).exists()


@pytest.mark.parametrize(
    "content",
    ["", "{not json", "[]", '{"schema": 1, "entries": "x"}', '{"schema": 99, "entries": []}',
     '{"schema": 1, "entries": [1, {"key": "x"}]}'],
    ids=["empty", "broken", "list", "entries-not-a-list", "other-schema", "odd-entries"],
)
def test_an_unreadable_cache_means_probe_again_and_rewrite(stand_in, model, tmp_path, content):
    (tmp_path / CACHE_FILE).write_text(content)
    fake = stand_in(PASSED)
    assert run(model, tmp_path).source == "probe"
    assert fake.calls == 1
    data = json.loads((tmp_path / CACHE_FILE).read_text())
    assert data["schema"] == 1 and [e["enabled"] for e in data["entries"]] == [True]
    assert run(model, tmp_path).source == "cache"


def test_a_cached_entry_without_a_verdict_is_ignored(stand_in, model, tmp_path):
    stand_in(PASSED)
    run(model, tmp_path)
    path = tmp_path / CACHE_FILE
    data = json.loads(path.read_text())
    data["entries"][0]["enabled"] = "yes"
    path.write_text(json.dumps(data))
    assert run(model, tmp_path).source == "probe"


def test_another_cpu_probes_again(stand_in, model, tmp_path, monkeypatch):
    fake = stand_in(PASSED)
    run(model, tmp_path)
    monkeypatch.setattr(cpu_features, "cpu_model", lambda: "Another CPU")
    assert run(model, tmp_path).source == "probe"
    assert run(model, tmp_path).source == "cache"
    assert fake.calls == 2
    # Both verdicts are kept: a state dir may move between CPUs and back.
    assert len(json.loads((tmp_path / CACHE_FILE).read_text())["entries"]) == 2


def test_another_engine_version_probes_again(stand_in, model, tmp_path, monkeypatch):
    fake = stand_in(PASSED)
    run(model, tmp_path)
    monkeypatch.setattr(cpu_features, "_version", lambda package: "9.9.9")
    assert run(model, tmp_path).source == "probe"
    assert fake.calls == 2


def test_another_file_type_probes_again(stand_in, model, tmp_path):
    fake = stand_in(PASSED)
    run(model, tmp_path)
    other = tmp_path / "other.gguf"
    other.write_bytes(gguf_bytes(2))  # MOSTLY_Q4_0
    assert run(other, tmp_path).source == "probe"
    # The same file type under another name is the same question.
    same = tmp_path / "same.gguf"
    same.write_bytes(gguf_bytes(3))
    assert run(same, tmp_path).source == "cache"
    assert fake.calls == 2


def test_cache_key_names_the_file_type(model):
    key = cpu_features.cache_key(model, offload=False)
    assert key["file_type"] == "MOSTLY_Q4_1" and key["backend"] == "cpu"
    assert set(key) == {"cpu", "kernel", "llama_cpp_python", "file_type", "backend"}


def test_the_cache_keeps_a_bounded_number_of_entries(stand_in, model, tmp_path, monkeypatch):
    stand_in(PASSED)
    for i in range(cpu_features.CACHE_ENTRIES + 5):
        monkeypatch.setattr(cpu_features, "cpu_model", lambda i=i: f"CPU {i}")
        run(model, tmp_path)
    entries = json.loads((tmp_path / CACHE_FILE).read_text())["entries"]
    assert len(entries) == cpu_features.CACHE_ENTRIES
    assert entries[-1]["key"]["cpu"] == f"CPU {cpu_features.CACHE_ENTRIES + 4}"


def test_gguf_file_type_is_read_from_the_header(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(gguf_bytes(15))
    assert gguf.file_type(path) == 15
    path.write_bytes(gguf_bytes(None))
    assert gguf.file_type(path) is None
    for garbage in (b"", b"GGUF", b"GGUF\x03\x00\x00\x00" + b"\xff" * 64, gguf_bytes(15)[:40], b"nope" * 10):
        path.write_bytes(garbage)
        assert gguf.file_type(path) is None
    assert gguf.file_type(tmp_path / "missing.gguf") is None


def test_the_warning_names_the_feature_its_cost_and_the_remedy(caplog):
    decision = Decision("auto", False, "probe", KILLED.reason, ("AMX", "CPU_REPACK"), ("amx_tile", "amx_int8"))
    with caplog.at_level(logging.INFO, logger="worker_orcd"):
        decision.log()
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.event == "cpu_extra_buffers"
    message = record.fields["message"]
    for needle in ("AMX, CPU_REPACK", "SIGILL", "amx_tile, amx_int8", "plain CPU kernels",
                   "prompt evaluation may be slower", "--cpu-extra-buffers on", "--cpu-extra-buffers off"):
        assert needle in message, needle


def test_an_enabled_decision_logs_at_info(caplog):
    with caplog.at_level(logging.INFO, logger="worker_orcd"):
        Decision("auto", True, "cache").log()
        Decision("off", False, "flag").log()
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.INFO]
    assert all("message" not in r.fields for r in caplog.records)


def test_child_report_survives_a_child_cut_short():
    report = cpu_features.ChildReport.parse('{"buffer_types": ["AMX"]}\nnoise\n[1]\n{"stage": "while x"}\n{"sta')
    assert report.buffer_types == ("AMX",) and report.stage == "while x"
    assert cpu_features.ChildReport.parse(None).buffer_types == ()


def test_fault_plan_takes_cpu_probe_faults():
    assert FaultPlan.from_env("cpu_probe=sigill").cpu_probe == "sigill"
    plan = FaultPlan.from_env("decode=d-,cpu_probe=hang")
    assert plan.cpu_probe == "hang" and plan.decode_prefix == "d-" and plan
    with pytest.raises(ValueError):
        FaultPlan.from_env("cpu_probe=segv")
    assert FaultPlan.from_env("").cpu_probe is None and not FaultPlan.from_env("")


def test_a_cached_off_warns_again_and_says_how_to_check_again(stand_in, model, tmp_path, caplog):
    stand_in(KILLED)
    run(model, tmp_path)
    with caplog.at_level(logging.INFO, logger="worker_orcd"):
        run(model, tmp_path).log()
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.fields["source"] == "cache"
    assert str(tmp_path / CACHE_FILE) in record.fields["message"] and "SIGILL" in record.fields["message"]
