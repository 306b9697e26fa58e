"""Redis round trips per request, counted by the redis-servers themselves (issue 18).

A request's Redis work is what the HTTP door does for it: the rate limiter's token
(``RateLimiter.check``, when the tenant has a limit) and then the read path
(``QueryCache.query``). Both run here against private redis-servers, standalone and a
3-master Redis Cluster, with a scripted origin and no applier or purge feed running, so
every command the servers execute between two marks belongs to the request.

The count is read with MONITOR on every master: each top-level command a client sent
(a script's own calls show as ``lua`` and are not counted). The read path never
pipelines, so each command is one round trip; a marker ECHOed to each server after the
request makes sure nothing executed before it is still on its way to the monitor.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cache_edge.common.protocol import QueryRequest, Statement
from cache_edge.common.strategy import CacheStrategy
from cache_edge.node import ratelimit
from cache_edge.node.auth import Principal
from cache_edge.node.entry import Entry
from cache_edge.node.freshness import PurgeState, judge
from cache_edge.node.ports import FillLock
from cache_edge.node.ratelimit import RateLimiter
from cache_edge.node.read_path import Answer, QueryCache
from cache_edge.node.tiers import redis as tiers_redis
from cache_edge.node.tiers.redis import RedisTier
from cache_edge.server.config import NodeConfig, RateLimit
from tests.integration.conftest import PrivateRedis
from tests.integration.test_read_path_faults import ScriptedOrigin

TENANT = "acme"
SQL = "SELECT v FROM t WHERE k = $1"
CONFIG = NodeConfig(region="r1", sync_grace=2.0, coalesce_wait=5.0, memory_cache_mb=0)
WHO = Principal(TENANT, "0123456789abcdef")
LIMIT = RateLimit(rate=10_000.0, burst=10_000)

# MONITOR: 1700000000.123456 [0 127.0.0.1:54321] "EVALSHA" "..." (a script's calls: [0 lua])
_LINE = re.compile(
    r'^\+?\d+\.\d+ \[\d+ (?P<client>[^\]]+)\] "(?P<cmd>[^"]+)"(?: "(?P<arg>[^"]*)")?'
)
# EVALSHA's script, by its SHA-1, for the report.
_SCRIPTS = {
    hashlib.sha1(text.encode()).hexdigest(): name
    for name, text in [
        ("rate limit", ratelimit._TAKE),
        *((name.strip("_").lower(), getattr(tiers_redis, name, "")) for name in (
            "_LOOKUP", "_STORE", "_EXTEND", "_UNLOCK", "_LEAD",
        )),
    ]
}  # fmt: skip


@dataclass
class _Server:
    port: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    admin: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    admin_addr: str
    lines: list[str] = field(default_factory=list)
    seen: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Monitor:
    """The top-level commands some redis-servers execute, read with MONITOR."""

    def __init__(self, ports: list[int]) -> None:
        self._ports = ports
        self._servers: list[_Server] = []
        self._marks = 0

    async def start(self) -> None:
        for port in self._ports:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"MONITOR\r\n")
            assert await reader.readline() == b"+OK\r\n"
            admin = await asyncio.open_connection("127.0.0.1", port)
            host, aport = admin[1].get_extra_info("sockname")[:2]
            server = _Server(port, reader, writer, admin, f"{host}:{aport}")
            server.task = asyncio.create_task(self._read(server))
            self._servers.append(server)

    async def _read(self, server: _Server) -> None:
        while line := await server.reader.readline():
            server.lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
            server.seen.set()

    async def commands(self) -> list[str]:
        """Every top-level command (its name) the servers ran since the last call."""
        self._marks += 1
        mark = f"round-trip-mark-{self._marks}"
        got: list[str] = []
        for server in self._servers:
            reader, writer = server.admin
            writer.write(f"ECHO {mark}\r\n".encode())
            await writer.drain()
            await reader.readline()  # $len
            await reader.readline()  # the mark
            deadline = time.monotonic() + 5
            while not any(mark in line for line in server.lines):
                assert time.monotonic() < deadline, "MONITOR never showed the mark"
                server.seen.clear()
                await asyncio.wait_for(server.seen.wait(), 5)
            at = next(i for i, line in enumerate(server.lines) if mark in line)
            lines, server.lines = server.lines[:at], server.lines[at + 1 :]
            for line in lines:
                m = _LINE.match(line)
                assert m is not None, line
                if m["client"] not in ("lua", server.admin_addr):
                    cmd = m["cmd"].upper()
                    if cmd == "EVALSHA":
                        cmd = f"EVALSHA({_SCRIPTS.get(m['arg'] or '', m['arg'])})"
                    got.append(cmd)
        return got

    async def stop(self) -> None:
        for server in self._servers:
            assert server.task is not None
            server.task.cancel()
            server.writer.close()
            server.admin[1].close()


@dataclass
class Region:
    """One node process's request path: the rate limiter, then the read path."""

    tier: RedisTier
    limiter: RateLimiter
    origin: ScriptedOrigin
    cache: QueryCache
    monitor: Monitor

    async def request(self, key: str, **strategy: Any) -> tuple[Answer, list[str]]:
        """One request as the HTTP door makes it, and the commands it cost."""
        assert await self.monitor.commands() is not None  # start from a clean slate
        strat = {"ttl": 60, "tags": ["t1"], **strategy}
        await self.limiter.check(WHO, LIMIT)
        answer = await self.cache.query(
            TENANT, QueryRequest(Statement(SQL, [key]), CacheStrategy.from_wire(strat)), "req"
        )
        return answer, await self.monitor.commands()

    async def background(self) -> list[str]:
        """What the read path's background work (an swr refresh) cost once it is done."""
        await self.cache.drain()
        return await self.monitor.commands()

    async def purge(self, tag: str) -> None:
        """A purge of ``tag`` recorded at the origin and applied in the region."""
        seen = await self.tier.progress(TENANT)
        seq = self.origin.purge([tag])
        await self.tier.apply(TENANT, seen, {tag: seq}, seq, seen.floor, 600.0)

    async def close(self) -> None:
        await self.monitor.stop()
        await self.limiter.close()
        await self.tier.close()


