"""Each scenario as the run calls it: the rig and its settings in, a block of the report out."""

from __future__ import annotations

from typing import Any, Callable

from bench.harness import cancel, memory, neighbour, overhead, prompts, throughput
from bench.harness.cpu import CpuProbe
from bench.harness.quiet import QuietGuard
from bench.harness.rig import Rig

Progress = Callable[[str], None]
# Prompt numbers per use, so that no two requests of a run share a prompt.
DECODE_CANCEL, DECODE_PROBE, PEER_DECODE, PEER_DECODE_PROBE = 2000, 3000, 4000, 5000
PROMPT_CANCEL, PROMPT_PROBE, PEER_PROMPT, PEER_PROMPT_PROBE = 6000, 7000, 8000, 9000
MAX_TOKENS_CANCELLED = 512  # more than a decode cancel lets it produce
MAX_TOKENS_LONG = 16


def stream(rig: Rig, guard: QuietGuard | None, progress: Progress) -> dict[str, Any]:
    s = rig.settings
    return throughput.streaming(
        rig.sides,
        rounds=s.rounds,
        max_tokens=s.max_tokens,
        prompt=prompts.story,
        settle_s=s.settle_s,
        cpu={"worker": CpuProbe(rig.pid), "peer": CpuProbe(rig.peer_pid), "llama-server": CpuProbe(rig.llama_server_pid)},
        guard=guard,
        progress=progress,
    )


def ttft(rig: Rig, guard: QuietGuard | None, progress: Progress) -> dict[str, Any]:
    s = rig.settings
    return throughput.first_token(
        rig.sides, samples=s.ttft_samples, prompt=prompts.story, settle_s=s.settle_s, guard=guard, progress=progress
    )


def cancel_decode(rig: Rig, guard: QuietGuard | None, progress: Progress) -> dict[str, Any]:
    s, client, peer, story = rig.settings, rig.client, rig.peer, prompts.story
    return {
        "after_tokens": s.cancel_after,
        **_cancels(
            rig,
            guard,
            progress,
            "decode",
            count=s.cancels,
            probe=DECODE_PROBE,
            cancel_one=lambda i: client.cancel_after_tokens(
                story(DECODE_CANCEL + i), s.cancel_after, MAX_TOKENS_CANCELLED
            ),
            peer_count=s.peer_cancels,
            peer_probe=PEER_DECODE_PROBE,
            disconnect_one=lambda i, nxt: peer.disconnect_after_tokens(
                story(PEER_DECODE + i), s.cancel_after, MAX_TOKENS_CANCELLED, nxt
            ),
        ),
    }


def cancel_prompt(rig: Rig, guard: QuietGuard | None, progress: Progress) -> dict[str, Any]:
    s, client, peer = rig.settings, rig.client, rig.peer
    delay = s.prompt_cancel_delay_s

    def long(n: int) -> str:
        return prompts.long_prompt(n, s.long_prompt_repeat)

    return {
        "delay_ms": delay * 1000.0,
        **_cancels(
            rig,
            guard,
            progress,
            "prompt",
            count=s.prompt_cancels,
            probe=PROMPT_PROBE,
            cancel_one=lambda i: client.cancel_after_delay(long(PROMPT_CANCEL + i), delay, MAX_TOKENS_LONG),
            peer_count=s.peer_prompt_cancels,
            peer_probe=PEER_PROMPT_PROBE,
            disconnect_one=lambda i, nxt: peer.disconnect_after_delay(long(PEER_PROMPT + i), delay, MAX_TOKENS_LONG, nxt),
        ),
    }


def _cancels(
    rig: Rig,
    guard: QuietGuard | None,
    progress: Progress,
    during: str,
    *,
    count: int,
    probe: int,
    cancel_one: Callable[[int], Any],
    peer_count: int,
    peer_probe: int,
    disconnect_one: Callable[[int, str], Any],
) -> dict[str, Any]:
    """The worker's cancels during `during` and, with a peer, the peer's disconnects; `probe`
    and `peer_probe`: where the prompt numbers of their first-token probes start."""

    def rounds(n: int, first: int, label: str) -> cancel.Rounds:
        return cancel.Rounds(
            count=n,
            probe_prompt=lambda i: prompts.story(first + i),
            settle_s=rig.settings.settle_s,
            label=label,
            guard=guard,
            progress=progress,
        )

    out = {"worker": cancel.worker_cancels(rig.client, rounds(count, probe, f"cancel during {during}"), cancel_one)}
    if rig.peer is not None:
        peer_rounds = rounds(peer_count, peer_probe, f"peer disconnect during {during}")
        out["peer"] = cancel.peer_disconnects(rig.peer, peer_rounds, disconnect_one)
    return out


def check_overhead(rig: Rig, guard: QuietGuard | None, progress: Progress) -> dict[str, Any]:
    s, w = rig.settings, rig.worker
    return overhead.measure(
        overhead.OverheadSettings(
            model=rig.model,
            n_ctx=w.n_ctx,
            n_threads=w.threads,
            prefill_chunk=w.prefill_chunk,
            gpu_device=w.gpu_device if rig.gpu else None,
            tokens=s.overhead_tokens,
            rounds=s.overhead_rounds,
            extra_buffers=bool(rig.cpu_extra_buffers["enabled"]),
        ),
        guard,
    )


def resident_memory(rig: Rig, guard: QuietGuard | None, progress: Progress) -> dict[str, Any]:
    s = rig.settings
    if rig.pid is None:
        rig.notes.append("no worker pid (--worker-pid): no resident-memory figures")
    probe = memory.MemoryProbe(
        rig.pid, rig.worker.gpu_device if rig.gpu else None, pci_bus_id=(rig.health.get("gpu") or {}).get("pci_bus_id")
    )
    return memory.run(
        rig.client,
        probe,
        prompt=prompts.story,
        cycles=s.cycles,
        first=s.first_cycles,
        settle_s=s.settle_s,
        progress=progress,
    )


# name on the command line → (key in the report, runner, whether its samples are guarded)
RUNNERS: dict[str, tuple[str, Callable[[Rig, QuietGuard | None, Progress], dict[str, Any]], bool]] = {
    "stream": ("stream", stream, True),
    "ttft": ("ttft", ttft, True),
    "cancel-decode": ("cancel_decode", cancel_decode, True),
    "cancel-prompt": ("cancel_prompt", cancel_prompt, True),
    "overhead": ("overhead", check_overhead, True),
    "memory": ("memory", resident_memory, False),  # counts bytes, not time
    "neighbours": ("neighbours", lambda rig, guard, progress: neighbour.beside_neighbours(rig, progress), False),
}
