"""The GPU check (`python -m bench.gpu`) run on the CPU at its smallest: the pipeline a GPU
machine runs, end to end, so a broken part shows here and not first on a rented GPU.

It checks the report's shape and that every figure is there and plausible, never a
speed: CI machines are too noisy for that.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]  # `python -m bench.gpu` runs from the checkout's root


def _positive(summary: dict, n: int | None = None) -> None:
    assert summary["p50"] > 0 and summary["p50"] <= summary["p99"] <= summary["max"], summary
    if n is not None:
        assert summary["n"] == n, summary


def test_gpu_check_cpu_smoke_report(tmp_path):
    out, md = tmp_path / "gpu.json", tmp_path / "gpu.md"
    cmd = [sys.executable, "-m", "bench.gpu", "--cpu-smoke", "--budget-sec", "300"]
    cmd += ["--cache", str(tmp_path / "models"), "--work-dir", str(tmp_path / "work")]
    cmd += ["--json", str(out), "--markdown", str(md)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=420, cwd=CHECKOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    report = json.loads(out.read_text())
    assert report["schema"] == "worker-orcd-gpu-check/1" and report["mode"] == "cpu-smoke"
    assert report["ok"] is True and report["problems"] == [], report["problems"]
    assert report["seconds"] < report["budget_sec"]
    assert report["machine"]["cpu"] and report["machine"]["cores"] >= 1
    assert {"usable", "reason", "offload", "driver", "devices"} <= report["gpu"].keys()
    assert report["build"]["source"] == "installed" and report["build"]["native"]

    tests = report["tests"]
    assert tests["ran"] is True and tests["collected"] >= 5
    assert tests["failed"] == 0 and tests["errors"] == 0
    assert tests["passed"] + tests["skipped"] == tests["collected"]
    if not report["gpu"]["usable"]:
        assert tests["skipped"] == tests["collected"]
        assert all("no NVIDIA GPU usable by llama.cpp" in reason for reason in tests["skip_reasons"])

    [model] = report["models"]
    assert model["name"] == "synthetic-tiny" and model["file"].endswith(".gguf") and model["size_bytes"] > 0
    assert model["health"]["backend"] == "cpu"
    assert model["long_prompt"]["tokens"] > 100 and model["long_prompt"]["cancel_delay_ms"] > 0

    s = model["harness"]["scenarios"]
    bare = [k for k in s["stream"] if k.startswith("bare@")]
    assert bare, s["stream"].keys()
    for side in ["worker", *bare]:
        assert s["stream"][side]["tokens_per_s"]["p50"] > 0
        _positive(s["ttft"][side]["ttft_ms"], 3)
    for key in ("cancel_decode", "cancel_prompt"):
        w = s[key]["worker"]
        # The harness asks for 512 tokens: on a busy CPU the tiny model may finish them first.
        assert w["codes"].get("CANCELLED", 0) >= 1 and set(w["codes"]) <= {"CANCELLED", "end"}, w["codes"]
        _positive(w["client_ms"], 3)
        _positive(w["stop_ms"])
    assert model["harness"]["prompt_tokens"]["long"] == model["long_prompt"]["tokens"]

    for key in ("vram_decode", "vram_prompt"):
        block = model[key]
        assert block["n"] == 1 and block["codes"] == {"CANCELLED": 1} and block["forced"] == 0
        run = block["runs"][0]
        assert run["idle"]["rss_mib"] > 0 and run["at_event"]["rss_mib"] > 0
        assert run["read_after_event_ms"] >= 0
        # No NVML here: no VRAM figure, and nothing judged on one.
        if not report["gpu"]["usable"]:
            assert run["at_event"]["engine_mib"] is None and block["back_at_idle_before_event"] is None
    assert model["vram_decode"]["runs"][0]["tokens_read"] >= 20

    # The slots: --parallel 1 beside --parallel 4 on the same device, and cancels inside a batch.
    slots = model["slots"]
    assert slots["settings"]["streams"] == [1, 4] and slots["settings"]["worker_args"], slots["settings"]
    assert slots["workers"]["worker-p4"]["parallel"] == 4 and slots["workers"]["worker-p4"]["batch"]["step_tokens"] >= 1
    for side in ("worker-p1", "worker-p4"):
        for n in ("1", "4"):
            load = slots["throughput"][side][n]
            assert load["tokens"] == int(n) * 8 and load["aggregate_tokens_per_s"] > 0, (side, n, load)
    assert slots["targets"]["worker_p4_over_worker_p1_at_4"] > 0
    for hit in ("decode", "prompt"):
        c = slots["cancel_one_of_4"][hit]
        n = c["samples"] + c["landed_elsewhere"]
        assert n == 1 and c["all_cancelled"] and c["neighbours_all_finished"], c
        assert c["victim_out_of_its_slot_at_cancelled"] == n and c["cells_in_use_are_the_neighbours"] == n, c

    forced = model["forced_cancel"]
    assert forced["n"] == 1 and forced["codes"] == {"CANCELLED": 1} and forced["forced"] == 1
    assert forced["client_ms"]["p50"] >= forced["cancel_deadline_ms"]  # the deadline passed before the kill

    text = md.read_text()
    assert text in done.stdout
    assert "| synthetic-tiny | cpu |" in text and "| synthetic-tiny | forced | 1 |" in text
    assert "| synthetic-tiny | " in text.split("Slots (`bench.slots`)")[1]
    assert "No problems found." in text
