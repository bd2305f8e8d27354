"""VRAM readings through NVML, sampled off the request path.

`/health` must answer from cached state (no NVML or CUDA call per request), so a
background thread samples and readers take the last sample.

NVML is asked only about an NVIDIA device the engine actually uses: the caller
constructs a probe only when the engine's backend is CUDA, and names the device
the way the engine sees it (PCI bus id, or UUID). NVML's own device index is not
CUDA's (CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER renumber devices), so an index
is used only when nothing better is known.

Every figure carries its scope: what the engine process holds ("process"), or,
when NVML does not list that process (PID namespaces: NVML reports host pids, a
container sees its own), what the whole device has in use ("device").

Nothing here raises: no library, no driver, no such device give a probe with
`available = False` and a `reason`; a failing NVML call degrades that sample.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Scope = Literal["process", "device"]
MatchedBy = Literal["pci_bus_id", "uuid", "index"]

# NVML's "value not available" for 64-bit counters (e.g. usedGpuMemory under WDDM
# or without permission); older bindings pass it through instead of None.
NVML_VALUE_NOT_AVAILABLE = 2**64 - 1

# Tried newest first; the first that the driver and bindings both have is kept.
_PROCESS_LIST_CALLS: dict[str, tuple[str, ...]] = {
    "compute": (
        "nvmlDeviceGetComputeRunningProcesses_v3",
        "nvmlDeviceGetComputeRunningProcesses_v2",
        "nvmlDeviceGetComputeRunningProcesses",
    ),
    "graphics": (
        "nvmlDeviceGetGraphicsRunningProcesses_v3",
        "nvmlDeviceGetGraphicsRunningProcesses_v2",
        "nvmlDeviceGetGraphicsRunningProcesses",
    ),
}
# NVML_ERROR_FUNCTION_NOT_FOUND, NVML_ERROR_ARGUMENT_VERSION_MISMATCH: this call is
# missing or too new for the driver, an older one may work. Literal fallbacks for
# bindings that lack the constants.
_TRY_OLDER_CODES = (13, 25)

# Where process status files are read; a module attribute so tests can point it elsewhere.
_PROC_ROOT = "/proc"

_PCI_RE = re.compile(r"^(?:([0-9a-f]{1,8}):)?([0-9a-f]{1,2}):([0-9a-f]{1,2})\.([0-7])$")


@dataclass(frozen=True, slots=True)
class VramSample:
    """One reading of the device's memory and of the engine process's share of it."""

    process_bytes: int | None  # what the process holds; None: not listed by NVML, or its figure unknown
    device_used_bytes: int
    device_total_bytes: int
    scope: Scope  # which figure `reported_bytes` is

    @property
    def reported_bytes(self) -> int:
        """The figure the worker reports: the process's when known, else the device's."""
        if self.scope == "process" and self.process_bytes is not None:
            return self.process_bytes
        return self.device_used_bytes


def normalize_pci_bus_id(bus_id: str | bytes | None) -> str | None:
    """`domain:bus:device.function` in one spelling (8-digit domain, lowercase), or None.

    ggml writes "0000:41:00.0", NVML "00000000:41:00.0"; a missing domain means 0.
    """
    if bus_id is None:
        return None
    if isinstance(bus_id, bytes):
        bus_id = bus_id.decode(errors="replace")
    m = _PCI_RE.match(bus_id.strip().strip("\x00").lower())
    if m is None:
        return None
    domain, bus, device, function = m.groups()
    return f"{int(domain or '0', 16):08x}:{int(bus, 16):02x}:{int(device, 16):02x}.{int(function, 16):x}"


def normalize_uuid(uuid: str | bytes | None) -> str | None:
    """A GPU UUID without its "GPU-" prefix, dashes or case, or None when empty.

    NVML writes "GPU-1a2b…-…"; CUDA's 16 raw bytes are often printed as bare hex.
    """
    if uuid is None:
        return None
    if isinstance(uuid, bytes):
        uuid = uuid.decode(errors="replace")
    u = uuid.strip().strip("\x00").lower()
    if u.startswith("gpu-"):
        u = u[4:]
    u = u.replace("-", "")
    return u or None


def pid_aliases(pid: int) -> frozenset[int]:
    """`pid` and the ids the same process has in other PID namespaces.

    /proc/<pid>/status's NSpid line lists the process's id in each namespace from
    the one this /proc belongs to inwards; when that is the host's, the first id is
    what NVML reports. Inside a container the host's id is not visible at all.
    """
    ids = {pid}
    try:
        with open(os.path.join(_PROC_ROOT, str(pid), "status"), encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    ids.update(int(tok) for tok in line.split()[1:] if tok.isdigit())
                    break
    except OSError:
        pass
    return frozenset(ids)


def _decode(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _known_bytes(value: Any) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    return None if n < 0 or n >= NVML_VALUE_NOT_AVAILABLE else n


class NvmlProbe:
    """One NVIDIA GPU through NVML; `available` is False (with a `reason`) when it cannot be asked.

    Name the device as the engine sees it: `pci_bus_id` (preferred) or `uuid`.
    `index` is NVML's index and is used only when neither is given; it is also
    accepted positionally, as `NvmlProbe(0)`, for older callers.
    """

    def __init__(
        self,
        index: int | None = None,
        *,
        pci_bus_id: str | None = None,
        uuid: str | None = None,
    ) -> None:
        self.available = False
        self.reason: str | None = None
        self.name: str | None = None
        self.matched_by: MatchedBy | None = None
        self.pci_bus_id: str | None = None  # as NVML spells it
        self._nvml: Any = None
        self._handle: Any = None
        # Process-list call per kind once known: its name, or "" when none works.
        self._process_calls: dict[str, str | None] = {kind: None for kind in _PROCESS_LIST_CALLS}
        try:
            self._open(index, pci_bus_id, uuid)
        except Exception as e:  # the constructor never raises; a bug here means "no readings"
            self._fail(f"nvml: {type(e).__name__}: {e}")

    @classmethod
    def disabled(cls, reason: str) -> NvmlProbe:
        """A probe that asks nothing, e.g. for a CPU backend or a non-NVIDIA GPU."""
        probe = cls()
        probe.reason = reason
        return probe

    def _fail(self, reason: str) -> None:
        self.available = False
        self.reason = reason
        self._handle = None
        self.matched_by = None

    def _open(self, index: int | None, pci_bus_id: str | None, uuid: str | None) -> None:
        if pci_bus_id is None and uuid is None and index is None:
            self._fail("nvml: no device named")
            return
        want_pci = normalize_pci_bus_id(pci_bus_id) if pci_bus_id is not None else None
        want_uuid = normalize_uuid(uuid) if uuid is not None else None
        if pci_bus_id is not None and want_pci is None and want_uuid is None:
            self._fail(f"nvml: unreadable PCI bus id {pci_bus_id!r}")
            return
        if uuid is not None and want_uuid is None and want_pci is None:
            self._fail(f"nvml: unreadable UUID {uuid!r}")
            return
        try:
            import pynvml
        except ImportError:
            self._fail("nvml: library not installed")
            return
        try:
            pynvml.nvmlInit()
        except Exception as e:
            self._fail(f"nvml: init failed ({_decode(e) or type(e).__name__})")
            return
        self._nvml = pynvml

        if want_pci is not None:
            self._handle = self._find_by_pci(want_pci)
            if self._handle is not None:
                self.matched_by = "pci_bus_id"
        if self._handle is None and want_uuid is not None:
            self._handle = self._find_by_uuid(want_uuid)
            if self._handle is not None:
                self.matched_by = "uuid"
        if self._handle is None and want_pci is None and want_uuid is None and index is not None:
            try:
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                self.matched_by = "index"
            except Exception as e:
                self._fail(f"nvml: no device with index {index} ({_decode(e)})")
                return
        if self._handle is None:
            wanted = " or ".join(
                part
                for part in (
                    f"PCI bus id {pci_bus_id}" if want_pci else "",
                    f"UUID {uuid}" if want_uuid else "",
                )
                if part
            )
            self._fail(f"nvml: no device with {wanted}")
            return

        self.available = True
        self.pci_bus_id = self._bus_id_of(self._handle)
        try:
            self.name = _decode(pynvml.nvmlDeviceGetName(self._handle))
        except Exception:
            self.name = None  # the name is for display; readings still work

    def _bus_id_of(self, handle: Any) -> str | None:
        try:
            return _decode(self._nvml.nvmlDeviceGetPciInfo(handle).busId)
        except Exception:
            return None

    def _handles(self) -> list[Any]:
        nvml = self._nvml
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except Exception:
            return []
        handles = []
        for i in range(count):
            try:
                handles.append(nvml.nvmlDeviceGetHandleByIndex(i))
            except Exception:
                continue  # e.g. a device this container may not open: not ours either
        return handles

    def _find_by_pci(self, want: str) -> Any:
        # NVML's own lookup first; it parses either domain width. Then every device,
        # for bindings or drivers without it.
        try:
            handle = self._nvml.nvmlDeviceGetHandleByPciBusId(want.upper())
            if normalize_pci_bus_id(self._bus_id_of(handle)) in (want, None):
                return handle
        except Exception:
            pass
        for handle in self._handles():
            if normalize_pci_bus_id(self._bus_id_of(handle)) == want:
                return handle
        return None

    def _find_by_uuid(self, want: str) -> Any:
        for handle in self._handles():
            try:
                if normalize_uuid(self._nvml.nvmlDeviceGetUUID(handle)) == want:
                    return handle
            except Exception:
                continue
        return None

    def sample(self, pid: int | None = None) -> VramSample | None:
        """The device's memory, and what process `pid` (default: this one) holds on it.

        None only when the probe is unavailable or the device's memory cannot be read;
        a failing process list gives `process_bytes` None and scope "device".
        """
        if not self.available:
            return None
        try:
            mem = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
            used, total = int(mem.used), int(mem.total)
        except Exception:
            return None
        try:
            mine = self._process_bytes(pid_aliases(os.getpid() if pid is None else pid))
        except Exception:
            mine = None
        return VramSample(mine, used, total, "process" if mine is not None else "device")

    def _process_bytes(self, pids: frozenset[int]) -> int | None:
        # A process with compute and graphics contexts is listed in both with the same
        # figure, and all its namespace ids are one process: the largest, not the sum.
        found: int | None = None
        for kind in _PROCESS_LIST_CALLS:
            for proc in self._process_list(kind) or ():
                if getattr(proc, "pid", None) in pids:
                    n = _known_bytes(getattr(proc, "usedGpuMemory", None))
                    if n is not None and (found is None or n > found):
                        found = n
        return found

    def _process_list(self, kind: str) -> list[Any] | None:
        """The device's processes of `kind`, or None when NVML will not say."""
        known = self._process_calls[kind]
        if known == "":
            return None
        names = (known,) if known is not None else _PROCESS_LIST_CALLS[kind]
        for name in names:
            fn = getattr(self._nvml, name, None)
            if fn is None:
                continue  # bindings too old for this version
            try:
                procs = list(fn(self._handle))
            except Exception as e:
                if self._call_missing(e):
                    continue
                # A failure an older call would share (permission, GPU lost): retry next sample.
                return None
            self._process_calls[kind] = name
            return procs
        if known is not None:
            self._process_calls[kind] = None  # the kept call stopped working: search again next time
        else:
            self._process_calls[kind] = ""
        return None

    def _call_missing(self, e: Exception) -> bool:
        """Whether `e` says this call is missing or too new for the driver, so an older one may work."""
        # pynvml's unversioned wrappers turn "function not found" into NVMLLibraryMismatchError.
        if type(e).__name__ == "NVMLLibraryMismatchError":
            return True
        codes = (
            getattr(self._nvml, "NVML_ERROR_FUNCTION_NOT_FOUND", _TRY_OLDER_CODES[0]),
            getattr(self._nvml, "NVML_ERROR_ARGUMENT_VERSION_MISMATCH", _TRY_OLDER_CODES[1]),
        )
        return getattr(e, "value", None) in codes


