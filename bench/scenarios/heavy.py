"""heavy: a ~100 ms aggregate, cached by the node vs pgpool-II's query cache vs uncached.

pgpool-II runs privately with ``memory_cache_enabled = on`` and
``memqcache_method = 'shmem'`` in front of the local PostgreSQL and is measured
from asyncpg. If pgpool-II is missing or does not start, its leg is skipped with
the reason and the rest still runs.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import msgpack

from bench.context import BENCH_DB, Context
from bench.scenarios.base import (
    ScenarioResult,
    Skip,
    Target,
    Variant,
    loader_variant,
    measure_rounds,
    ratio,
    wrk_variant,
)
from bench.scenarios.common import HEAVY_SQL, node_plan, query_body, start_edge
from bench.stack import Stack
from cache_edge.devtools.harness import ProcessFailed

__all__ = ["TITLE", "run"]

CONNECTIONS = 10
TITLE = "~100 ms aggregate: node cache vs pgpool-II query cache vs uncached, 10 clients"


def run(ctx: Context) -> ScenarioResult:
    if not ctx.tools.has("wrk"):
        raise Skip(ctx.tools.missing_reason("wrk"))
    result = ScenarioResult("heavy", TITLE)
    dsn = ctx.bench_dsn()
    pg_port = urlsplit(dsn).port or 5432
    with Stack(ctx, "heavy") as st:
        edge = start_edge(st, dsn)
        node = edge.node
        body = query_body(HEAVY_SQL, [], ttl=3600)
        st.prime(node, msgpack.packb(body))
        variants: list[Variant] = [
            wrk_variant(
                ctx, "node", "node, ttl hit", node_plan(ctx, node, body), CONNECTIONS,
                lambda: [node.proc.pid],
            )
        ]  # fmt: skip
        pgpool_skip = _pgpool_skip_reason(ctx)
        if pgpool_skip is None:
            try:
                ctx.step("starting pgpool-II (query cache in shared memory)")
                port = st.pgpool(pg_port)
                pgpool_dsn = f"postgresql://postgres@127.0.0.1:{port}/{BENCH_DB}"
                spec = {"dsn": pgpool_dsn, "sql": HEAVY_SQL, "concurrency": CONNECTIONS}
                variants.append(
                    loader_variant(ctx, "pgpool", "pgpool-II query cache hit", "pg", spec)
                )
            except (ProcessFailed, LookupError, OSError) as exc:
                pgpool_skip = f"pgpool-II did not start: {exc}"
        if pgpool_skip is not None:
            result.notes.append(f"pgpool-II leg skipped: {pgpool_skip}")
            result.extra["pgpool_skipped"] = pgpool_skip
        direct = {"dsn": dsn, "sql": HEAVY_SQL}
        variants += [
            loader_variant(
                ctx, "direct", "uncached, asyncpg direct", "pg",
                {**direct, "concurrency": CONNECTIONS},
            ),
            loader_variant(
                ctx, "direct-1", "uncached, asyncpg direct, 1 client", "pg",
                {**direct, "concurrency": 1},
            ),
        ]  # fmt: skip
        result.measurements = measure_rounds(ctx, variants, ctx.budget.rounds)
    node_m, pgpool, uncached, single = (
        result.get(n) for n in ("node", "pgpool", "direct", "direct-1")
    )
    assert node_m and uncached and single
    result.extra["uncached_single_query_p50_ms"] = single.p50_ms
    result.ratios["node_hit_vs_uncached_rps"] = ratio(node_m.rps, uncached.rps)
    if pgpool is None:
        result.targets.append(
            Target("heavy hit p50 vs pgpool-II hit p50", "<= 3x", "pgpool-II skipped", None)
        )
        return result
    if pgpool.p50_ms >= single.p50_ms / 2:
        result.notes.append(
            "pgpool-II answers look uncached (p50 close to the query's own time): check its log"
        )
    result.ratios["node_vs_pgpool_p50"] = ratio(node_m.p50_ms, pgpool.p50_ms)
    result.ratios["node_vs_pgpool_rps"] = ratio(node_m.rps, pgpool.rps)
    result.targets.append(
        Target(
            "heavy hit p50 vs pgpool-II hit p50",
            "<= 3x",
            f"{result.ratios['node_vs_pgpool_p50']:.2f}x "
            f"({node_m.p50_ms:.2f} vs {pgpool.p50_ms:.2f} ms)",
            result.ratios["node_vs_pgpool_p50"] <= 3.0,
        )
    )
    result.notes.append(
        "The node is driven by wrk over HTTP, pgpool-II and PostgreSQL by asyncpg (the "
        "PostgreSQL protocol): each with the client its users would have."
    )
    return result


def _pgpool_skip_reason(ctx: Context) -> str | None:
    return None if ctx.tools.has("pgpool") else ctx.tools.missing_reason("pgpool")
