"""`python -m bench.slots --quick`, the slots' benchmark in its tiniest run, and its picture:
is the report well formed? It checks shapes and counts, never a time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]


def test_slots_bench_quick_report_and_picture(tmp_path):
    out, picture = tmp_path / "slots.json", tmp_path / "slots.png"
    cmd = [sys.executable, "-m", "bench.slots", "--quick", "--no-peer", "--no-llama-server", "--parallel", "1,4"]
    cmd += ["--threads", "1", "--json", str(out), "--plot", str(picture)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=CHECKOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["sides"] == ["worker-p1", "worker-p4"]
    for side in report["sides"]:
        for n in ("1", "2", "4", "8"):
            load = report["throughput"][side][n]
            assert load["tokens"] == int(n) * report["settings"]["max_tokens"], load  # ignore_eos: every token
            assert load["aggregate_tokens_per_s"] > 0 and load["itl_ms"]["n"] > 0
    assert report["targets"]["worker_p4_over_worker_p1_at_4"] is not None
    paired = report["targets"]["paired"]["worker_p4_over_worker_p1_at_4"]  # one round: its ratio is the median
    assert len(paired["rounds"]) == 1 and paired["median"] == paired["rounds"][0] > 0
    for hit in ("decode", "prompt"):
        cancel = report["cancel_one_of_4"][hit]
        assert cancel["all_cancelled"] and cancel["neighbours_all_finished"], cancel
        # WO-SLOT-2/7: the cancelled job holds no slot and no cell once it has said CANCELLED.
        assert cancel["victim_out_of_its_slot_at_cancelled"] == cancel["samples"] + cancel["landed_elsewhere"]
    same = report["same_answers"]
    assert same["answers"] == 8 and same["alone_twice_same"] == 8  # alone, greedy is repeatable
    assert picture.stat().st_size > 10_000 and picture.read_bytes()[:4] == b"\x89PNG"


def test_slots_bench_cancels_hold_at_one_token_steps(tmp_path):
    """A worker whose stop budget allows one token a step (a slow CPU's default): the job to
    cancel decodes while its neighbours' prompts go in beside it, one token a step, and must
    still be streaming once they all stream."""
    out = tmp_path / "slots.json"
    cmd = [sys.executable, "-m", "bench.slots", "--quick", "--no-peer", "--no-llama-server", "--parallel", ""]
    cmd += ["--worker", "worker-p4=--parallel 4 --stop-budget-ms 1", "--threads", "1", "--parts", "cancel"]
    cmd += ["--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=CHECKOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["workers"]["worker-p4"]["batch"]["step_tokens"] == 1
    for hit in ("decode", "prompt"):
        cancel = report["cancel_one_of_4"][hit]
        assert cancel["all_cancelled"] and cancel["neighbours_all_finished"], cancel
        assert cancel["samples"] + cancel["landed_elsewhere"] == 1
