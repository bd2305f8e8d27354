"""What GET /health answers, as models: `Health` in full, `HealthSummary` to a caller without a valid token.

The record is built by `Worker.health` and trimmed per caller by
`worker_orcd.http.health`; these models declare it for the OpenAPI document and
for the tests that hold the answer to it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from worker_orcd.api.fields import JobId

NonNegative = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]
Mode = Literal["auto", "on", "off"]


class _Record(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class CpuExtraBuffers(_Record):
    """Whether the engine uses its extra CPU buffer types (AMX, repacked weights), and who decided (WO-CPU-1)."""

    mode: Mode = Field(description="The worker's `--cpu-extra-buffers`.")
    enabled: bool
    source: Literal["flag", "probe", "cache"] = Field(
        description="`flag`: on or off as told; `probe`: a child process tried them at this start; `cache`: a "
        "probe's verdict from an earlier start."
    )
    reason: str | None = Field(description="Why a probe turned them off; null otherwise.")


class EngineState(_Record):
    """The engine process, which owns the model (WO-ENGINE-1, WO-ENGINE-4)."""

    state: Literal["starting", "ready", "restarting", "failed", "stopped"] = Field(
        description="`restarting` after the engine process died or was killed; `failed` after repeated deaths "
        "(then `status` is `unhealthy`)."
    )
    pid: Positive | None = Field(description="The engine process's id; null while none runs.")
    restarts: NonNegative
    reason: str | None = Field(description="Why the engine was given up; null otherwise.")


class NvmlMatch(_Record):
    available: bool
    matched_by: Literal["pci_bus_id", "uuid", "index"] | None
    reason: str | None


class GpuDevice(_Record):
    """The GPU the engine runs on; null on the CPU (WO-GPU-2)."""

    ordinal: NonNegative
    backend: str
    name: str
    description: str
    pci_bus_id: str | None
    memory_total_bytes: NonNegative
    nvml: NvmlMatch


class PrefillChunk(_Record):
    """Prompt tokens per decode call, and how they were chosen (WO-GPU-7)."""

    tokens: Positive
    mode: Literal["auto", "fixed"]
    budget_ms: float | None
    stop_points: Literal["chunks", "graph nodes"] | None
    measured_ms: dict[str, float] | None = Field(description="Chunk size → the longest a cancel waited in it.")


class SpareContext(_Record):
    """The context made in advance and what one costs (WO-GPU-4)."""

    mode: Mode
    enabled: bool
    bytes: int | None
    memory: Literal["vram", "ram"]
    reason: str


class ThreadChoice(_Record):
    mode: Literal["auto", "fixed"]
    current: Positive
    candidates: list[Positive]
    step_ms: dict[str, float]
    switches: NonNegative


class Threads(_Record):
    """The threads llama.cpp computes with, per single-token decode and per prompt chunk, and the step times
    measured for each count (WO-THREADS-1)."""

    decode: ThreadChoice
    batch: ThreadChoice


Status = Literal["healthy", "unhealthy"]


class Slot(_Record):
    """A busy slot: the job it runs, as far as the caller may see it (WO-SLOT-1)."""

    slot: NonNegative
    job_id: JobId | None = Field(description="Null for another tenant's job (WO-AUTH-6).")
    phase: Literal["prompt", "decode", "queued", "finished"] = Field(
        description="`prompt` while its prompt is evaluated, `decode` once its tokens come."
    )
    tokens_out: NonNegative
    kv_cells: NonNegative | None = Field(
        description="The KV cells its job holds now, as the engine wrote them after its latest step (its prompt "
        "so far and its tokens); null with one slot, whose job has a context of its own (WO-SLOT-7)."
    )


class Batch(_Record):
    """The one context the slots share, with `--parallel` N > 1 (WO-SLOT-1)."""

    kv_cells_total: Positive = Field(description="N × `--n-ctx`: every slot may use the whole context.")
    kv_unified: bool = Field(description="One KV cache for every sequence (llama.cpp's `kv_unified`).")
    step_tokens: Positive = Field(
        description="The most tokens of a step that holds several jobs, which a cancel of one of them waits for: "
        "the largest whose whole decode took at most `--stop-budget-ms` at start (at most the prefill chunk). "
        "A step's prompt tokens are never fewer than its decoding jobs' tokens, so on a machine where those alone "
        "take longer a step may too; a job alone in the batch takes whole prefill chunks, stopped mid-graph "
        "(WO-SLOT-8)."
    )
    step_measured_ms: dict[str, float] | None = Field(
        description="Tokens → the milliseconds their whole decode took when `step_tokens` was chosen; null if not "
        "measured."
    )


class Health(_Record):
    # Who owns each running job, for trimming the record to a caller; never shown.
    _owners: dict[str, str] = PrivateAttr(default_factory=dict)

    def owned(self, owners: dict[str, str]) -> Health:
        """The record, knowing the tenant of each running job (by job id)."""
        self._owners = owners
        return self

    def owner_of(self, job_id: str | None) -> str | None:
        return self._owners.get(job_id) if job_id is not None else None

    status: Status
    model: str
    resident: bool
    quant_kind: str
    vram_bytes_used: NonNegative | None = Field(
        description="From NVML where the engine runs on an NVIDIA GPU; null otherwise (WO-HEALTH-2). Its scope is "
        "`vram_scope` (WO-GPU-3)."
    )
    vram_scope: Literal["process", "device"] | None = Field(
        description="`process`: the engine process's VRAM; `device`: the whole GPU's (NVML does not list the engine, "
        "e.g. in a PID namespace); null without a figure (WO-GPU-3)."
    )
    tokenizer_kind: str
    vocab_size: Positive
    context_length: Positive = Field(description="The worker's `--n-ctx`.")
    uptime_seconds: float = Field(ge=0)
    backend: str = Field(
        description="`cpu`, or the backend of the GPU the engine runs on, as llama.cpp's device registry names it "
        "(`cuda`, `metal`, `vulkan`, …; WO-GPU-2)."
    )
    gpu_device: NonNegative | None
    gpu: GpuDevice | None
    prefill_chunk: PrefillChunk
    spare_context: SpareContext | None = Field(description="Null with `--parallel` N > 1: the slots share one context.")
    flash_attn: Mode = Field(description="The worker's `--flash-attn` (WO-GPU-6).")
    threads: Threads | None
    engine_nice: int | None = Field(
        description="Nice levels the engine runs below the front (`--engine-nice`, WO-ENGINE-6)."
    )
    active_job: JobId | None = Field(
        description="The running job, when the caller may see it: its own (a tenant), any (an operator, or any "
        "caller of a worker without keys); null otherwise (WO-AUTH-6). With several slots, the first of "
        "`active_jobs`."
    )
    active_jobs: list[JobId] = Field(
        description="The running jobs the caller may see, by slot (as `active_job`; WO-AUTH-6, WO-SLOT-1)."
    )
    parallel: Positive = Field(description="The worker's `--parallel`: how many jobs the engine runs at once.")
    slots_busy: NonNegative = Field(description="How many slots hold a running job, whoever's (WO-SLOT-1).")
    slots: list[Slot] = Field(description="The busy slots, by slot (WO-SLOT-1).")
    kv_cells: NonNegative | None = Field(
        description="With `--parallel` N > 1: cells of the KV cache in use: while jobs run, the sum of their "
        "slots' `kv_cells` (WO-SLOT-7); once none runs, what is left after the latest job's cells were removed "
        "(0, WO-SLOT-3). Null with one slot, whose job's context is freed whole."
    )
    batch: Batch | None = Field(description="The slots' shared context; null with one slot.")
    queue_depth: NonNegative
    cpu_extra_buffers: CpuExtraBuffers
    engine: EngineState
    busy: bool = Field(description="Whether a job is running, whoever's it is.")
    ready: bool = Field(
        description="Whether a job sent now would be taken and run: healthy, the engine ready, and room in the queue."
    )


class HealthSummary(_Record):
    """What /health tells a caller without a valid token on a worker with keys (WO-AUTH-6)."""

    status: Status
    ready: bool = Field(description="Whether a job sent now would be taken: healthy, and room in the queue.")
