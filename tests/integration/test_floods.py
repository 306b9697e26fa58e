"""Floods and slow clients against real processes: thousands of idle connections to a
node, a connection cap, and an origin that stops answering for a while (SIGSTOP).

bench/scenarios/idle.py measures the same at 10,000 connections.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from cache_edge.common.wire import json_dumps
from cache_edge.server.serving import raise_fd_limit
from tests.conftest import API_KEY_A
from tests.integration.node_helpers import Reply, marker, new_stack, post
from tests.integration.stack import Server, Stack

BIG = 100_000  # bytes of the cached answer each idle connection received last


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_files_limit(pid: int) -> tuple[int, int]:
    """A process's (soft, hard) RLIMIT_NOFILE, as the kernel reports it."""
    with open(f"/proc/{pid}/limits") as f:
        line = next(x for x in f if x.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


def request_bytes(body: object | None = None) -> bytes:
    """One keep-alive HTTP/1.1 request: a POST /v1/query of ``body``, or GET /healthz."""
    if body is None:
        return b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n"
    data = json_dumps(body)
    head = (
        "POST /v1/query HTTP/1.1\r\nHost: node\r\n"
        f"Authorization: Bearer {API_KEY_A}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    """Send one request on an open connection and read its whole answer."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return status, await reader.readexactly(length)


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@asynccontextmanager
async def idle_connections(
    node: Server, count: int, request: bytes, parallel: int = 100
) -> AsyncIterator[list[Conn]]:
    """``count`` connections that each made ``request`` once and now sit idle."""
    conns: list[Conn] = []
    gate = asyncio.Semaphore(parallel)

    async def one() -> None:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
            conns.append((reader, writer))
            status, _ = await exchange(reader, writer, request)
            assert status == 200

    try:
        await asyncio.gather(*(one() for _ in range(count)))
        yield conns
    finally:
        for _, writer in conns:
            writer.close()


@contextmanager
def fd_room(needed: int) -> Iterator[None]:
    _, soft, _ = raise_fd_limit()
    if soft < needed:
        pytest.skip(f"this test needs {needed} file descriptors; the limit is {soft}")
    yield


@pytest.mark.slow
async def test_idle_connections_cost_little_memory_and_others_are_still_served(
    tmp_path: Path, pg_databases: tuple[str, str], flushed_redis: str
) -> None:
    """2,000 idle keep-alive connections, each of which last received a 100 KB answer."""
    count = 2000
    st = new_stack(tmp_path, pg_databases, flushed_redis)
    big = {"sql": f"SELECT repeat('x', {BIG}) AS r, $1::text AS m", "params": [marker()]}
    big["cacheStrategy"] = {"ttl": 600}
    try:
        st.start_origin()
        node = st.start_node()
        assert node.proc is not None
        async with aiohttp.ClientSession() as http:
            assert (await post(http, node.url, big, API_KEY_A)).cache_status == "miss"
            for _ in range(20):  # warm the hit path
                assert (await post(http, node.url, big, API_KEY_A)).cache_status == "ttl"
        with fd_room(count + 500):
            base = rss(node.proc.pid)
            # Few at a time: many 100 KB answers in flight at once would leave their peak
            # of write buffers in the RSS, which is not what an idle connection costs.
            async with idle_connections(node, count, request_bytes(big), parallel=20) as conns:
                await asyncio.sleep(1)
                per_connection = (rss(node.proc.pid) - base) / count
                # Measured about 12 KB; before answers were dropped once sent, 119 KB.
                assert per_connection < 32_000, per_connection
                # A client on its own connection is served as usual meanwhile.
                latencies = []
                async with aiohttp.ClientSession() as http:
                    for _ in range(20):
                        started = time.perf_counter()
                        reply = await post(http, node.url, big, API_KEY_A)
                        latencies.append(time.perf_counter() - started)
                        assert reply.status == 200 and reply.cache_status == "ttl"
                assert statistics.median(latencies) < 0.1, latencies
                # And the idle ones are still open and usable.
                for reader, writer in conns[:10]:
                    assert (await exchange(reader, writer, request_bytes()))[0] == 200
    finally:
        st.stop_all()


async def test_node_raises_its_file_descriptor_limit_at_start(
    tmp_path: Path, pg_databases: tuple[str, str], flushed_redis: str
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 1024:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")
    st = new_stack(tmp_path, pg_databases, flushed_redis)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # inherited by the node
    try:
        node = st.start_node(origin_url="http://127.0.0.1:1")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        assert node.proc is not None
        assert open_files_limit(node.proc.pid) == (hard, hard)
    finally:
        st.stop_all()


async def test_at_the_connection_cap_the_longest_idle_connection_makes_room(
    tmp_path: Path, pg_databases: tuple[str, str], flushed_redis: str
) -> None:
    st = new_stack(tmp_path, pg_databases, flushed_redis, node={"max_connections": 20})
    slow = {"sql": "SELECT pg_sleep(1.5)::text AS slept"}
    try:
        st.start_origin()
        node = st.start_node()
        busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", node.port)
        busy = asyncio.create_task(exchange(busy_reader, busy_writer, request_bytes(slow)))
        await asyncio.sleep(0.2)  # its request is in progress: the oldest, but busy
        # One at a time: the lists are then in order of last activity.
        async with (
            idle_connections(node, 19, request_bytes(), parallel=1) as idle,
            idle_connections(node, 5, request_bytes(), parallel=1) as newcomers,
        ):
            # Room was made by closing the five longest idle, not the busy one.
            for reader, _ in idle[:5]:
                assert await asyncio.wait_for(reader.read(), 2) == b""
            for reader, writer in idle[5:] + newcomers:
                assert (await exchange(reader, writer, request_bytes()))[0] == 200
            status, _ = await busy
            assert status == 200
        busy_writer.close()
    finally:
        st.stop_all()


def q(m: str, **strategy: object) -> dict[str, object]:
    body: dict[str, object] = {"sql": "SELECT $1::text AS m", "params": [m]}
    if strategy:
        body["cacheStrategy"] = strategy
    return body


@pytest.mark.slow
async def test_hung_origin_bounded_waits_503_for_the_excess_hits_and_stale_still_served(
    tmp_path: Path, pg_databases: tuple[str, str], flushed_redis: str
) -> None:
    """The origin is stopped (SIGSTOP: it accepts connections and never answers)."""
    waiting, timeout = 10, 4.0
    st: Stack = new_stack(
        tmp_path,
        pg_databases,
        flushed_redis,
        node={
            "origin_timeout": timeout,
            "origin_max_waiting": waiting,
            "origin_breaker_failures": 3,
            "origin_probe_interval": 1.0,
            "sync_grace": 120.0,  # the region keeps vouching for its entries meanwhile
        },
    )
    hit, stale = q(marker(), ttl=600), q(marker(), ttl=1, staleIfError=600)
    origin = st.start_origin()
    node = st.start_node()
    assert origin.proc is not None
    stopped = False
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def timed(body: dict[str, object]) -> tuple[Reply, float]:
        started = time.perf_counter()
        reply = await post(http, node.url, body, API_KEY_A)
        return reply, time.perf_counter() - started

    try:
        assert (await post(http, node.url, hit, API_KEY_A)).cache_status == "miss"
        assert (await post(http, node.url, stale, API_KEY_A)).cache_status == "miss"
        await asyncio.sleep(1.1)  # `stale` is past its ttl: it needs the origin now
        os.kill(origin.proc.pid, signal.SIGSTOP)
        stopped = True

        # 1. Many concurrent misses: `waiting` of them wait, the rest get 503 at once.
        misses = [asyncio.create_task(timed(q(marker()))) for _ in range(40)]
        done, pending = await asyncio.wait(misses, timeout=timeout / 2)
        assert len(pending) == waiting, (len(done), len(pending))
        for task in done:
            reply, took = task.result()
            assert reply.status == 503 and reply.code == "origin_overloaded", reply.body
            assert reply.headers["Retry-After"] == "1"
        # Hits and stale answers meanwhile: at once, not after the origin's timeout.
        reply, took = await timed(hit)
        assert reply.status == 200 and reply.cache_status == "ttl" and took < 1, (reply, took)
        reply, took = await timed(stale)
        assert reply.status == 200 and reply.cache_status == "stale", reply.body
        assert reply.info["error"] == "origin_overloaded" and took < 1

        # 2. The waiting ones time out; that many failures in a row open the circuit.
        for reply, took in await asyncio.gather(*pending):
            assert reply.status == 502 and reply.code == "origin_unavailable", reply.body
            assert took >= timeout - 0.5
        reply, took = await timed(q(marker()))
        assert reply.status == 503 and reply.code == "origin_down", reply.body
        assert int(reply.headers["Retry-After"]) >= 1 and took < 1
        reply, took = await timed(stale)
        assert reply.cache_status == "stale" and reply.info["error"] == "origin_down"
        assert took < 1
        reply, _ = await timed(hit)
        assert reply.status == 200 and reply.cache_status == "ttl"

        # 3. The origin comes back: within a probe interval or two, misses are answered.
        await asyncio.sleep(1.2)  # a probe is in flight, waiting on the stopped origin
        os.kill(origin.proc.pid, signal.SIGCONT)
        stopped = False
        started = time.monotonic()
        while True:
            reply, _ = await timed(q(marker()))
            if reply.status == 200:
                break
            assert reply.code in ("origin_down", "origin_unavailable"), reply.body
            assert time.monotonic() - started < 5, "no recovery"
            await asyncio.sleep(0.1)
        assert (await post(http, node.url, stale, API_KEY_A)).cache_status == "miss"
    finally:
        if stopped:
            os.kill(origin.proc.pid, signal.SIGCONT)
        await http.close()
        st.stop_all()
        # Its 120 s lease (sync_grace) outlives the node in the purge log, where purges of
        # the next test modules would wait for region "local": end it with the node.
        conn = await asyncpg.connect(pg_databases[0])
        try:
            await conn.execute(
                "UPDATE cache_edge.region_progress SET live_until = now() WHERE region = 'local'"
            )
        finally:
            await conn.close()
