"""A region on a real 3-master Redis Cluster (with replicas), including a master failover.

The cluster is six redis-server processes on free loopback ports, started and
stopped here; `redis-cli --cluster create` wires them up.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from cache_edge.devtools.harness import Child, Children, free_port, wait_port, wait_until
from cache_edge.devtools.services import redis_child
from cache_edge.node.tiers.layout import CLUSTER_SHARDS, Layout
from tests.conftest import API_KEY_A, TEST_DB, dsn_for, executions
from tests.integration.node_helpers import marker, new_stack, node_doc, post
from tests.integration.stack import Server, Stack, running_stack
from tests.integration.test_workers import wait_listeners

pytestmark = pytest.mark.skipif(shutil.which("redis-cli") is None, reason="needs redis-cli")


def _port_pair_free(port: int) -> bool:
    for p in (port, port + 10000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                return False
    return True


def _free_cluster_ports(n: int) -> list[int]:
    ports: list[int] = []
    candidate = 21000
    while len(ports) < n:
        if _port_pair_free(candidate):
            ports.append(candidate)
        candidate += 1
    return ports


def _cli(port: int, *args: str) -> str:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10
    )
    return out.stdout


class Cluster:
    """Six redis-servers (harness children) made into a cluster: three masters, a replica each."""

    def __init__(self, tmp: Path) -> None:
        self.ports = _free_cluster_ports(6)
        self.tmp = tmp
        self.servers = Children()
        self.procs: dict[int, Child] = {}

    def start(self) -> None:
        for port in self.ports:
            child = redis_child(
                port, self.tmp, self.tmp / f"redis-{port}.log",
                "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", "1000",
                "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
                name=f"redis-{port}",
            )  # fmt: skip
            self.procs[port] = self.servers.start(child)
        for port in self.ports:
            wait_port(port, self.procs[port])
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "1",
             "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self.wait_ok()

    def live(self) -> list[int]:
        return [p for p, child in self.procs.items() if child.running]

    def wait_ok(self) -> None:
        live = self.live()
        wait_until(
            lambda: all("cluster_state:ok" in _cli(p, "CLUSTER", "INFO") for p in live),
            None,
            "the cluster did not reach cluster_state:ok",
        )
        # A replica can only take over once its initial sync is done.
        wait_until(
            lambda: all(
                "master_link_status:up" in info or "role:master" in info
                for info in (_cli(p, "INFO", "replication") for p in live)
            ),
            None,
            "the replicas did not finish their initial sync",
        )

    def master_of(self, key: str) -> int:
        """Port of the master serving ``key``'s slot."""
        slot = int(_cli(self.ports[0], "CLUSTER", "KEYSLOT", key).strip())
        live = self.live()[0]
        for line in _cli(live, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for spec in fields[8:]:
                lo, _, hi = spec.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return int(fields[1].split(":")[1].split("@")[0])
        raise AssertionError(f"no master for slot {slot}")

    def kill(self, port: int) -> None:
        self.procs[port].stop(sig=signal.SIGKILL)

    def stop(self) -> None:
        self.servers.stop_all()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def stack(tmp_path: Path, pg_databases: tuple[str, str], cluster: Cluster) -> Iterator[Stack]:
    url = f"redis://127.0.0.1:{cluster.ports[0]}"
    node = {"redis_cluster": True, "sync_grace": 3.0, "redis_retry_after": 0.2}
    doc = node_doc(pg_databases, url, node=node)
    with running_stack(tmp_path, doc, [("clustered", None), ("clustered", None)]) as st:
        yield st


def nodes(st: Stack) -> list[str]:
    return [s.url for s in st.servers if s.kind == "node"]


async def test_hits_coalescing_and_purge_on_cluster(stack: Stack) -> None:
    a, b = nodes(stack)
    conn = await asyncpg.connect(dsn_for(TEST_DB))
    await conn.execute("CREATE TABLE IF NOT EXISTS cl_t (k text PRIMARY KEY, v int)")
    key = marker("cl")
    await conn.execute("INSERT INTO cl_t VALUES ($1, 1)", key)
    m = marker()
    body = {
        "sql": "SELECT ce_mark($1) AS m, v FROM cl_t, pg_sleep(0.2) WHERE k = $2",
        "params": [m, key],
        "cacheStrategy": {"ttl": 300, "tags": ["cl_tag"]},
    }
    async with aiohttp.ClientSession() as http:
        replies = await asyncio.gather(
            *(post(http, (a, b)[i % 2], body, API_KEY_A) for i in range(60))
        )
        assert {r.status for r in replies} == {200}
        assert all(r.body["rows"] == [[m, 1]] for r in replies)
        assert await executions(m) == 1  # coalesced over two processes on the cluster
        hit = await post(http, b, body, API_KEY_A)
        assert hit.cache_status == "ttl"
        # The entry lives in one of the tenant's slots, not a single tenant-wide slot.
        assert Layout(CLUSTER_SHARDS).entry("acme", hit.info["signature"]).startswith("ce:{acme.")
        await conn.execute("UPDATE cl_t SET v = 2 WHERE k = $1", key)
        done = await post(
            http, a, {"tags": ["cl_tag"], "wait": 10}, API_KEY_A, path="/v1/invalidate", fmt="json"
        )
        assert "clustered" in done.body["appliedRegions"], done.body
        after = await post(http, b, body, API_KEY_A)
        assert after.cache_status == "miss" and after.body["rows"] == [[m, 2]]
    await conn.close()


@pytest.mark.slow
async def test_master_failover_keeps_answering(stack: Stack, cluster: Cluster) -> None:
    a, _ = nodes(stack)
    m = marker()
    body = {"sql": "SELECT $1::text AS m", "params": [m], "cacheStrategy": {"ttl": 300}}
    async with aiohttp.ClientSession() as http:
        first = await post(http, a, body, API_KEY_A)
        assert first.cache_status == "miss"
        assert (await post(http, a, body, API_KEY_A)).cache_status == "ttl"
        victim = cluster.master_of(Layout(CLUSTER_SHARDS).entry("acme", first.info["signature"]))
        cluster.kill(victim)
        statuses = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            reply = await post(http, a, body, API_KEY_A)
            assert reply.status == 200, reply.body  # never an error while Redis fails over
            assert reply.body["rows"] == [[m]]
            statuses.append(reply.cache_status)
            if statuses[-3:] == ["ttl"] * 3:
                break
            await asyncio.sleep(0.2)
        assert statuses[-3:] == ["ttl"] * 3, statuses  # caching resumed on the new master
        cluster.wait_ok()


async def test_swr_lock_and_rate_limit_on_cluster(
    tmp_path: Path, pg_databases: tuple[str, str], cluster: Cluster
) -> None:
    url = f"redis://127.0.0.1:{cluster.ports[0]}"
    st = new_stack(
        tmp_path,
        pg_databases,
        url,
        node={"redis_cluster": True, "sync_grace": 3.0},
        rate_limit={"rate": 0.5, "burst": 40},
    )
    st.start_origin()
    st.start_node(region="clustered")
    st.start_node(region="clustered")
    try:
        a, b = nodes(st)
        m = marker()
        body = {
            "sql": "SELECT ce_mark($1) AS m",
            "params": [m],
            "cacheStrategy": {"ttl": 1, "swr": 60},
        }
        async with aiohttp.ClientSession() as http:
            assert (await post(http, a, body, API_KEY_A)).cache_status == "miss"
            await asyncio.sleep(1.2)
            replies = await asyncio.gather(
                *(post(http, (a, b)[i % 2], body, API_KEY_A) for i in range(20))
            )
            assert {r.cache_status for r in replies} <= {"swr", "ttl"}
            await asyncio.sleep(0.5)
            assert await executions(m) == 2  # one refresh for the region, over the cluster
            # The rate limit bucket is one per key for the whole region, on the cluster too.
            statuses = [
                (await post(http, (a, b)[i % 2], body, API_KEY_A)).status for i in range(30)
            ]
            assert 429 in statuses
    finally:
        st.stop_all()


async def test_node_sets_redis_up_before_serving_on_cluster(
    tmp_path: Path, pg_databases: tuple[str, str], cluster: Cluster
) -> None:
    """The first traffic after start, over two worker processes: every process already uses
    the region's bucket (none falls back to a local one) and its purge feed is subscribed."""
    url = f"redis://127.0.0.1:{cluster.ports[0]}"
    st = new_stack(
        tmp_path,
        pg_databases,
        url,
        node={"redis_cluster": True},
        rate_limit={"rate": 0.5, "burst": 4},
    )
    origin = st.start_origin()
    node = st.add(
        Server("node", free_port(), st.config, ["--workers", "2", "--origin-url", origin.url])
    )
    try:
        wait_listeners(node.port, 2)
        body = {"sql": "SELECT 1 AS one", "cacheStrategy": {"ttl": 60}}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            replies = await asyncio.gather(
                *(post(http, node.url, body, API_KEY_A) for _ in range(48))
            )
        allowed = sum(r.status == 200 for r in replies)
        # The burst of 4, plus at most one token refilled while the burst is answered.
        assert 4 <= allowed <= 5, (allowed, node.logs()[-3000:])
        assert {r.status for r in replies} == {200, 429}
        logs = node.logs()
        assert "rate_limit_redis_unavailable" not in logs, logs[-3000:]
        assert "purge_feed_lost" not in logs, logs[-3000:]
        assert "redis_not_ready" not in logs, logs[-3000:]
    finally:
        st.stop_all()


async def test_one_master_down_keeps_hits_on_the_other_masters(
    tmp_path: Path, pg_databases: tuple[str, str], cluster: Cluster
) -> None:
    """The breaker opens for the failed node only: keys on healthy masters keep hitting."""
    for port in cluster.ports:
        # Healthy masters keep serving their slots while another one is down (docs/deploy.md).
        _cli(port, "CONFIG", "SET", "cluster-require-full-coverage", "no")
    url = f"redis://127.0.0.1:{cluster.ports[0]}"
    st = new_stack(
        tmp_path,
        pg_databases,
        url,
        # Long enough that a breaker covering the whole cluster would bypass every key
        # for the whole test; hits come from Redis, not from the in-process tier.
        node={
            "redis_cluster": True,
            "redis_retry_after": 5.0,
            "sync_grace": 4.0,
            "memory_cache_mb": 0,
        },
    )
    st.start_origin()
    node = st.start_node(region="clustered")
    layout = Layout(CLUSTER_SHARDS)
    try:
        async with aiohttp.ClientSession() as http:
            by_master: dict[int, list[dict[str, Any]]] = {}
            for _ in range(24):
                body = {
                    "sql": "SELECT $1::text AS m",
                    "params": [marker()],
                    "cacheStrategy": {"ttl": 300},
                }
                first = await post(http, node.url, body, API_KEY_A)
                assert first.cache_status == "miss"
                assert (await post(http, node.url, body, API_KEY_A)).cache_status == "ttl"
                entry = layout.entry("acme", first.info["signature"])
                by_master.setdefault(cluster.master_of(entry), []).append(body)
            assert len(by_master) == 3, by_master.keys()
            # Not the master of the region's applier lease or of the tenant's progress:
            # without those the region cannot apply purges, and after sync_grace it rightly
            # stops vouching for any entry (misses, not bypasses).
            applier = {
                cluster.master_of(k) for k in (layout.leader("clustered"), layout.applied("acme"))
            }
            victim = next(port for port in by_master if port not in applier)
            replica = next(
                p
                for p in cluster.ports
                if f"master_port:{victim}" in _cli(p, "INFO", "replication")
            )
            # Keep the victim's slots down (no failover) for the length of the test.
            _cli(replica, "CONFIG", "SET", "cluster-replica-no-failover", "yes")
            cluster.kill(victim)
            healthy = [b for port, bodies in by_master.items() if port != victim for b in bodies]
            deadline = time.monotonic() + 6.0
            rounds = 0
            while time.monotonic() < deadline:
                down = await post(
                    http, node.url, by_master[victim][rounds % len(by_master[victim])], API_KEY_A
                )
                assert down.status == 200 and down.info.get("cacheError") == "redis_unavailable"
                replies = await asyncio.gather(
                    *(post(http, node.url, b, API_KEY_A) for b in healthy)
                )
                statuses = [(r.cache_status, r.info.get("cacheError")) for r in replies]
                assert statuses == [("ttl", None)] * len(healthy), statuses
                rounds += 1
            assert rounds >= 3
    finally:
        st.stop_all()
