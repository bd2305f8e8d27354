"""The figures side by side: the worker against its baselines, as ratios and differences.

"Best bare loop" is the bare loop at its best thread count for that figure
(most tokens/s, least time to first token). Each comparison comes two ways: of
the medians, and paired (the median of the round-by-round ratio or
difference), which is the steadier of the two on a machine whose speed drifts.
"""

from __future__ import annotations

from typing import Any

from operator import sub, truediv

from bench.harness.stats import difference, percentile, ratio


def _p50(block: dict[str, Any] | None, key: str) -> float | None:
    if not block or key not in block:
        return None
    return block[key].get("p50")


def _cpu(results: dict[str, Any], side: str, key: str) -> float | None:
    return ((results.get(side) or {}).get("cpu_us_per_token") or {}).get(key)


def _rounds(results: dict[str, Any], side: str | None, key: str) -> list[float] | None:
    return (results.get(side) or {}).get(key) if side else None


def best_bare(results: dict[str, Any], key: str, *, highest: bool) -> tuple[str | None, float | None]:
    """The bare side with the best median of `key`, and that median."""
    candidates = [
        (name, _p50(block, key))
        for name, block in results.items()
        if name.startswith("bare@") and _p50(block, key) is not None
    ]
    if not candidates:
        return None, None
    pick = max if highest else min
    return pick(candidates, key=lambda c: c[1])


def paired(a: list[float] | None, b: list[float] | None, op) -> float | None:
    """The median over rounds of op(a_round, b_round): samples taken seconds apart, so a
    change in machine load between rounds cancels out."""
    if not a or not b:
        return None
    values = sorted(op(x, y) for x, y in zip(a, b))
    return round(percentile(values, 50), 3)


def comparisons(scenarios: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    stream = scenarios.get("stream")
    if stream:
        worker = _p50(stream.get("worker"), "tokens_per_s")
        bare_name, bare = best_bare(stream, "tokens_per_s", highest=True)
        out["stream"] = {
            "worker_tokens_per_s": worker,
            "best_bare": bare_name,
            "best_bare_tokens_per_s": bare,
            "peer_tokens_per_s": _p50(stream.get("peer"), "tokens_per_s"),
            "worker_over_best_bare": ratio(worker, bare),
            "worker_over_peer": ratio(worker, _p50(stream.get("peer"), "tokens_per_s")),
            "worker_over_best_bare_paired": paired(
                _rounds(stream, "worker", "per_round"), _rounds(stream, bare_name, "per_round"), truediv
            ),
            "worker_over_peer_paired": paired(
                _rounds(stream, "worker", "per_round"), _rounds(stream, "peer", "per_round"), truediv
            ),
            "worker_over_llama_server_paired": paired(
                _rounds(stream, "worker", "per_round"), _rounds(stream, "llama-server", "per_round"), truediv
            ),
            # All the front's threads against the peer's main thread alone, per streamed token.
            "worker_process_cpu_over_peer_loop_cpu": ratio(
                _cpu(stream, "worker", "worker_process_us"), _cpu(stream, "peer", "event_loop_us")
            ),
        }
    ttft = scenarios.get("ttft")
    if ttft:
        worker = _p50(ttft.get("worker"), "ttft_ms")
        bare_name, bare = best_bare(ttft, "ttft_ms", highest=False)
        peer = _p50(ttft.get("peer"), "ttft_ms")
        out["ttft"] = {
            "worker_ms": worker,
            "best_bare": bare_name,
            "best_bare_ms": bare,
            "peer_ms": peer,
            "worker_minus_best_bare_ms": difference(worker, bare),
            "worker_minus_peer_ms": difference(worker, peer),
            "worker_over_best_bare": ratio(worker, bare),
            "worker_minus_best_bare_ms_paired": paired(
                _rounds(ttft, "worker", "per_sample"), _rounds(ttft, bare_name, "per_sample"), sub
            ),
        }
    for name in ("cancel_decode", "cancel_prompt"):
        block = scenarios.get(name)
        if not block:
            continue
        worker_free = (block.get("worker") or {}).get("free_after_cancel", {}).get("extra_ms", {}).get("p50")
        peer_free = (block.get("peer") or {}).get("free_after_cancel", {}).get("extra_ms", {}).get("p50")
        out[name] = {
            "worker_free_after_cancel_ms": worker_free,
            "peer_free_after_cancel_ms": peer_free,
            "worker_minus_peer_free_ms": difference(worker_free, peer_free),
        }
    return out
