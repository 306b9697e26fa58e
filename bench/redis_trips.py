"""``python -m bench.redis_trips``: the read path's cached misses and Redis hits, alone.

The suite's scenarios do not isolate them (``miss`` is uncached, ``hit`` is served by the
hot tier), so this drives one process's read path (``QueryCache`` over ``RedisTier``)
against a private redis-server, with an origin that answers at once: what is left is the
read path's own cost and its Redis round trips. Optionally the Redis link gets a one-way
delay (``--delay-ms``, the suite's relay), as a region's Redis a network hop away.

It prints one JSON object: p50 and mean latency of sequential misses and hits (distinct
keys, hot tier off), client (this process) and Redis CPU per request, and throughput at
``--concurrency``. It imports ``cache_edge`` from ``PYTHONPATH`` first, so an older tree
can be timed by the same script (``PYTHONPATH=/path/to/old/tree``); it uses nothing that
the read path of 6dc9e23 lacked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis as sync_redis

from cache_edge.common.protocol import QueryRequest, Statement
from cache_edge.common.strategy import CacheStrategy
from cache_edge.common.wire import packb
from cache_edge.devtools.harness import Children, free_port, wait_port
from cache_edge.devtools.services import redis_child
from cache_edge.node.origin_client import OriginResult
from cache_edge.node.read_path import QueryCache
from cache_edge.node.tiers.redis import RedisTier
from cache_edge.server.config import NodeConfig

ROOT = Path(__file__).resolve().parent.parent
SQL = "SELECT v FROM t WHERE k = $1"
STRATEGY = CacheStrategy.from_wire({"ttl": 600, "tags": ["t1"]})


class InstantOrigin:
    """An origin that answers every read at once with one small row."""

    async def query(self, tenant: str, stmt: Statement, **_: Any) -> OriginResult:
        answer = {
            "columns": [{"name": "v", "type": "int4"}],
            "rows": [[1]],
            "rowCount": 1,
            "producedAt": int(time.time() * 1000),
            "watermark": 0,
        }
        return OriginResult(packb(answer), "bench")


def _request(key: str) -> QueryRequest:
    return QueryRequest(Statement(SQL, [key]), STRATEGY)


def _redis_cpu(admin: sync_redis.Redis) -> float:
    info = admin.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def measure(port: int, target: int, delay_ms: float, n: int, concurrency: int) -> Any:
    """Time the read path against the redis-server on ``port``, reached at ``target``."""
    admin = sync_redis.Redis(port=port)
    tier = RedisTier(
        f"redis://127.0.0.1:{target}/0", timeout=5.0, max_connections=100, retry_after=1.0
    )
    try:
        await tier.connect()
        await tier.resync("acme", 0, 3600.0, "e1", "g1")  # the region vouches for entries
        config = NodeConfig(region="r1", memory_cache_mb=0)
        cache = QueryCache(config, tier, InstantOrigin())
        for i in range(50):  # connections opened, scripts loaded
            await cache.query("acme", _request(f"warm-{i}"), "bench")
            await cache.query("acme", _request(f"warm-{i}"), "bench")
        run = time.monotonic_ns()
        out: dict[str, Any] = {"delay_ms_one_way": delay_ms, "n": n}
        for kind, status in (("miss", "miss"), ("hit", "ttl")):
            took = []
            cpu, redis_cpu = time.process_time(), _redis_cpu(admin)
            for i in range(n):
                began = time.perf_counter()
                answer = await cache.query("acme", _request(f"seq-{run}-{i}"), "bench")
                took.append(time.perf_counter() - began)
                assert answer.status == status, answer.status
            out[f"{kind}_p50_ms"] = round(statistics.median(took) * 1000, 3)
            out[f"{kind}_mean_ms"] = round(statistics.fmean(took) * 1000, 3)
            out[f"{kind}_client_cpu_us"] = round((time.process_time() - cpu) / n * 1e6, 1)
            out[f"{kind}_redis_cpu_us"] = round((_redis_cpu(admin) - redis_cpu) / n * 1e6, 1)
        keys = [f"par-{run}-{i}" for i in range(n * 4)]
        gate = asyncio.Semaphore(concurrency)

        async def one(key: str) -> None:
            async with gate:
                await cache.query("acme", _request(key), "bench")

        for kind in ("miss", "hit"):
            began = time.perf_counter()
            await asyncio.gather(*(one(k) for k in keys))
            rate = len(keys) / (time.perf_counter() - began)
            out[f"{kind}_per_s_{concurrency}_concurrent"] = round(rate)
        return out
    finally:
        await tier.close()
        admin.close()


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the servers on the way out
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay to Redis")
    parser.add_argument("--n", type=int, default=1000, help="sequential requests of each kind")
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    import cache_edge

    children = Children()
    tmp = Path(tempfile.mkdtemp(prefix="redis-trips-"))
    port = free_port()
    relay = None
    try:
        children.start(redis_child(port, tmp, tmp / "redis.log"))
        wait_port(port, None)
        target = port
        if args.delay_ms:
            target = free_port()
            relay = subprocess.Popen(
                [sys.executable, "-m", "bench.relay", "--listen-port", str(target),
                 "--target", f"127.0.0.1:{port}", "--delay-ms", str(args.delay_ms)],
                cwd=ROOT, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            wait_port(target, None)
        result = asyncio.run(measure(port, target, args.delay_ms, args.n, args.concurrency))
    finally:
        if relay is not None:
            relay.terminate()
            relay.wait()
        children.stop_all()
    result["cache_edge"] = str(Path(cache_edge.__file__).parent.parent)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
