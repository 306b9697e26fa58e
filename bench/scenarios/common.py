"""Queries, request bodies and the origin + node(s) setup that several scenarios share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from bench.context import Context
from bench.load.wrk import WrkPlan, split_template
from bench.stack import Server, Stack

__all__ = [
    "HEAVY_SQL",
    "HIT_SQL",
    "POINT_SQL",
    "Edge",
    "node_plan",
    "query_body",
    "start_edge",
    "template_plan",
]

# ~1 KB of msgpack: ten pgbench accounts (the filler column is 84 characters).
HIT_SQL = (
    "SELECT aid, bid, abalance, filler FROM pgbench_accounts "
    "WHERE aid BETWEEN $1 AND $2 ORDER BY aid"
)
HIT_PARAMS = [1, 10]
POINT_SQL = "SELECT aid, bid, abalance, filler FROM pgbench_accounts WHERE aid = $1"
# ~100 ms on pgbench scale 10 (1,000,000 accounts), ten rows out.
HEAVY_SQL = "SELECT bid, sum(abalance) FROM pgbench_accounts GROUP BY bid ORDER BY bid"
ACCOUNTS = 1_000_000


def query_body(
    sql: str,
    params: list[Any],
    *,
    ttl: int = 0,
    swr: int = 0,
    tags: list[str] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"sql": sql, "params": params}
    if ttl or swr:
        strategy: dict[str, Any] = {"ttl": ttl}
        if swr:
            strategy["swr"] = swr
        if tags:
            strategy["tags"] = tags
        body["cacheStrategy"] = strategy
    return body


def node_plan(ctx: Context, server: Server, body: dict[str, Any]) -> WrkPlan:
    """Every request the same (a fixed msgpack body)."""
    return WrkPlan(
        url=server.url, path="/v1/query", body=msgpack.packb(body), authorization=ctx.authorization
    )


def template_plan(
    ctx: Context, server: Server, body: dict[str, Any], mode: str, lo: int, hi: int
) -> WrkPlan:
    """One integer parameter per request: ``random`` in [lo, hi], or a ``sequence`` from lo."""
    with_sentinel = {**body, "params": [WrkPlan.SENTINEL]}
    return WrkPlan(
        url=server.url,
        path="/v1/query",
        template=split_template(with_sentinel),
        mode=mode,
        lo=lo,
        hi=hi,
        authorization=ctx.authorization,
    )


@dataclass
class Edge:
    origin: Server
    nodes: list[Server] = field(default_factory=list)
    redis_urls: list[str] = field(default_factory=list)

    @property
    def node(self) -> Server:
        return self.nodes[0]


def start_edge(
    st: Stack,
    database_url: str,
    *,
    regions: tuple[str, ...] = ("bench-1",),
    nodes_per_region: int = 1,
    pool_max_size: int = 10,
    node: dict[str, Any] | None = None,
    tenant: dict[str, Any] | None = None,
) -> Edge:
    """An origin, and per region a private Redis and ``nodes_per_region`` nodes sharing it."""
    config = st.config(database_url, pool_max_size=pool_max_size, node=node, tenant=tenant)
    st.ctx.step("starting origin and node(s)")
    edge = Edge(st.origin(config))
    for region in regions:
        redis_url = st.redis(f"redis-{region}")
        edge.redis_urls.append(redis_url)
        for i in range(nodes_per_region):
            edge.nodes.append(
                st.node(
                    config,
                    region=region,
                    redis_url=redis_url,
                    origin_url=edge.origin.url,
                    name=f"node-{region}-{i}",
                )
            )
    return edge
