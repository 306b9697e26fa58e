"""storm: 1,000 concurrent clients running short queries, through the origin's pool of 20,
through PgBouncer (transaction pooling, pool of 20), and straight at PostgreSQL.

It runs against a private PostgreSQL (``max_connections = 100``, like the default)
so that the direct leg, which exhausts every connection slot on purpose, cannot
starve anyone else's server. Each leg runs alone: its servers start before it
and stop after it, so no leg holds connection slots during another.

All three legs use the same kind of client: a Python process that first connects
all 1,000 clients (refusals are counted, not retried), then has each run one query
at a time. The origin leg goes through a node with no cache strategy.
"""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from bench.context import Context
from bench.db import pgbench_init
from bench.load.run import run_loader
from bench.profile import record_all
from bench.scenarios.base import ScenarioResult, Skip, Target, Variant, measure_rounds, ratio
from bench.scenarios.common import POINT_SQL, Edge, start_edge
from bench.stack import Stack

__all__ = ["TITLE", "run"]

POOL = 20
ACCOUNTS = 100_000  # pgbench scale 1
TITLE = "1,000 concurrent clients: origin (pool 20) vs PgBouncer (pool 20) vs PostgreSQL direct"


def run(ctx: Context) -> ScenarioResult:
    if ctx.tools.pg_bindir is None:
        raise Skip(ctx.tools.missing_reason("initdb"))
    result = ScenarioResult("storm", TITLE)
    clients = ctx.budget.clients
    with Stack(ctx, "storm") as st:
        ctx.step("starting a private PostgreSQL (max_connections = 100)")
        admin = st.postgres(max_connections=100)
        dsn = admin.rsplit("/", 1)[0] + "/storm"
        _create_db(admin)
        ctx.step("loading pgbench data (scale 1) into the private PostgreSQL")
        pgbench_init(ctx.tools.paths["pgbench"], dsn, 1)
        pg_port = urlsplit(admin).port or 5432
        common = {"duration": ctx.budget.duration, "warmup": ctx.budget.warmup}
        timeout = 120 + ctx.budget.duration

        def origin_spec(edge: Edge) -> dict[str, Any]:
            return {
                **common,
                "host": "127.0.0.1",
                "port": edge.node.port,
                "path": "/v1/query",
                "headers": {
                    "Content-Type": "application/msgpack",
                    "Accept": "application/msgpack",
                    "Authorization": ctx.authorization,
                },
                "template": {"sql": POINT_SQL},
                "params": f"random:1:{ACCOUNTS}",
                "concurrency": clients,
            }

        def origin_leg() -> dict[str, Any]:
            with Stack(ctx, "storm-origin") as leg:
                edge = start_edge(leg, dsn, pool_max_size=POOL)
                ctx.step(f"{clients} clients -> node -> origin (pool {POOL})")
                return run_loader("http", origin_spec(edge), ctx.pinning, timeout)

        def pgbouncer_leg() -> dict[str, Any]:
            with Stack(ctx, "storm-pgbouncer") as leg:
                port = leg.pgbouncer(pg_port, POOL, clients + 100)
                ctx.step(f"{clients} clients -> PgBouncer (transaction pooling, pool {POOL})")
                spec = {
                    **common,
                    "dsn": f"postgresql://postgres@127.0.0.1:{port}/storm",
                    "sql": POINT_SQL,
                    "params": f"random:1:{ACCOUNTS}",
                    "concurrency": clients,
                    # Transaction pooling cannot keep named prepared statements.
                    "statement_cache_size": 0,
                }
                return run_loader("pg", spec, ctx.pinning, timeout)

        def direct_leg() -> dict[str, Any]:
            ctx.step(f"{clients} clients -> PostgreSQL directly (max_connections 100)")
            spec = {
                **common,
                "dsn": dsn,
                "sql": POINT_SQL,
                "params": f"random:1:{ACCOUNTS}",
                "concurrency": clients,
            }
            return run_loader("pg", spec, ctx.pinning, timeout)

        variants = [Variant("origin", f"node -> origin (pool {POOL})", origin_leg)]
        if ctx.tools.has("pgbouncer"):
            variants.append(Variant("pgbouncer", f"PgBouncer (pool {POOL})", pgbouncer_leg))
        else:
            result.notes.append(f"PgBouncer leg skipped: {ctx.tools.missing_reason('pgbouncer')}")
        variants.append(Variant("direct", "PostgreSQL direct (max_connections 100)", direct_leg))
        result.measurements = measure_rounds(ctx, variants, ctx.budget.rounds)
        if ctx.tools.has("py-spy"):
            with Stack(ctx, "storm-profile") as leg:
                edge = start_edge(leg, dsn, pool_max_size=POOL)
                result.extra["profile"] = _profile(ctx, edge, origin_spec(edge), timeout)
        else:
            result.extra["profile"] = {"skipped": ctx.tools.missing_reason("py-spy")}

    origin = result.get("origin")
    bouncer = result.get("pgbouncer")
    direct = result.get("direct")
    assert origin and direct
    result.extra["direct_refused_connections"] = direct.extra.get("refused", 0)
    result.extra["direct_connected"] = direct.extra.get("connected", 0)
    result.targets.append(
        Target(
            "storm errors through the origin",
            "0",
            f"{origin.errors} of {origin.requests + origin.errors} requests",
            origin.errors == 0,
        )
    )
    if bouncer is not None:
        result.ratios["origin_vs_pgbouncer_rps"] = ratio(origin.rps, bouncer.rps)
        result.targets.append(
            Target(
                "storm throughput vs PgBouncer",
                ">= 0.5x",
                f"{result.ratios['origin_vs_pgbouncer_rps']:.2f}x",
                result.ratios["origin_vs_pgbouncer_rps"] >= 0.5,
            )
        )
    else:
        result.targets.append(
            Target("storm throughput vs PgBouncer", ">= 0.5x", "PgBouncer skipped", None)
        )
    result.notes.append(
        f"direct: {direct.extra.get('connected', 0)} of {clients} clients got a connection, "
        f"{direct.extra.get('refused', 0)} were refused (last round)."
    )
    return result


def _create_db(admin: str) -> None:
    import asyncio

    async def create() -> None:
        conn = await asyncpg.connect(admin, timeout=10)
        try:
            await conn.execute('CREATE DATABASE "storm"')
        finally:
            await conn.close()

    asyncio.run(create())


def _profile(ctx: Context, edge: Edge, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """py-spy node and origin together once the clients are connected and running."""
    seconds = ctx.budget.profile_seconds
    ctx.step(f"profiling node and origin under {ctx.budget.clients} clients ({seconds} s)")
    settle = spec["warmup"] + 2
    spec = {**spec, "duration": seconds + 4}
    load = threading.Thread(target=run_loader, args=("http", spec, ctx.pinning, timeout))
    load.start()
    try:
        time.sleep(settle)
        return record_all(
            ctx.tools.path("py-spy"),
            {"node": edge.node.proc.pid, "origin": edge.origin.proc.pid},
            seconds,
            ctx.out_dir,
            ctx.tmp,
            "storm-profile",
            ctx.pinning,
        )
    finally:
        load.join()