async def _region(url: str, ports: list[int], *, cluster: bool) -> Region:
    tier = RedisTier(url, timeout=2.0, max_connections=10, retry_after=1.0, cluster=cluster)
    limiter = RateLimiter(url, timeout=2.0, retry_after=1.0, cluster=cluster)
    assert await tier.connect() and await limiter.connect()
    # What the applier's first sync leaves: the region vouches for what it stores.
    await tier.resync(TENANT, 0, 600.0, "e1", "g1")
    origin = ScriptedOrigin()
    monitor = Monitor(ports)
    await monitor.start()
    region = Region(tier, limiter, origin, QueryCache(CONFIG, tier, origin), monitor)  # type: ignore[arg-type]
    # Warm up: connections opened, scripts loaded, the cluster's slot map read.
    for _ in range(2):
        await region.request("warm-up")
    return region


def _report(label: str, commands: list[str]) -> None:
    print(f"{label}: {len(commands)} round trip(s): {' '.join(commands)}")


async def _check(region: Region, label: str) -> None:
    """The counts of issue 18: at most 3 per cached miss, the rate limiter's included."""
    miss, cost = await region.request("k1")
    _report(f"{label} miss", cost)
    assert miss.status == "miss"
    assert len(cost) <= 3, cost

    hit, cost = await region.request("k1")
    _report(f"{label} hit", cost)
    assert hit.status == "ttl"
    assert len(cost) <= 2, cost  # the limiter's token and one read, as before

    await region.purge("t1")  # the entry is still there, void: a miss over it
    region.origin.value = 2
    void, cost = await region.request("k1")
    _report(f"{label} miss over a purged entry", cost)
    assert void.status == "miss"
    assert len(cost) <= 3, cost

    await region.request("k2", ttl=1, staleIfError=60)
    await asyncio.sleep(1.1)  # past ttl, inside staleIfError: kept, but a miss
    expired, cost = await region.request("k2", ttl=1, staleIfError=60)
    _report(f"{label} miss over an expired entry", cost)
    assert expired.status == "miss"
    assert len(cost) <= 3, cost

    await region.request("k3", ttl=1, swr=60)
    await asyncio.sleep(1.1)
    stale, cost = await region.request("k3", ttl=1, swr=60)
    cost += await region.background()  # on a cluster the refresh may show in either count
    _report(f"{label} swr hit and its background refresh", cost)
    assert stale.status == "swr"
    assert len(cost) <= 4, cost  # the hit's 2, then the refresh's lock and store
    assert region.cache.stats.refreshes == 1


async def test_round_trips_on_standalone_redis(
    private_redis: Callable[..., PrivateRedis],
) -> None:
    server = private_redis()
    region = await _region(server.url, [server.port], cluster=False)
    try:
        await _check(region, "standalone")
    finally:
        await region.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Any]:
    if shutil.which("redis-cli") is None:
        pytest.skip("needs redis-cli")
    from tests.integration.test_cluster import Cluster

    c = Cluster(tmp_path)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _masters(ports: list[int]) -> list[int]:
    def role(port: int) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(port), "INFO", "replication"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return "master" if "role:master" in out else "replica"

    return [p for p in ports if role(p) == "master"]


