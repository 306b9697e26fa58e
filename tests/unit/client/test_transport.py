"""Both clients against a fake node on loopback: headers, exact types, errors, keep-alive."""

from __future__ import annotations

import datetime as dt
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest

from cache_edge.client import AsyncClient, CacheStrategy, Client
from cache_edge.common.errors import OriginUnavailable, QueryError, RateLimited, Unauthorized
from cache_edge.common.wire import packb
from cache_edge.devtools.harness import free_port
from tests.unit.client.fake_node import API_KEY, Seen, running_fake_node

PARAMS: list[Any] = [
    1,
    "text",
    True,
    1.5,
    Decimal("12.30"),
    dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    dt.datetime(2024, 1, 2, 3, 4, 5),
    dt.date(2024, 1, 2),
    dt.time(1, 2, 3, 4),
    dt.timedelta(days=-1, seconds=5),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    b"\x00\xff",
    {"nested": [1, None, "x"]},
    [1, None, 3],
    None,
]


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[str, Seen]]:
    with running_fake_node() as running:
        yield running


def test_sync_client_sends_msgpack_and_restores_exact_types(node: tuple[str, Seen]) -> None:
    url, seen = node
    with Client(url, API_KEY) as db:
        row = db.fetchrow("echo", *PARAMS)
    assert row is not None
    assert list(row) == PARAMS
    assert [type(v) for v in row] == [type(v) for v in PARAMS]
    headers = seen.headers[-1]
    assert headers["Content-Type"] == "application/msgpack"
    assert headers["Accept"] == "application/msgpack"
    assert headers["Authorization"] == f"Bearer {API_KEY}"


async def test_async_client_sends_msgpack_and_restores_exact_types(
    node: tuple[str, Seen],
) -> None:
    url, seen = node
    async with AsyncClient(url, API_KEY) as db:
        row = await db.fetchrow("echo", *PARAMS)
    assert row is not None
    assert list(row) == PARAMS
    assert [type(v) for v in row] == [type(v) for v in PARAMS]
    assert seen.headers[-1]["Content-Type"] == "application/msgpack"


def test_sync_methods(node: tuple[str, Seen]) -> None:
    url, seen = node
    strategy = CacheStrategy(ttl=60, tags=("t1",))
    start = len(seen.bodies)
    with Client(url, API_KEY) as db:
        first = db.fetch("sync methods", 7, "seven", cache=strategy)
        second = db.query("sync methods", 7, "seven", cache=strategy)
        assert first.info.cache_status == "miss"
        assert second.info.cache_status == "ttl" and second.info.hit
        assert second.info.region == "test-region"
        assert second.info.last_modified == dt.datetime(2024, 5, 1, 12, 0, 0, 250_000, dt.UTC)
        assert second.info.age == 1.5 and second.info.request_id == "req-1"
        assert db.fetchval("v", 7, "seven") == 7
        assert db.fetchval("v", 7, "seven", column=1) == "seven"
        assert db.fetchval("v", 7, "seven", column="c1") == "seven"
        assert db.fetchval("no rows") is None
        assert db.fetchrow("no rows") is None
        assert db.execute("UPDATE things") == 3
        results = db.transaction([("a", [1, 2]), ("b", [])], isolation="serializable")
        assert [r.rows[0]["n"] for r in results] == [2, 0]
        assert seen.bodies[-1]["isolationLevel"] == "serializable"
        assert db.invalidate(["products"], wait=2.0).pending_regions == ("c",)
        assert seen.bodies[-1] == {"tags": ["products"], "wait": 2.0}
        done = db.invalidate_all(wait=None)
        assert done.invalidation_id == "inv-7" and done.applied_regions == ("a", "b")
        assert seen.bodies[-1] == {"all": True}
    assert seen.bodies[start]["cacheStrategy"] == {"ttl": 60, "swr": 0, "tags": ["t1"]}


async def test_async_methods(node: tuple[str, Seen]) -> None:
    url, seen = node
    strategy = CacheStrategy(ttl=60)
    async with AsyncClient(url, API_KEY) as db:
        assert (await db.fetch("async methods", 1, cache=strategy)).info.cache_status == "miss"
        assert (await db.fetch("async methods", 1, cache=strategy)).info.cache_status == "ttl"
        assert await db.fetchval("v", 5) == 5
        assert await db.execute("DELETE") == 3
        results = await db.transaction(["x", ("y", [1])])
        assert [r.rows[0]["n"] for r in results] == [0, 1]
        assert results[0].info.request_id == "req-1"
        await db.invalidate(["a", "b"])
        assert seen.bodies[-1] == {"tags": ["a", "b"], "wait": 5.0}
        await db.invalidate_all(wait=1.0)
        assert seen.bodies[-1] == {"all": True, "wait": 1.0}


