"""One benchmark run: set up the rig, run the chosen scenarios in order, assemble the report."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Callable

from bench.harness import machine, prompts
from bench.harness.compare import comparisons
from bench.harness.rig import Rig
from bench.harness.scenarios import RUNNERS
from bench.harness.llama_server import describe
from bench.harness.settings import SCENARIOS, BenchSettings
from bench.harness.targets import check

SCHEMA = "worker-orcd-bench/1"
Progress = Callable[[str], None]


def run(settings: BenchSettings, progress: Progress = lambda _: None) -> dict[str, Any]:
    with Rig(settings, progress) as rig:
        report = _header(rig)
        for name in (n for n in SCENARIOS if n in settings.scenarios):  # always in the same order
            key, scenario, guarded = RUNNERS[name]
            guard = rig.guard() if guarded else None
            before = machine.load_average()
            progress(f"{name}: running (load average {before})")
            t0 = time.perf_counter()
            report["scenarios"][key] = scenario(rig, guard, progress)
            report["conditions"][key] = {
                "seconds": round(time.perf_counter() - t0, 1),
                "load_before": before,
                "load_after": machine.load_average(),
                "quiet": guard.report() if guard is not None else None,
            }
        report["notes"] = rig.notes
    report["machine"]["load_average_at_end"] = machine.load_average()
    report["comparisons"] = comparisons(report["scenarios"])
    report["targets"] = check(report)
    return report


def _header(rig: Rig) -> dict[str, Any]:
    h = rig.health
    gpu_name = (h.get("gpu") or {}).get("description") if rig.gpu else None
    return {
        "schema": SCHEMA,
        "machine": machine.describe(gpu_name, cpu_extra_buffers=rig.cpu_extra_buffers),
        "model": {
            "file": rig.model.name,
            "size_bytes": rig.model.stat().st_size if rig.model.is_file() else None,
            "quant": h.get("quant_kind"),
            "backend": h.get("backend"),
            "n_ctx": h.get("context_length"),
        },
        "settings": _settings_view(rig),
        "prompt_tokens": _prompt_tokens(rig),
        "scenarios": {},
        "conditions": {},
    }


def _prompt_tokens(rig: Rig) -> dict[str, int] | None:
    if rig.bare is None:
        return None
    tokenize = rig.bare.llm.tokenize
    long = prompts.long_prompt(0, rig.settings.long_prompt_repeat)
    return {
        "story": len(tokenize(prompts.story(0).encode(), add_bos=True, special=True)),
        "long": len(tokenize(long.encode(), add_bos=True, special=True)),
    }


def _settings_view(rig: Rig) -> dict[str, Any]:
    s = rig.settings
    view = asdict(s)
    view["model"] = rig.model.name
    view["json_path"] = None
    view["api_token"] = "***" if s.api_token else None
    view["worker"] = asdict(rig.worker)
    view["worker_started_here"] = s.url is None
    view["bare_threads"] = list(rig.bare_threads)
    view["llama_server"] = describe(s.llama_server) if s.llama_server is not None else None
    return view