async def test_round_trips_on_redis_cluster(cluster: Any) -> None:
    masters = _masters(cluster.ports)
    assert len(masters) == 3
    region = await _region(f"redis://127.0.0.1:{masters[0]}", masters, cluster=True)
    try:
        await _check(region, "cluster")
    finally:
        await region.close()


# ------------------------------------------------------------ the scripts' rule


async def test_the_scripts_decide_by_the_read_paths_rule(
    private_redis: Callable[..., PrivateRedis],
) -> None:
    """The lookup takes the fill lock exactly when the read path would judge a miss
    (cache_edge/node/freshness.py), and the store keeps an entry exactly when it is
    current under the state read with it: over a grid of floors, tag versions,
    watermarks, ages and minimum watermarks, against the real scripts."""
    server = private_redis()
    tier = RedisTier(server.url, timeout=2.0, max_connections=4, retry_after=1.0)
    r = tier._redis
    k = tier.keys
    strategy = CacheStrategy.from_wire({"ttl": 10, "swr": 5})
    now = time.time()
    tags = ("a", "b")
    checked = 0
    try:
        for floor in (None, 0, 5):
            for va in (None, 3, 7):
                for vb in (None, 6):
                    state = [floor, va, vb]
                    for key, value in zip(k.state_keys(TENANT, "sig", tags), state, strict=True):
                        await (r.delete(key) if value is None else r.set(key, value))
                    purge = PurgeState.from_redis(
                        [None if v is None else str(v).encode() for v in state]
                    )
                    for watermark in (0, 5, 6, 7, 8):
                        for age in (0.5, 9.0, 20.0):
                            for min_wm in (0, 7):
                                checked += 1
                                produced = int((now - age) * 1000)
                                raw = Entry(produced, b"\x80", watermark).encode()
                                await r.set(k.entry(TENANT, "sig"), raw)
                                lock = FillLock(
                                    f"t{checked}",
                                    3000,
                                    max_age_ms=(strategy.ttl + strategy.swr) * 1000,
                                    now_ms=int(now * 1000),
                                    min_watermark=min_wm,
                                )
                                got = await tier.lookup(TENANT, "sig", tags, lock)
                                verdict = judge(purge, watermark, now - produced / 1000, strategy)
                                hit = verdict in ("ttl", "swr") and watermark >= min_wm
                                case = (state, watermark, age, min_wm, verdict)
                                assert got.lock == (0 if hit else 1), case
                                await r.delete(k.lock(TENANT, "sig"))
                        # The store: kept iff current; the lock released iff nothing is
                        # left to fetch (kept, or nobody vouches).
                        await r.delete(k.entry(TENANT, "sig"))
                        await r.set(k.lock(TENANT, "sig"), "mine")
                        done = await tier.store(TENANT, "sig", tags, b"v", 60, watermark, "mine")
                        assert done.stored == purge.current(watermark), (state, watermark)
                        assert (await r.exists(k.entry(TENANT, "sig"))) == done.stored
                        held = await r.get(k.lock(TENANT, "sig")) == b"mine"
                        assert held == (purge.vouched and not done.stored), (state, watermark)
                        await r.delete(k.lock(TENANT, "sig"))
        # An entry the script cannot read is left to the read path: no lock, no error.
        await r.set(k.sync(TENANT, 0), 0)
        for unreadable in (b"\x09not an entry of any known version", b"\x02short"):
            await r.set(k.entry(TENANT, "sig"), unreadable)
            lock = FillLock("x", 3000, 15_000, int(now * 1000))
            assert (await tier.lookup(TENANT, "sig", (), lock)).lock == 0
        # Version 1 entries (no extras) are read like version 2.
        old = struct.pack(">Bqq", 1, int((now - 20) * 1000), 9) + b"\x80"
        assert Entry.decode(old) is not None
        await r.set(k.entry(TENANT, "sig"), old)
        got = await tier.lookup(TENANT, "sig", (), FillLock("y", 3000, 15_000, int(now * 1000)))
        assert got.locked  # 20 s old: past ttl + swr
    finally:
        await tier.close()
    assert checked == 540


async def test_scripts_lost_by_redis_are_loaded_again(
    private_redis: Callable[..., PrivateRedis],
) -> None:
    """A restart or a failover to a replica loses the scripts: the next call loads them
    (NOSCRIPT, SCRIPT LOAD, EVALSHA again), once; nothing fails."""
    server = private_redis()
    region = await _region(server.url, [server.port], cluster=False)
    try:
        await region.tier._redis.script_flush()
        await region.monitor.commands()
        miss, cost = await region.request("k1")
        assert miss.status == "miss"
        # The rate limiter's script, the lookup and the store: each loaded once.
        assert cost.count("SCRIPT") == 3 and len(cost) == 9, cost
        hit, cost = await region.request("k1")
        assert hit.status == "ttl" and len(cost) == 2, cost
    finally:
        await region.close()
