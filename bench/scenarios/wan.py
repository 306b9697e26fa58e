"""wan: node and origin 40 ms apart (one way): hit vs miss vs a direct query across the link.

Two delay relays (cache_edge.devtools.delay_relay, each its own process) emulate the
WAN: one between the node and the origin, one in front of PostgreSQL for the direct
asyncpg client. A round trip costs 80 ms. Misses use never-seen keys (a new range of
account ids for every run), so each one really crosses the link.
"""

from __future__ import annotations

import itertools
from urllib.parse import urlsplit

import msgpack

from bench.context import BENCH_DB, Context
from bench.load.wrk import WrkPlan
from bench.scenarios.base import (
    ScenarioResult,
    Skip,
    loader_variant,
    measure_rounds,
    ratio,
    wrk_variant,
)
from bench.scenarios.common import POINT_SQL, node_plan, query_body, template_plan
from bench.stack import Stack

__all__ = ["TITLE", "run"]

DELAY_MS = 40
CONNECTIONS = 10
TITLE = "node and origin 40 ms apart (one way): hit vs miss vs direct asyncpg across the link"


def run(ctx: Context) -> ScenarioResult:
    if not ctx.tools.has("wrk"):
        raise Skip(ctx.tools.missing_reason("wrk"))
    result = ScenarioResult("wan", TITLE)
    dsn = ctx.bench_dsn()
    pg_port = urlsplit(dsn).port or 5432
    with Stack(ctx, "wan") as st:
        ctx.step(f"starting origin, delay relays (+{DELAY_MS} ms each way) and node")
        config = st.config(dsn, pool_max_size=20)
        origin = st.origin(config)
        to_origin = st.relay(origin.port, DELAY_MS, "relay-origin")
        to_pg = st.relay(pg_port, DELAY_MS, "relay-postgres")
        node = st.node(
            config, region="far-away", redis_url=st.redis(), origin_url=to_origin.url, name="node"
        )
        hit_body = query_body(POINT_SQL, [1], ttl=3600)
        st.prime(node, msgpack.packb(hit_body))
        ranges = itertools.count(1)

        def fresh_keys() -> WrkPlan:
            # 100,000 ids per run: far more than a run at 80 ms per request can use.
            lo = next(ranges) * 100_000
            return template_plan(
                ctx, node, query_body(POINT_SQL, [0], ttl=60), "sequence", lo, lo + 99_999
            )

        passthrough = template_plan(ctx, node, query_body(POINT_SQL, [0]), "random", 1, 10**6)
        relay_dsn = f"postgresql://postgres@127.0.0.1:{to_pg.port}/{BENCH_DB}"
        variants = [
            wrk_variant(ctx, "hit", "node, ttl hit", node_plan(ctx, node, hit_body), CONNECTIONS),
            wrk_variant(ctx, "miss", "node, cacheable miss", fresh_keys, CONNECTIONS),
            wrk_variant(ctx, "none", "node, no cache strategy", passthrough, CONNECTIONS),
            loader_variant(
                ctx, "direct", "asyncpg direct across the link", "pg",
                {"dsn": relay_dsn, "sql": POINT_SQL, "params": "random:1:1000000",
                 "concurrency": CONNECTIONS},
            ),
        ]  # fmt: skip
        result.measurements = measure_rounds(ctx, variants, ctx.budget.rounds)
    hit, miss, none, direct = (result.get(n) for n in ("hit", "miss", "none", "direct"))
    assert hit and miss and none and direct
    for m, expected in ((hit, "ttl"), (miss, "miss"), (none, "none")):
        statuses = m.error_detail.get("cache_statuses", {})
        if set(statuses) - {expected}:
            result.notes.append(f"{m.label}: cache statuses {statuses} (expected only {expected})")
    result.ratios = {
        "miss_vs_direct_p50": ratio(miss.p50_ms, direct.p50_ms),
        "hit_vs_direct_p50": ratio(hit.p50_ms, direct.p50_ms),
        "miss_minus_direct_p50_ms": round(miss.p50_ms - direct.p50_ms, 3),
    }
    result.notes.append(
        f"One-way delay {DELAY_MS} ms, so one round trip is {2 * DELAY_MS} ms; {CONNECTIONS} "
        "clients. The node keeps its origin connections alive and asyncpg its connections "
        "and prepared statements, so a query costs one round trip on either path."
    )
    return result
