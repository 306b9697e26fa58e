"""miss: a point query with no cache strategy, node -> origin -> PostgreSQL, vs asyncpg direct.

Both sides run the same query (random account ids) at the same concurrency. At 50
clients the box is saturated, so p50 there mostly reflects throughput (Little's
law); the single-client rows show the per-request overhead of the two extra hops.
"""

from __future__ import annotations

import subprocess
from typing import Any

from bench.context import Context
from bench.load.wrk import WrkPlan, wrk_command
from bench.profile import record_all
from bench.scenarios.base import (
    ScenarioResult,
    Skip,
    Target,
    loader_variant,
    measure_rounds,
    ratio,
    wrk_variant,
)
from bench.scenarios.common import ACCOUNTS, POINT_SQL, query_body, start_edge, template_plan
from bench.stack import Stack

__all__ = ["TITLE", "run"]

CONNECTIONS = 50
POOL = 20
TITLE = "uncached point query through node and origin vs asyncpg direct, 50 clients"


def run(ctx: Context) -> ScenarioResult:
    if not ctx.tools.has("wrk"):
        raise Skip(ctx.tools.missing_reason("wrk"))
    result = ScenarioResult("miss", TITLE)
    dsn = ctx.bench_dsn()
    with Stack(ctx, "miss") as st:
        edge = start_edge(st, dsn, pool_max_size=POOL)
        node, origin = edge.node, edge.origin
        plan = template_plan(ctx, node, query_body(POINT_SQL, [0]), "random", 1, ACCOUNTS)
        pg = {"dsn": dsn, "sql": POINT_SQL, "params": f"random:1:{ACCOUNTS}"}

        def pids() -> list[int]:
            return [node.proc.pid, origin.proc.pid]

        variants = [
            wrk_variant(ctx, "node", "node -> origin -> PostgreSQL", plan, CONNECTIONS, pids),
            loader_variant(
                ctx, "direct", "asyncpg -> PostgreSQL", "pg", {**pg, "concurrency": CONNECTIONS}
            ),
            wrk_variant(ctx, "node-1", "node -> origin -> PostgreSQL, 1 client", plan, 1, pids),
            loader_variant(
                ctx, "direct-1", "asyncpg -> PostgreSQL, 1 client", "pg", {**pg, "concurrency": 1}
            ),
        ]
        result.measurements = measure_rounds(ctx, variants, ctx.budget.rounds)
        result.extra["profile"] = _profile(ctx, plan, pids())
    node_m, direct, node_1, direct_1 = (
        result.get(n) for n in ("node", "direct", "node-1", "direct-1")
    )
    assert node_m and direct and node_1 and direct_1
    statuses = node_m.error_detail.get("cache_statuses", {})
    if set(statuses) - {"none"}:
        result.notes.append(f"unexpected cache statuses from the node: {statuses}")
    over_50 = round(node_m.p50_ms - direct.p50_ms, 3)
    over_1 = round(node_1.p50_ms - direct_1.p50_ms, 3)
    result.ratios = {
        "node_vs_direct_rps": ratio(node_m.rps, direct.rps),
        "p50_overhead_ms_50_clients": over_50,
        "p50_overhead_ms_1_client": over_1,
    }
    result.targets = [
        Target(
            "miss p50 overhead over direct asyncpg (50 clients)",
            "<= +1 ms",
            f"{over_50:+.2f} ms at 50 clients ({over_1:+.2f} ms at 1 client)",
            over_50 <= 1.0,
        )
    ]
    result.notes.append(
        f"origin pool: {POOL} connections; direct: one connection per client. The node answers "
        "`cacheStatus: none` (no cache strategy), so every request goes to PostgreSQL."
    )
    return result


def _profile(ctx: Context, plan: WrkPlan, pids: list[int]) -> dict[str, Any]:
    """py-spy node and origin together while wrk keeps them busy (50 clients)."""
    if not ctx.tools.has("py-spy"):
        return {"skipped": ctx.tools.missing_reason("py-spy")}
    seconds = ctx.budget.profile_seconds
    ctx.step(f"profiling node and origin with py-spy ({2 * seconds} s)")
    cmd = wrk_command(
        ctx.tools.path("wrk"),
        plan,
        connections=CONNECTIONS,
        duration=2 * seconds + 3,
        workdir=ctx.tmp / "wrk" / "profile",
        pinning=ctx.pinning,
    )
    load = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return record_all(
            ctx.tools.path("py-spy"),
            {"node": pids[0], "origin": pids[1]},
            seconds,
            ctx.out_dir,
            ctx.tmp,
            "miss-profile",
            ctx.pinning,
        )
    finally:
        load.terminate()
        load.wait(10)
