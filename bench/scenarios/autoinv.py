"""autoinv: commit-to-applied lag of automatic invalidation in 2 regions.

The bench tenant opts in (``auto_invalidation = true``, set up with the real
``cache-edge origin setup-auto-invalidation`` command and removed at the end). Two
regions, each a node with its own redis-server, cache a read with ``{"ttl": 300}`` and
no tags. Then, one at a time:

- **direct**: an UPDATE committed with asyncpg, bypassing cache-edge (another service,
  psql); the clock starts when COMMIT returns and stops when *both* regions' nodes answer
  the read with the new value (each polled every millisecond; the poll that sees it
  is a miss refetched from the origin, included).
- **through a node**: the same UPDATE sent to region 1's node; the clock starts when its
  answer (``info.invalidation.id``) returns and stops when ``GET /v1/invalidations/{id}``
  names both regions; each region's next read is then checked for the new value.
"""

from __future__ import annotations

import secrets

import msgpack

from bench.capture import capture_tenant, table
from bench.context import Context
from bench.load.run import run_loader
from bench.scenarios.base import Measurement, ScenarioResult, Target
from bench.scenarios.common import start_edge
from bench.stack import Stack, post
from cache_edge.devtools.harness import ProcessFailed

__all__ = ["TITLE", "run"]

REGIONS = ("region-1", "region-2")
TITLE = "automatic invalidation: commit to new value / applied in 2 regions"
READ_SQL = "SELECT v FROM ce_autoinv WHERE id = 1"
UPDATE_SQL = "UPDATE ce_autoinv SET v = $1 WHERE id = 1"
DDL = """
DROP TABLE IF EXISTS ce_autoinv;
CREATE TABLE ce_autoinv (id int PRIMARY KEY, v bigint NOT NULL);
INSERT INTO ce_autoinv VALUES (1, 0);
"""
POLL_INTERVAL = 0.001


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("autoinv", TITLE)
    dsn = ctx.bench_dsn()
    count = 30 if ctx.quick else 300
    table(dsn, DDL)
    read = {"sql": READ_SQL, "params": [], "cacheStrategy": {"ttl": 300}}
    flags = {"auto_invalidation": True}
    with Stack(ctx, "autoinv") as st, capture_tenant(st, flags):
        edge = start_edge(st, dsn, regions=REGIONS, tenant=flags)
        for node in edge.nodes:
            st.prime(node, msgpack.packb(read), expect="ttl", timeout=30)
        _check_tagged(ctx, edge.nodes[0].url, read)
        spec = {
            "host": "127.0.0.1",
            "ports": [n.port for n in edge.nodes],
            "api_key": ctx.api_key,
            "dsn": dsn,
            "read": read,
            "update": UPDATE_SQL,
            "count": count,
            "poll_interval": POLL_INTERVAL,
            "regions": list(REGIONS),
        }
        legs = [
            ("direct", "UPDATE via asyncpg: COMMIT to new value in both regions"),
            ("node", "UPDATE via node: answer to applied in both regions"),
        ]
        for i, (mode, label) in enumerate(legs):
            ctx.step(f"{label}: {count} writes, one at a time")
            leg = {**spec, "mode": mode, "start": (i + 1) * 1_000_000 + secrets.randbelow(1000)}
            summary = run_loader("autoinv", leg, ctx.pinning, timeout=120 + count * 25)
            # The loader keys regions by port: name them.
            names = {str(n.port): r for n, r in zip(edge.nodes, REGIONS, strict=True)}
            summary["per_region"] = {names[p]: v for p, v in summary["per_region"].items()}
            result.measurements.append(_measurement(mode, label, summary))
            result.extra[f"{mode}_latencies_ms"] = summary["latencies_ms"]
            result.extra[f"{mode}_detail"] = {
                k: summary[k]
                for k in ("per_region", "from_write_sent", "write_p50_ms", "first_read_status")
                if k in summary
            }
    direct, node = result.measurements
    regions = direct.extra.get("per_region", {})
    each = [f"{r}: p50 {v['p50_ms']:.1f} ms, p99 {v['p99_ms']:.1f} ms" for r, v in regions.items()]
    result.notes.append(
        "Each region is polled every 1 ms, so a value carries up to ~1 ms of polling "
        "granularity plus the refetch (a miss to the origin) that sees it. Per region, "
        f"direct writes: {'; '.join(each)}."
    )
    sent = node.extra.get("from_write_sent")
    if sent:
        result.notes.append(
            f"Through a node, from sending the write (its own round trip, p50 "
            f"{node.extra.get('write_p50_ms', 0):.1f} ms, included) to applied in both regions: "
            f"p50 {sent['p50_ms']:.1f} ms, p99 {sent['p99_ms']:.1f} ms."
        )
    for m in result.measurements:
        result.targets.append(
            Target(
                f"{m.name}: writes seen in both regions (no stale read after applied)",
                f"{count}/{count}",
                f"{m.requests - m.errors}/{count}",
                m.errors == 0 and m.requests == count,
            )
        )
    return result


def _check_tagged(ctx: Context, url: str, read: dict[str, object]) -> None:
    """The read must depend on its table; otherwise nothing would ever purge it."""
    reply = post(url + "/v1/query", msgpack.packb(read), ctx.authorization)
    info = reply.decoded().get("info", {}) if reply.status == 200 else {}
    if reply.status != 200 or info.get("warnings"):
        raise ProcessFailed(f"the read is not auto-invalidated: {reply.status} {info}")


def _measurement(name: str, label: str, s: dict[str, object]) -> Measurement:
    extra = {k: s[k] for k in ("per_region", "from_write_sent", "write_p50_ms") if k in s}
    return Measurement(
        name=name,
        label=label,
        client=str(s["client"]),
        rps=float(s["rps"]),  # type: ignore[arg-type]
        p50_ms=float(s["p50_ms"]),  # type: ignore[arg-type]
        p99_ms=float(s["p99_ms"]),  # type: ignore[arg-type]
        mean_ms=float(s["mean_ms"]),  # type: ignore[arg-type]
        p90_ms=float(s["p90_ms"]),  # type: ignore[arg-type]
        max_ms=float(s["max_ms"]),  # type: ignore[arg-type]
        requests=int(s["requests"]),  # type: ignore[call-overload]
        errors=int(s["error_count"]),  # type: ignore[call-overload]
        error_detail={
            "errors": s["errors"],
            "stale_reads_after_applied": s["stale_reads_after_applied"],
            "first_read_status": s["first_read_status"],
        },
        extra=extra,
    )
