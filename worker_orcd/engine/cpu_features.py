"""Whether the engine may use its extra CPU buffer types: checked, not assumed.

llama.cpp's CPU backend offers "extra buffer types" that lay weights out for
special instructions: AMX tiles on recent Xeons, interleaved blocks for
AVX2/AVX-512/NEON (CPU_REPACK). A CPU may advertise an instruction set that the
system does not let a process use (AMX on some VMs); the first such
instruction then kills the process with SIGILL, on the first prompt long
enough to take that path. Nothing short of running it tells, so a short-lived
child process does: it loads the model with the extra buffer types and decodes
one batch of PROBE_TOKENS tokens. If a signal or the timeout ends it, the worker
loads the model without them; the worker itself never runs the risky code.

In auto mode the verdict is cached in the state dir (`cpu-extra-buffers.json`),
so a restart does not probe again. `python -m worker_orcd.engine.cpu_features`
is the child.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from worker_orcd.engine import gguf
from worker_orcd.engine.parent import die_with_parent

MODES = ("auto", "on", "off")
CACHE_FILE = "cpu-extra-buffers.json"
CACHE_SCHEMA = 1
CACHE_ENTRIES = 32  # models × engine versions one state dir remembers
# Enough tokens for the batched matrix kernels (AMX's among them) to run; a
# prompt of 16 tokens already takes that path.
PROBE_TOKENS = 64
# Loading reads (and repacks) every weight: allow for the model's size, since a
# hang, not a slow load, is what the timeout is for.
PROBE_TIMEOUT_BASE_S = 60.0
PROBE_TIMEOUT_PER_GIB_S = 30.0
AMX_FLAGS = ("amx_tile", "amx_int8", "amx_bf16", "amx_fp16", "amx_complex")


def cpu_model() -> str:
    """The CPU's model name, as the kernel reports it."""
    for key in ("model name", "Hardware", "cpu model"):
        value = _cpuinfo_field(key)
        if value:
            return value
    return platform.processor() or platform.machine()


def cpu_flags(names: tuple[str, ...] = AMX_FLAGS) -> tuple[str, ...]:
    """Which of `names` the CPU advertises (its /proc/cpuinfo flags)."""
    flags = set((_cpuinfo_field("flags") or "").split())
    return tuple(n for n in names if n in flags)


