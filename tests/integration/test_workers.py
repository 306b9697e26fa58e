"""`--workers N`: several processes on one port, crash restart, graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from cache_edge.devtools.harness import free_port
from tests.conftest import API_KEY_A
from tests.integration.node_helpers import marker, new_stack, post
from tests.integration.stack import Server, Stack


def children(pid: int) -> set[int]:
    """Live (not zombie) child processes of ``pid``."""
    out = subprocess.run(
        ["ps", "-o", "pid=,stat=", "--ppid", str(pid)], capture_output=True, text=True
    )
    rows = [line.split() for line in out.stdout.splitlines() if line.strip()]
    return {int(p) for p, stat in rows if not stat.startswith("Z")}


def wait_listeners(port: int, n: int, timeout: float = 15.0) -> None:
    """Until ``n`` sockets listen on ``port`` (every worker has bound it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True
        ).stdout
        if len([ln for ln in out.splitlines() if ln.strip()]) == n:
            return
        time.sleep(0.05)
    raise AssertionError(f"expected {n} listeners on {port}")


def wait_children(pid: int, n: int, timeout: float = 15.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = children(pid)
        if len(kids) == n:
            return kids
        time.sleep(0.1)
    raise AssertionError(f"expected {n} workers, have {children(pid)}")


@pytest.fixture
async def stack(
    tmp_path: Path, pg_databases: tuple[str, str], flushed_redis: str
) -> AsyncIterator[Stack]:
    st = new_stack(tmp_path, pg_databases, flushed_redis)
    try:
        yield st
    finally:
        st.stop_all()


@pytest.mark.slow
async def test_node_workers_restart_and_drain(stack: Stack) -> None:
    origin = stack.start_origin(workers="2")
    assert origin.proc is not None
    assert len(wait_children(origin.proc.pid, 2)) == 2
    node = stack.add(
        Server("node", free_port(), stack.config, ["--workers", "2", "--origin-url", origin.url])
    )
    assert node.proc is not None
    first = wait_children(node.proc.pid, 2)
    wait_listeners(node.port, 2)
    async with aiohttp.ClientSession() as http:
        m = marker()
        body = {"sql": "SELECT $1::text AS m", "params": [m], "cacheStrategy": {"ttl": 60}}
        statuses = [(await post(http, node.url, body, API_KEY_A)).cache_status for _ in range(6)]
        assert statuses[0] == "miss" and set(statuses[1:]) == {"ttl"}

        # A worker crashes: the others keep serving and the supervisor replaces it.
        victim = sorted(first)[0]
        subprocess.run(["kill", "-9", str(victim)], check=True)
        wait_listeners(node.port, 1)  # until its listening socket is really gone
        # Connections the dead worker held die with it; new ones reach the survivor.
        fresh = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=fresh) as new_http:
            for _ in range(10):
                reply = await post(new_http, node.url, body, API_KEY_A)
                assert reply.status == 200
        second = wait_children(node.proc.pid, 2)
        assert victim not in second and len(second) == 2

        # SIGTERM with requests in flight: every one of them completes.
        slow = {"sql": "SELECT pg_sleep(1.5) IS NOT NULL AS done"}
        in_flight = [asyncio.create_task(post(http, node.url, slow, API_KEY_A)) for _ in range(10)]
        await asyncio.sleep(0.5)
        node.proc.send_signal(signal.SIGTERM)
        replies = await asyncio.gather(*in_flight)
        assert [r.status for r in replies] == [200] * 10
        assert all(r.body["rows"] == [[True]] for r in replies)
        assert await asyncio.to_thread(node.proc.wait, 20) == 0
        assert children(node.proc.pid) == set()
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(http, node.url, body, API_KEY_A)
