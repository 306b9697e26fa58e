"""stampede: 1,000 concurrent identical requests for an expired key cause one execution.

The query calls ``ce_mark``, which logs every execution on the database side, and
sleeps 100 ms so that the stampede really overlaps with the one fetch. The key is
cached with a 3 s ttl and left to expire; then 1,000 connections, opened (and each
served once) in advance, send the same request at the same moment. Measured once against one node,
and once spread over two nodes of the same region (coalescing across processes).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import msgpack

from bench.context import Context
from bench.load.run import run_loader
from bench.procs import listen_overflows
from bench.scenarios.base import Measurement, ScenarioResult, Target
from bench.scenarios.common import query_body, start_edge
from bench.stack import Server, Stack, post
from cache_edge.devtools.exec_log import count_executions

__all__ = ["TITLE", "run"]

SQL = "SELECT ce_mark($1) AS marker, clock_timestamp() AS at FROM pg_sleep(0.1)"
# Long enough that the one refetched entry stays fresh while the node answers the other
# 999 requests (about a second on one core), short enough to wait out per repetition.
TTL = 3
TITLE = "1,000 concurrent identical requests for an expired key: database executions"


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("stampede", TITLE)
    dsn = ctx.bench_dsn()
    with Stack(ctx, "stampede") as st:
        edge = start_edge(st, dsn, nodes_per_region=2)
        legs = [
            ("one-node", "1 node", edge.nodes[:1]),
            ("two-nodes", "2 nodes, 1 region", edge.nodes),
        ]
        for name, label, nodes in legs:
            runs = []
            for rep in range(ctx.budget.stampede_repeats):
                ctx.step(f"{label}: stampede {rep + 1}/{ctx.budget.stampede_repeats}")
                runs.append(_stampede(ctx, st, nodes, dsn))
            result.measurements.append(_measurement(name, label, runs))
    result.notes.append(
        "Latency runs from the moment all requests were sent to each answer: the one fetch "
        "(a query of at least 100 ms) plus the time the node(s) take to answer 1,000 waiting "
        "requests on one core. req/s is answers per second over the whole burst."
    )
    executions = {m.name: m.extra["executions"] for m in result.measurements}
    result.extra["executions"] = executions
    for m in result.measurements:
        result.targets.append(
            Target(
                f"stampede executions ({m.label})",
                "= 1",
                ", ".join(str(x) for x in m.extra["executions"]),
                all(x == 1 for x in m.extra["executions"]),
            )
        )
    return result


def _stampede(ctx: Context, st: Stack, nodes: list[Server], dsn: str) -> dict[str, Any]:
    marker = f"stampede-{uuid.uuid4().hex[:12]}"
    body = msgpack.packb(query_body(SQL, [marker], ttl=TTL))
    # Fill the key (one execution), then let it expire: the ttl is also its Redis expiry.
    st.prime(nodes[0], body, expect="miss")
    # A fresh node may answer "miss" before its region is synced and then cache nothing:
    # wait for a hit, so the burst below meets a key that really was cached and expired.
    st.prime(nodes[0], body, expect="ttl", timeout=20)
    time.sleep(TTL + 0.5)
    before = asyncio.run(count_executions(dsn, marker))
    spec = {
        "host": "127.0.0.1",
        "ports": [n.port for n in nodes],
        "path": "/v1/query",
        "headers": {
            "Content-Type": "application/msgpack",
            "Accept": "application/msgpack",
            "Authorization": ctx.authorization,
        },
        "body_hex": body.hex(),
        "clients": ctx.budget.clients,
    }
    overflows = listen_overflows()
    summary = run_loader("burst", spec, ctx.pinning, timeout=180)
    summary["listen_overflows"] = listen_overflows() - overflows
    time.sleep(0.2)  # a straggling execution would log itself by now
    after = asyncio.run(count_executions(dsn, marker))
    summary["executions"] = after - before
    # Every answer came from the one fetch; the statuses say so (miss) or not.
    reply = post(nodes[0].url + "/v1/query", body, ctx.authorization)
    summary["status_after"] = reply.headers.get("X-Cache-Status", "?")
    return summary


def _measurement(name: str, label: str, runs: list[dict[str, Any]]) -> Measurement:
    def med(key: str) -> float:
        values = sorted(float(r[key]) for r in runs)
        return round(values[len(values) // 2], 3)

    outcomes: dict[str, int] = {}
    for r in runs:
        for k, n in r["outcomes"].items():
            outcomes[k] = outcomes.get(k, 0) + n
    return Measurement(
        name=name,
        label=label,
        client=runs[0]["client"],
        rps=med("rps"),
        p50_ms=med("p50_ms"),
        p99_ms=med("p99_ms"),
        mean_ms=med("mean_ms"),
        p90_ms=med("p90_ms"),
        max_ms=max(float(r["max_ms"]) for r in runs),
        requests=sum(int(r["requests"]) for r in runs),
        errors=sum(int(r["error_count"]) for r in runs),
        error_detail={"outcomes": outcomes},
        rounds=[{k: r[k] for k in ("rps", "p50_ms", "p99_ms", "executions")} for r in runs],
        extra={
            "executions": [r["executions"] for r in runs],
            "connect_seconds": [r["connect_seconds"] for r in runs],
            "listen_overflows": [r["listen_overflows"] for r in runs],
        },
    )