def _cpuinfo_field(key: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, sep, value = line.partition(":")
                if sep and name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return None


# -- the verdict and how the worker reports it ------------------------------------------


@dataclass(frozen=True)
class Decision:
    mode: str  # auto | on | off
    enabled: bool
    source: str  # flag | probe | cache
    reason: str | None = None  # why they are off, when a probe said so
    buffer_types: tuple[str, ...] = ()  # what the CPU backend offers, when known
    cpu_flags: tuple[str, ...] = ()
    probe_ms: float | None = None
    cache_path: str | None = None

    @property
    def failed_probe(self) -> bool:
        """Off because a probe (now or cached) said so: worth a warning at every start."""
        return not self.enabled and self.source != "flag"

    def health(self) -> dict[str, Any]:
        return {"mode": self.mode, "enabled": self.enabled, "source": self.source, "reason": self.reason}

    def log(self) -> None:
        """One line: a warning when a probe turned them off, else info."""
        from worker_orcd.log import log_event

        fields: dict[str, Any] = {
            **self.health(),
            "buffer_types": list(self.buffer_types),
            "cpu": cpu_model(),
            "cpu_flags": list(self.cpu_flags),
        }
        if self.probe_ms is not None:
            fields["probe_ms"] = self.probe_ms
        if self.cache_path is not None:
            fields["cache"] = self.cache_path
        if not self.failed_probe:
            log_event("cpu_extra_buffers", **fields)
            return
        feature = ", ".join(self.buffer_types) or "extra buffer types"
        advertised = f"; this CPU advertises {', '.join(self.cpu_flags)}" if self.cpu_flags else ""
        earlier = (
            f" (found at an earlier start; delete {self.cache_path} to check again)" if self.source == "cache" else ""
        )
        fields["message"] = (
            f"the engine's extra CPU buffer types ({feature}) are off: {self.reason}{advertised}{earlier}. "
            "The engine falls back to its plain CPU kernels; prompt evaluation may be slower on this CPU. "
            "Start with --cpu-extra-buffers on to force them, or --cpu-extra-buffers off to skip this probe."
        )
        log_event("cpu_extra_buffers", logging.WARNING, **fields)


def decide(
    mode: str,
    *,
    model_path: Path,
    state_dir: Path,
    threads: int,
    gpu_device: int | None,
    timeout: float | None = None,
) -> Decision:
    """The flag's answer, else the cached verdict for this CPU, engine and model type, else a probe."""
    if mode not in MODES:
        raise ValueError(f"cpu extra buffers: expected one of {', '.join(MODES)}, got {mode!r}")
    if mode != "auto":
        return Decision(mode, mode == "on", "flag")
    cache = VerdictCache(Path(state_dir) / CACHE_FILE)
    key = cache_key(model_path, offload=_offloads(gpu_device))
    cached = cache.get(key)
    if cached is not None:
        reason, types = cached.get("reason"), cached.get("buffer_types")
        return Decision(
            mode,
            cached["enabled"],
            "cache",
            reason if isinstance(reason, str) else None,
            tuple(str(t) for t in types) if isinstance(types, list) else (),
            cpu_flags(),
            cache_path=str(cache.path),
        )
    result = probe(model_path, threads=threads, gpu_device=gpu_device, timeout=timeout)
    if result.conclusive:
        cache.put(key, result)
    return Decision(
        mode,
        result.enabled,
        "probe",
        result.reason,
        result.buffer_types,
        cpu_flags(),
        probe_ms=result.ms,
        cache_path=str(cache.path),
    )


def _offloads(gpu_device: int | None) -> bool:
    from worker_orcd.engine import devices

    try:
        return devices.pick(gpu_device) is not None
    except devices.NoSuchDevice:  # the model load says so, with the devices there are
        return False


# -- the cache --------------------------------------------------------------------------


def cache_key(model_path: Path, *, offload: bool) -> dict[str, str]:
    """What the verdict depends on.

    The CPU model and the kernel decide whether the instructions may run; the
    engine version decides which kernels exist and when they are chosen; the
    model's file type decides whether they are chosen at all, since a kernel
    serves only some quantisations (AMX: Q4_0, Q4_1, Q8_0, some K-quants,
    IQ4_XS), so a verdict for one file type says nothing about another.
    Offloaded layers never reach the CPU kernels, hence the backend.
    """
    return {
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "llama_cpp_python": _version("llama-cpp-python"),
        "file_type": file_type_name(gguf.file_type(Path(model_path))),
        "backend": "gpu" if offload else "cpu",
    }


def file_type_name(value: int | None) -> str:
    if value is None:
        return "unknown"
    import llama_cpp

    for name in dir(llama_cpp):
        if name.startswith("LLAMA_FTYPE_") and getattr(llama_cpp, name) == value:
            return name[len("LLAMA_FTYPE_") :]
    return str(value)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


class VerdictCache:
    """Verdicts by key in one small JSON file; anything unreadable counts as no verdict."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, key: dict[str, str]) -> dict[str, Any] | None:
        for entry in self._entries():
            if entry["key"] == key:
                return entry
        return None

    def put(self, key: dict[str, str], result: ProbeResult) -> None:
        entry = {
            "key": key,
            "enabled": result.enabled,
            "reason": result.reason,
            "buffer_types": list(result.buffer_types),
            "probed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        entries = [e for e in self._entries() if e.get("key") != key] + [entry]
        data = {"schema": CACHE_SCHEMA, "entries": entries[-CACHE_ENTRIES:]}
        # Written whole and renamed: a reader never meets half a file.
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, indent=2) + "\n")
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)  # the cache saves time, nothing more: probe next time

    def _entries(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        if not isinstance(data, dict) or data.get("schema") != CACHE_SCHEMA:
            return []
        entries = data.get("entries")
        if not isinstance(entries, list):
            return []
        # Only whole entries; put() drops the rest.
        return [
            e
            for e in entries
            if isinstance(e, dict) and isinstance(e.get("key"), dict) and isinstance(e.get("enabled"), bool)
        ]


# -- the probe, parent side -------------------------------------------------------------


@dataclass(frozen=True)
class ProbeResult:
    enabled: bool
    conclusive: bool  # passed, or killed by a signal or the clock: worth caching
    reason: str | None = None
    buffer_types: tuple[str, ...] = ()
    ms: float = 0.0


def probe_timeout(model_path: Path) -> float:
    try:
        gib = Path(model_path).stat().st_size / 2**30
    except OSError:
        gib = 0.0
    return PROBE_TIMEOUT_BASE_S + PROBE_TIMEOUT_PER_GIB_S * gib


def probe(model_path: Path, *, threads: int, gpu_device: int | None, timeout: float | None = None) -> ProbeResult:
    """Run the child and read its fate: exit 0, killed by a signal, out of time, or failed."""
    timeout = probe_timeout(model_path) if timeout is None else timeout
    cmd = [sys.executable, "-m", __name__, "--model", str(model_path)]
    cmd += ["--threads", str(threads), "--parent", str(os.getpid())]
    if gpu_device is not None:
        cmd += ["--gpu-device", str(gpu_device)]
    started = time.perf_counter()
    try:
        child = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    except OSError as exc:
        return ProbeResult(False, False, f"the probe could not start: {exc}")
    timed_out = False
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        child.kill()
        out, err = child.communicate()
    ms = round((time.perf_counter() - started) * 1000, 1)
    report = ChildReport.parse(out)
    types = report.buffer_types
    if timed_out:
        reason = f"a test process that used them did not finish within {timeout:g} s ({report.stage})"
        return ProbeResult(False, True, reason, types, ms)
    if child.returncode == 0 and report.stage == "done":
        return ProbeResult(True, True, None, types, ms)
    if child.returncode < 0:
        name = _signal_name(-child.returncode)
        reason = f"a test process that used them was killed by {name} ({report.stage})"
        return ProbeResult(False, True, reason, types, ms)
    last = (err.strip().splitlines() or ["no message"])[-1][:300]
    reason = f"the probe failed with exit status {child.returncode} ({report.stage}): {last}"
    return ProbeResult(False, False, reason, types, ms)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@dataclass
class ChildReport:
    """What the child said on stdout (JSON lines) before it ended, however it ended."""

    buffer_types: tuple[str, ...] = ()
    stage: str = "before loading the model"

    @classmethod
    def parse(cls, out: str | None) -> ChildReport:
        report = cls()
        for line in (out or "").splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if not isinstance(msg, dict):
                continue
            if isinstance(msg.get("buffer_types"), list):
                report.buffer_types = tuple(str(t) for t in msg["buffer_types"])
            if isinstance(msg.get("stage"), str):
                report.stage = msg["stage"]
        return report


# -- the probe, child side --------------------------------------------------------------

# Stages the child announces before entering them, so the parent can say where it died.
LOADING = "while loading the model"
DECODING = f"while decoding a {PROBE_TOKENS}-token batch"
DONE = "done"
PROBE_TEXT = "The quick brown fox jumps over the lazy dog, and then it runs back again. "


def _say(**msg: Any) -> None:
    print(json.dumps(msg), flush=True)


def extra_buffer_types() -> list[str] | None:
    """Names of the CPU backend's extra buffer types, from ggml's registry; None if unreachable."""
    import ctypes

    try:
        from worker_orcd.engine import devices

        lib = devices.ggml()
        device = lib.ggml_backend_dev_by_type(devices.DEVICE_CPU)
        if not device:
            return None
        reg = lib.ggml_backend_dev_backend_reg(device)
        address = lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts") if reg else None
        if not address:
            return []  # a CPU backend without the entry point has no extra buffer types
        get_extra = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(address)
        bufts = get_extra(device)
        names: list[str] = []
        while bufts and bufts[len(names)]:  # NULL-terminated
            names.append((lib.ggml_backend_buft_name(bufts[len(names)]) or b"?").decode("utf-8", "replace"))
        return names
    except (OSError, AttributeError, ImportError, ValueError):
        return None


def _decode_one_batch(model: Any, threads: int) -> int:
    import llama_cpp

    params = llama_cpp.llama_context_default_params()
    params.n_ctx = 2 * PROBE_TOKENS
    params.n_batch = params.n_ubatch = PROBE_TOKENS
    params.n_seq_max = 1
    params.n_threads = params.n_threads_batch = threads
    ctx = llama_cpp.llama_init_from_model(model.ptr, params)
    if not ctx:
        print("the probe could not make a context", file=sys.stderr)
        return 2
    try:
        tokens = model.tokenize(PROBE_TEXT * 8)
        tokens = (tokens * (PROBE_TOKENS // max(1, len(tokens)) + 1))[:PROBE_TOKENS]
        array = (llama_cpp.llama_token * PROBE_TOKENS)(*tokens)
        status = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(array, PROBE_TOKENS))
        if status != 0:
            print(f"llama_decode returned {status}", file=sys.stderr)
            return 2
        return 0
    finally:
        llama_cpp.llama_free(ctx)


def _guard_child(parent: int | None) -> None:
    """No core file per probe, and no probe left behind by a parent that died."""
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    die_with_parent()
    if parent is not None and os.getppid() != parent:
        sys.exit(3)  # the parent is gone already


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker_orcd.engine.cpu_features")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--gpu-device", type=int, default=None)
    parser.add_argument("--parent", type=int, default=None)
    args = parser.parse_args(argv)
    _guard_child(args.parent)

    from worker_orcd.engine.faults import FaultPlan
    from worker_orcd.engine.model import Model, ModelLoadError, init_backend

    fault = FaultPlan.from_env().cpu_probe
    init_backend()
    _say(buffer_types=extra_buffer_types())
    _say(stage=LOADING)
    try:
        model = Model(args.model, gpu_device=args.gpu_device, extra_buffers=True)
    except ModelLoadError as exc:
        print(exc, file=sys.stderr)
        return 1
    _say(stage=DECODING)
    if fault == "sigill":  # tests: die as a CPU without the instructions would
        signal.signal(signal.SIGILL, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGILL)
    elif fault == "hang":  # tests: never finish
        while True:
            time.sleep(3600)
    status = _decode_one_batch(model, args.threads)
    model.close()
    if status == 0:
        _say(stage=DONE)
    return status


if __name__ == "__main__":
    sys.exit(main())