class VramMonitor:
    """Samples a probe every `interval_sec` on a daemon thread; readers take the last sample."""

    def __init__(
        self, probe: NvmlProbe, interval_sec: float = 1.0, *, pid: Callable[[], int | None] = lambda: None
    ) -> None:
        """`pid`: whose VRAM to read (the engine process, which holds the model); None: this one."""
        self.probe = probe
        self.interval_sec = interval_sec
        self._pid = pid
        # One reference, replaced whole: read it once to get a figure and its scope together.
        self.latest: VramSample | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vram-monitor", daemon=True)
        self.refresh()

    def start(self) -> None:
        if self.probe.available and not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()

    def refresh(self) -> VramSample | None:
        try:
            pid = self._pid()
        except Exception:
            pid = None  # e.g. the engine is being replaced: read this process, scope says what it is
        self.latest = self.probe.sample(pid)
        return self.latest

    def used_bytes(self) -> int | None:
        """The reported figure (see `scope`), or None without a reading."""
        s = self.latest
        return s.reported_bytes if s is not None else None

    def scope(self) -> Scope | None:
        """ "process" or "device" for `used_bytes`, None without a reading."""
        s = self.latest
        return s.scope if s is not None else None

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(1.0, self.interval_sec))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_sec):
            self.refresh()
