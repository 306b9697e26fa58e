"""Latency summaries: percentiles of a list of samples, in milliseconds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["percentile", "summarize"]


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile ``p`` (0-100) of already sorted values (0.0 if empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def summarize(latencies_s: Sequence[float], duration_s: float) -> dict[str, Any]:
    """Throughput and latency percentiles (ms) of samples given in seconds."""
    ordered = sorted(latencies_s)
    count = len(ordered)
    ms = [v * 1000 for v in ordered]
    return {
        "requests": count,
        "duration_s": round(duration_s, 3),
        "rps": round(count / duration_s, 1) if duration_s > 0 else 0.0,
        "mean_ms": round(sum(ms) / count, 3) if count else 0.0,
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(ms[-1], 3) if ms else 0.0,
        # A coarse, chartable shape of the distribution.
        "deciles_ms": [round(percentile(ms, p), 3) for p in range(10, 101, 10)],
    }
