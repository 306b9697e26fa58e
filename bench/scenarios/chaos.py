"""chaos: two regions under injected faults, with cache-edge's promises checked after every answer.

A private PostgreSQL, a Redis per region, an origin and a node per region; 17 clients
(cached reads with ttl/swr/tags/staleIfError, uncached reads, tag purges and purge-all
with ``wait``, INSERT ... RETURNING followed by a purge and a read-back) while seeded
faults hit one at a time: kill -9 of a node, Redis stopped, flushed or its clients cut
off, the origin killed or stopped, PostgreSQL restarted. See bench/chaos/.

``--quick`` runs CI's short form (about a minute); a full run lasts 300 s of load.
``BENCH_CHAOS_SECONDS`` and ``BENCH_CHAOS_SEED`` override the duration and the seed.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from bench.chaos.run import ChaosConfig, format_report, run_chaos
from bench.context import Context
from bench.scenarios.base import Measurement, ScenarioResult, Target

__all__ = ["TITLE", "run"]

TITLE = "chaos: 2 regions under injected faults, invariants checked after every answer"
_LABELS = {
    "read": "cached probe reads (ttl, swr, staleIfError, tags)",
    "uncached": "uncached reads",
    "purge": "purges (tags, all) with wait",
    "write": "INSERT ... RETURNING, uncached",
    "readback": "read-back after write + purge",
    "recovery": "recovery probes after each repair",
}


def run(ctx: Context) -> ScenarioResult:
    seed = os.environ.get("BENCH_CHAOS_SEED")
    config = ChaosConfig.ci() if ctx.quick else ChaosConfig()
    config = dataclasses.replace(
        config,
        seed=int(seed) if seed else None,
        seconds=float(os.environ.get("BENCH_CHAOS_SECONDS", config.seconds)),
    )
    report = run_chaos(config, ctx.tmp / "chaos", step=ctx.step)
    return _result(report)


def _result(r: dict[str, Any]) -> ScenarioResult:
    result = ScenarioResult("chaos", TITLE)
    seconds = r["load_seconds"] or 1.0
    for op, label in _LABELS.items():
        lat = r["latency_ms"].get(op)
        if not lat:
            continue
        result.measurements.append(
            Measurement(
                name=op,
                label=label,
                client="aiohttp (bench/chaos)",
                rps=round(lat["count"] / seconds, 1),
                p50_ms=lat["p50"],
                p99_ms=lat["p99"],
                max_ms=lat["max"],
                requests=int(lat["count"]),
                errors=int(r["operations"]["failed"].get(op, 0)),
            )
        )
    v = r["violations"]
    result.targets.append(Target("invariant violations", "0", str(v["total"]), v["total"] == 0))
    acked = r["operations"]["writes_acknowledged"]
    lost = v["by_kind"].get("lost_write", 0)
    result.targets.append(
        Target(
            "acknowledged writes in the database",
            f"{acked}/{acked}",
            f"{acked - lost}/{acked}",
            lost == 0,
        )
    )
    slow = v["by_kind"].get("slow_recovery", 0)
    result.targets.append(
        Target(
            f"regions recovered within {r['config']['recovery_bound']:.0f}s of each repair",
            "all",
            "all" if not slow else f"{slow} late",
            slow == 0,
        )
    )
    result.notes.extend(_notes(r))
    result.extra["report"] = r
    result.extra["text"] = format_report(r)
    return result


def _notes(r: dict[str, Any]) -> list[str]:
    ops, checks, v = r["operations"], r["checks"], r["violations"]
    faults = ", ".join(f"{k} x{n}" for k, n in r["faults"]["by_kind"].items())
    notes = [
        f"Seed {r['seed']}, {r['load_seconds']:.0f} s of load: {ops['total']:,} operations "
        f"({ops['purges_answered']:,} purges answered, {ops['writes_acknowledged']:,} writes "
        f"acknowledged), {r['faults']['injected']} faults ({faults}), {checks['total']:,} checks.",
        "Longest unavailability per fault kind (no 200 at all in the region / no uncached 200 / "
        "repair to recovered): "
        + "; ".join(
            f"{k} {u['longest_no_answer_s']:.2f} s / {u['longest_no_uncached_answer_s']:.2f} s / "
            f"{u['longest_recovery_s']:.2f} s"
            + (f" ({u['not_recovered']} not within the bound)" if u["not_recovered"] else "")
            for k, u in r["unavailability"].items()
        )
        + ".",
    ]
    if v["total"]:
        notes.append(
            f"Violations: {v['total']:,} ("
            + ", ".join(f"{k}: {n:,}" for k, n in sorted(v["by_detail"].items()))
            + ")."
        )
        seen: set[str] = set()
        for ex in v["examples"]:
            if ex["kind"] not in seen:
                seen.add(ex["kind"])
                notes.append(f"Example {ex['kind']}: {ex['detail']}.")
    return notes
