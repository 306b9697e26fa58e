"""memory: node RSS after caching 100,000 distinct keys, and after serving them as hits.

Two nodes of one region share its Redis. The default node (hot tier on, bounded
by ``memory_cache_mb``) caches the keys through its misses, then serves them as
hits; its RSS is expected to grow by about what its hot tier reports holding. The
second node has the hot tier off and serves the same keys as hits from Redis: its
RSS should stay where it started, and growth per key there would be a leak (a
per-key lock, metric label or single-flight slot that is never released). RSS is
sampled twice a second, so a plateau (warm-up) can be told from a climb (a leak).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import redis

from bench.context import Context
from bench.load.run import run_loader
from bench.procs import rss_bytes
from bench.scenarios.base import Measurement, ScenarioResult
from bench.scenarios.common import POINT_SQL, query_body, start_edge
from bench.stack import Server, Stack, metrics
from cache_edge.devtools.harness import Child

__all__ = ["TITLE", "run"]

CONNECTIONS = 50
TITLE = "node RSS after caching 100,000 distinct keys (and serving them as hits)"
_MIB = 2**20
# (phase, which node, what it does)
PHASES = (
    ("fill", "hot", "misses: caching"),
    ("hits", "hot", "hits (hot tier on): serving"),
    ("redis-hits", "cold", "hits from Redis (hot tier off): serving"),
)


@contextlib.contextmanager
def _sampling(
    proc: Child, phase: str, started: float, series: list[tuple[float, str, float]]
) -> Iterator[None]:
    """Sample ``proc``'s RSS twice a second while the phase runs."""
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            mib = rss_bytes(proc.pid) / _MIB
            series.append((round(time.monotonic() - started, 2), phase, round(mib, 2)))
            stop.wait(0.5)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _spec(ctx: Context, node: Server, keys: int) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": node.port,
        "path": "/v1/query",
        "headers": {
            "Content-Type": "application/msgpack",
            "Accept": "application/msgpack",
            "Authorization": ctx.authorization,
        },
        "template": {"sql": POINT_SQL, "cacheStrategy": {"ttl": 3600}},
        "params": "sequence:1",
        "concurrency": CONNECTIONS,
        "count": keys,
    }


def run(ctx: Context) -> ScenarioResult:
    keys = ctx.budget.memory_keys
    result = ScenarioResult("memory", TITLE.replace("100,000", f"{keys:,}"))
    with Stack(ctx, "memory") as st:
        edge = start_edge(st, ctx.bench_dsn(), pool_max_size=20)
        cold_config = st.config(ctx.bench_dsn(), node={"memory_cache_mb": 0}, name="no-hot.toml")
        nodes = {
            "hot": edge.node,
            "cold": st.node(
                cold_config,
                region="bench-1",
                redis_url=edge.redis_urls[0],
                origin_url=edge.origin.url,
                name="node-hot-tier-off",
            ),
        }
        # Warm both (imports, pools, the applier) with a key outside the measured range.
        warm = msgpack.packb(query_body(POINT_SQL, [keys + 1], ttl=3600))
        for node in nodes.values():
            st.prime(node, warm)
        rss = {f"{name}-start": rss_bytes(node.proc.pid) for name, node in nodes.items()}
        hot_tier: dict[str, dict[str, float]] = {}
        phases = []
        series: list[tuple[float, str, float]] = []  # (seconds, phase, RSS MiB)
        started = time.monotonic()
        for phase, which, label in PHASES:
            node = nodes[which]
            ctx.step(f"{label} {keys:,} distinct keys")
            with _sampling(node.proc, phase, started, series):
                summary = run_loader("http", _spec(ctx, node, keys), ctx.pinning, timeout=1800)
            rss[phase] = rss_bytes(node.proc.pid)
            got = metrics(node)
            hot_tier[phase] = {
                "entries": got.get("cache_edge_node_memory_entries", 0.0),
                "mib": round(got.get("cache_edge_node_memory_bytes", 0.0) / _MIB, 1),
                "hits": got.get("cache_edge_node_memory_hits", 0.0),
            }
            phases.append((phase, label, summary))
        client = redis.Redis.from_url(edge.redis_urls[0])
        info = client.info("memory")
        dbsize = client.dbsize()
        client.close()
    expected = {"fill": "200 miss", "hits": "200 ttl", "redis-hits": "200 ttl"}
    for phase, label, s in phases:
        result.measurements.append(
            Measurement(
                name=phase,
                label=f"{label} {keys:,} keys",
                client=s["client"],
                rps=s["rps"],
                p50_ms=s["p50_ms"],
                p99_ms=s["p99_ms"],
                mean_ms=s["mean_ms"],
                p90_ms=s["p90_ms"],
                max_ms=s["max_ms"],
                requests=s["requests"],
                errors=s["error_count"],
                error_detail={"outcomes": s["outcomes"], "errors": s["errors"]},
            )
        )
        if set(s["outcomes"]) - {expected[phase]}:
            result.notes.append(f"{label}: answers {s['outcomes']} (expected {expected[phase]})")
    mib = {k: round(v / _MIB, 1) for k, v in rss.items()}
    result.extra["rss_mib"] = mib
    result.extra["hot_tier"] = hot_tier
    result.extra["rss_series"] = [{"s": s, "phase": p, "mib": m} for s, p, m in series]
    result.extra["rss_growth_mib"] = {
        "hot tier on": round(mib["hits"] - mib["hot-start"], 1),
        "hot tier off": round(mib["redis-hits"] - mib["cold-start"], 1),
    }
    result.extra["rss_growth_bytes_per_key_hot_tier_off"] = round(
        (rss["redis-hits"] - rss["cold-start"]) / keys, 1
    )
    result.extra["redis_used_memory_mib"] = round(int(info["used_memory"]) / _MIB, 1)
    result.extra["redis_keys"] = dbsize
    result.ratios = {
        "rss_after_hits_vs_start_hot_tier_on": round(rss["hits"] / rss["hot-start"], 3),
        "rss_after_hits_vs_start_hot_tier_off": round(rss["redis-hits"] / rss["cold-start"], 3),
    }
    return result