def test_typed_errors_from_the_node(node: tuple[str, Seen]) -> None:
    url, _ = node
    with Client(url, API_KEY) as db:
        with pytest.raises(QueryError) as info:
            db.fetch("missing table")
        assert info.value.extra["sqlstate"] == "42P01"
        assert info.value.extra["requestId"] == "req-err"
        with pytest.raises(RateLimited) as limited:
            db.fetch("rate limited")
        assert limited.value.retry_after == 7.0
        with pytest.raises(OriginUnavailable, match="HTTP 502"):
            db.fetch("html")
        # The connection survives an error answer and is reused.
        assert db.fetchval("v", 1) == 1
    with Client(url, "wrong key") as db, pytest.raises(Unauthorized):
        db.fetch("x")


async def test_async_typed_errors(node: tuple[str, Seen]) -> None:
    url, _ = node
    async with AsyncClient(url, API_KEY) as db:
        with pytest.raises(QueryError) as info:
            await db.fetch("missing table")
        assert info.value.code == "query_error"
        with pytest.raises(OriginUnavailable, match="HTTP 502"):
            await db.fetch("html")


def test_connection_refused_is_origin_unavailable_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, API_KEY) as db, pytest.raises(OriginUnavailable, match=f"cannot reach {url}"):
        db.fetch("SELECT 1")


async def test_async_connection_refused_is_origin_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with AsyncClient(url, API_KEY) as db:
        with pytest.raises(OriginUnavailable, match=f"cannot reach {url}"):
            await db.fetch("SELECT 1")


def test_timeouts_say_so(node: tuple[str, Seen]) -> None:
    url, _ = node
    with Client(url, API_KEY, timeout=0.2) as db, pytest.raises(OriginUnavailable, match=r"0\.2s"):
        db.fetch("slow")


async def test_async_timeouts_say_so(node: tuple[str, Seen]) -> None:
    url, _ = node
    async with AsyncClient(url, API_KEY, timeout=0.2) as db:
        with pytest.raises(OriginUnavailable, match=r"within 0\.2s"):
            await db.fetch("slow")


def test_sync_client_reuses_its_connection(node: tuple[str, Seen]) -> None:
    url, seen = node
    with Client(url, API_KEY) as db:
        before = set(seen.peers)
        for i in range(5):
            db.fetchval("v", i)
        assert len(seen.peers - before) == 1


async def test_async_client_reuses_its_connection(node: tuple[str, Seen]) -> None:
    url, seen = node
    async with AsyncClient(url, API_KEY) as db:
        before = set(seen.peers)
        for i in range(5):
            await db.fetchval("v", i)
        assert len(seen.peers - before) == 1


async def test_async_client_works_without_context_manager(node: tuple[str, Seen]) -> None:
    url, _ = node
    db = AsyncClient(url, API_KEY)
    try:
        assert await db.fetchval("v", 3) == 3
    finally:
        await db.close()


def test_sync_client_is_thread_safe(node: tuple[str, Seen]) -> None:
    url, _ = node
    with Client(url, API_KEY) as db, ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: db.fetchval("v", i), range(64)))
    assert got == list(range(64))


def _close_after_each_answer(server: socket.socket, stop: threading.Event) -> None:
    """A server that says keep-alive, then closes the connection anyway (as idle timeouts do)."""
    body = packb({"columns": [{"name": "n", "type": "int4"}], "rows": [[1]], "rowCount": 1})
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/msgpack\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    ).encode()
    server.settimeout(0.1)
    while not stop.is_set():
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            match = re.search(rb"Content-Length: (\d+)", data, re.I)
            assert match is not None
            length = int(match.group(1))
            while len(data.split(b"\r\n\r\n", 1)[1]) < length:
                data += conn.recv(65536)
            conn.sendall(head + body)
            time.sleep(0.05)


def test_sync_client_skips_a_connection_the_server_closed() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    thread = threading.Thread(target=_close_after_each_answer, args=(server, stop), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    try:
        with Client(url, API_KEY) as db:
            for _ in range(3):
                assert db.fetchval("SELECT 1") == 1
                time.sleep(0.2)  # the server has closed the idle connection by now
    finally:
        stop.set()
        thread.join(5)
        server.close()
