"""The benchmark harness, in its tiniest configuration: does it produce a well-formed report?

It checks the shape of the report, never a time: CI machines are too noisy for that.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCENARIOS = "ttft,cancel-decode"
CHECKOUT = Path(__file__).resolve().parents[2]  # `python -m bench` runs from the checkout's root


def test_bench_quick_report_is_well_formed(tmp_path):
    out = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "bench", "--quick", "--no-peer"]
    cmd += ["--scenarios", SCENARIOS, "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=CHECKOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "target" in done.stdout and "idle TTFT" in done.stdout

    report = json.loads(out.read_text())
    assert report["schema"] == "worker-orcd-bench/1"
    assert {"date", "cpu", "cores", "load_average_at_start", "load_average_at_end"} <= report["machine"].keys()
    # The baselines ran with the worker's extra-CPU-buffers setting, and the report says which.
    assert report["machine"]["cpu_extra_buffers"]["source"] in ("flag", "probe", "cache")
    assert "extra CPU buffers on" in done.stdout or "extra CPU buffers off" in done.stdout
    assert report["model"]["file"].endswith(".gguf")
    assert report["command"].startswith("python -m bench --quick")

    ttft = report["scenarios"]["ttft"]
    assert "worker" in ttft and any(name.startswith("bare@") for name in ttft)
    for side in ttft.values():
        assert side["ttft_ms"]["n"] == 2 and side["ttft_ms"]["p50"] > 0

    cancel = report["scenarios"]["cancel_decode"]["worker"]
    assert cancel["cancels"] == 3 and cancel["codes"] == {"CANCELLED": 3}
    for key in ("client_ms", "ack_ms", "stop_ms", "cancel_ms"):
        summary = cancel[key]
        assert summary["n"] == 3
        assert summary["p50"] <= summary["p95"] <= summary["p99"] <= summary["max"]
    assert cancel["free_after_cancel"]["next_ttft_ms"]["n"] == 3

    assert report["comparisons"]["ttft"]["worker_minus_best_bare_ms"] is not None
    targets = {t["key"]: t for t in report["targets"]}
    assert targets["ttft_vs_bare"]["met"] in (True, False)
    assert targets["cancel_decode_client_p99"]["value"] is not None
    assert targets["stream_vs_bare"]["value"] is None  # not run: reported, not guessed


def test_floors_report_is_well_formed(tmp_path):
    """`python -m bench.floors` with a handful of samples: every figure present, aborts seen."""
    out = tmp_path / "floors.json"
    cmd = [sys.executable, "-m", "bench.floors", "--samples", "4", "--settle", "0.01", "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=CHECKOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    floors = json.loads(out.read_text())
    for name in ("after_idle_pause_ms", "back_to_back_ms"):
        assert floors["http"][name]["n"] == 4 and floors["http"][name]["p50"] > 0
    for name in ("idle_ms", "during_decode_ms"):
        assert floors["http"]["worker_cancel"][name]["n"] == 4
    for phase, batch in (("decode", 1), ("prompt", 128)):
        result = floors[phase]
        assert result["batch_tokens"] == batch
        stops = result["raise_to_return_ms"]
        assert stops["n"] + result["finished_before_raise"] == 4
        assert stops["n"] >= 1  # a prompt batch runs for hundreds of ms: the flag comes up inside it


def test_engine_report_is_well_formed(tmp_path):
    """`python -m bench.engine` at its smallest: the channel, one engine death, one forced cancel."""
    out = tmp_path / "engine.json"
    cmd = [sys.executable, "-m", "bench.engine", "--frames", "2000", "--deaths", "1", "--forced", "1"]
    cmd += ["--worker-arg=--threads", "--worker-arg=1", "--worker-arg=--cancel-deadline-ms", "--worker-arg=500"]
    cmd += ["--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=CHECKOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["machine"]["cpu"]
    channel = report["channel"]
    assert channel["frames"] == 2000 and channel["send_us_per_token"] > 0 and channel["receive_us_per_token"] > 0
    death = report["engine_death"]
    assert death["kill_to_terminal_event_ms"]["n"] == 1 and death["kill_to_next_first_token_ms"]["n"] == 1
    forced = report["forced_cancel"]
    assert forced["cancel_deadline_ms"] == 500 and forced["client_ms"]["n"] == 1
    assert forced["cancel_ms"]["p50"] >= 500  # the deadline passed before the kill
    # Right after CANCELLED the stuck engine is gone and the new one not yet grown.
    assert forced["rss_right_after_cancelled_mib"] < forced["rss_idle_mib"]
