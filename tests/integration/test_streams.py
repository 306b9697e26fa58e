"""Change streams: committed row changes as server-sent events at any region.

One origin (tenant ``acme`` with ``change_streams = true`` on its own database, set up
with the real setup command; ``globex`` without streams) and two regions. Writes come
from a separate asyncpg connection, bypassing cache-edge, as another service's would.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import (
    API_KEY_A,
    API_KEY_B,
    RedisLease,
    dsn_for,
    make_settings_doc,
    sha,
)
from tests.integration.capture_helpers import (
    captured,
    execute,
    prepare_database,
    running_with_capture,
)
from tests.integration.stack import Stack

STREAM_DB = "cache_edge_streams"
STREAM_DB_B = "cache_edge_streams_b"  # globex's own database
API_KEY_C = "ce_test_key_tenant_c_no_streams"
BUFFER = 200  # events a subscriber may fall behind before it is cut off (node.stream_buffer)

SCHEMA = """
DROP TABLE IF EXISTS s_orders, s_other;
CREATE TABLE s_orders (id int PRIMARY KEY, total numeric NOT NULL, note text, tags text[]);
CREATE TABLE s_other (id int PRIMARY KEY, pad text);
"""


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, pg_databases: tuple[str, str], redis_dbs: RedisLease
) -> Iterator[Stack]:
    for name in (STREAM_DB, STREAM_DB_B):
        asyncio.run(prepare_database(name, SCHEMA))
    region_a, region_b = redis_dbs("region-a"), redis_dbs("region-b")
    doc = make_settings_doc(
        dsn_for(STREAM_DB),
        dsn_for(STREAM_DB_B),
        node={"redis_url": region_a, "stream_buffer": BUFFER, "stream_heartbeat": 1.0},
    )
    tenants: list[dict[str, Any]] = doc["tenants"]  # type: ignore[assignment]
    tenants[0]["change_streams"] = True
    tenants[1]["change_streams"] = True
    tenants.append(
        {"id": "initech", "api_keys_sha256": [sha(API_KEY_C)], "database_url": pg_databases[1]}
    )
    st = Stack(tmp_path_factory.mktemp("streams"), doc)
    regions = [("region-a", region_a), ("region-b", region_b)]
    with running_with_capture(st, ["acme", "globex"], regions):
        yield st


def _nodes(st: Stack) -> list[str]:
    return [s.url for s in st.servers if s.kind == "node"]


@dataclass
class Sse:
    event: str
    data: Any
    id: str | None


class Subscriber:
    """A client of GET /v1/stream reading events the way an EventSource would."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.comments = 0

    async def next(self, timeout: float = 10.0) -> Sse:
        return await asyncio.wait_for(self._next(), timeout)

    async def _next(self) -> Sse:
        fields: dict[str, str] = {}
        while True:
            raw = await self.resp.content.readline()
            if not raw:
                raise EOFError("stream ended")
            line = raw.decode().rstrip("\n")
            if not line:
                if fields:
                    return Sse(
                        fields.get("event", "message"), json.loads(fields["data"]), fields.get("id")
                    )
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            name, _, value = line.partition(": ")
            fields[name] = value

    async def changes(self, count: int, timeout: float = 15.0) -> list[Sse]:
        out = []
        while len(out) < count:
            ev = await self.next(timeout)
            assert ev.event == "change", ev
            out.append(ev)
        return out


@pytest.fixture
async def subscribe(
    http: aiohttp.ClientSession,
) -> AsyncIterator[Any]:
    opened: list[aiohttp.ClientResponse] = []

    async def open_stream(
        url: str,
        query: str = "tables=public.s_orders",
        key: str = API_KEY_A,
        headers: dict[str, str] | None = None,
    ) -> Subscriber:
        if "cursor" not in query and not headers:
            # Start after everything committed so far (earlier tests' writes too).
            await captured(*((STREAM_DB_B, "globex") if key == API_KEY_B else (STREAM_DB, "acme")))
        resp = await http.get(
            f"{url}/v1/stream?{query}",
            headers={"Authorization": f"Bearer {key}", **(headers or {})},
        )
        opened.append(resp)
        if resp.status != 200:
            return Subscriber(resp)
        sub = Subscriber(resp)
        ready = await sub.next()
        assert ready.event == "ready", ready
        sub.ready_cursor = ready.data["cursor"]  # type: ignore[attr-defined]
        return sub

    yield open_stream
    for resp in opened:
        resp.close()


async def db(sql: str, *args: Any) -> None:
    await execute(STREAM_DB, sql, *args)


async def test_changes_arrive_in_commit_order_in_both_regions(world: Stack, subscribe: Any) -> None:
    subs = [await subscribe(url) for url in _nodes(world)]
    conn = await asyncpg.connect(dsn_for(STREAM_DB))
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO s_orders VALUES (1, 9.50, 'first', '{a,b}'), (2, 3, NULL, NULL)"
            )
        await conn.execute("UPDATE s_orders SET total = 10.25 WHERE id = 1")
        await conn.execute("INSERT INTO s_other VALUES (1, 'not subscribed')")
        await conn.execute("DELETE FROM s_orders WHERE id = 2")
    finally:
        await conn.close()
    for sub in subs:
        events = await sub.changes(4)
        assert [(e.data["op"], e.data["table"]) for e in events] == [
            ("insert", "public.s_orders"),
            ("insert", "public.s_orders"),
            ("update", "public.s_orders"),
            ("delete", "public.s_orders"),
        ]
        first, second, update, delete = (e.data for e in events)
        assert first["new"] == {"id": 1, "total": "9.50", "note": "first", "tags": ["a", "b"]}
        assert second["new"] == {"id": 2, "total": "3", "note": None, "tags": None}
        assert first["xid"] == second["xid"] != update["xid"]  # one transaction, then another
        assert update["new"]["total"] == "10.25" and update["old"] is None
        assert delete["old"] == {"id": 2} and delete["oldIsKey"] is True
        assert delete["new"] is None
        cursors = [e.id for e in events]
        assert cursors == sorted(cursors) and len(set(cursors)) == 4
        assert all(e.id == e.data["cursor"] for e in events)
        assert update["commitTime"] <= delete["commitTime"]
    await db("DELETE FROM s_orders; DELETE FROM s_other")


async def test_rolled_back_transaction_delivers_nothing(world: Stack, subscribe: Any) -> None:
    sub = await subscribe(_nodes(world)[0])
    conn = await asyncpg.connect(dsn_for(STREAM_DB))
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("INSERT INTO s_orders VALUES (50, 1, 'rolled back')")
        await tx.rollback()
        await conn.execute("INSERT INTO s_orders VALUES (51, 1, 'committed')")
    finally:
        await conn.close()
    (event,) = await sub.changes(1)
    assert event.data["new"]["note"] == "committed"
    with pytest.raises(TimeoutError):
        await sub.changes(1, timeout=1.5)  # and nothing else, rolled back or not
    await db("DELETE FROM s_orders WHERE id IN (50, 51)")


async def test_resume_with_cursor_loses_nothing(world: Stack, subscribe: Any) -> None:
    url = _nodes(world)[1]
    sub = await subscribe(url)
    await db("INSERT INTO s_orders SELECT g, g, 'batch1' FROM generate_series(100, 104) g")
    seen = await sub.changes(5)
    sub.resp.close()  # the client disconnects...
    await db("INSERT INTO s_orders SELECT g, g, 'batch2' FROM generate_series(105, 109) g")
    await db("UPDATE s_orders SET note = 'later' WHERE id = 100")
    resumed = await subscribe(url, headers={"Last-Event-ID": seen[-1].id})
    assert resumed.ready_cursor == seen[-1].id
    missed = await resumed.changes(6)
    assert [e.data["new"]["id"] for e in missed] == [105, 106, 107, 108, 109, 100]
    assert missed[-1].data["new"]["note"] == "later"
    assert all(e.id > seen[-1].id for e in missed)  # no duplicates of what was seen
    # The same resume in the other region, via ?cursor=, and only deletes: none yet.
    other = await subscribe(
        _nodes(world)[0], f"tables=public.s_orders&ops=delete&cursor={seen[0].id}"
    )
    await db("DELETE FROM s_orders WHERE id BETWEEN 100 AND 109")
    deletes = await other.changes(10)
    assert {e.data["op"] for e in deletes} == {"delete"}
    assert sorted(e.data["old"]["id"] for e in deletes) == list(range(100, 110))


async def test_slow_subscriber_is_cut_off_while_a_fast_one_keeps_up(
    world: Stack, subscribe: Any
) -> None:
    url = _nodes(world)[0]
    host, port = url.removeprefix("http://").split(":")
    # A client that subscribes and then does not read: a raw socket with a small buffer.
    reader, writer = await asyncio.open_connection(host, int(port), limit=2**16)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(
        (
            "GET /v1/stream?tables=public.s_other HTTP/1.1\r\n"
            f"Host: {host}\r\nAuthorization: Bearer {API_KEY_A}\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    fast = await subscribe(url, "tables=public.s_other")
    await asyncio.sleep(0.5)  # the slow one's subscription is in place
    rows = 5000
    await db(
        "INSERT INTO s_other SELECT g, repeat('x', 1000) FROM generate_series(1000, $1) g",
        999 + rows,
    )
    # The fast one reads raw chunks as fast as it can and parses afterwards.
    raw = b""
    while raw.count(b"event: change") < rows:
        chunk = await asyncio.wait_for(fast.resp.content.readany(), 30)
        assert chunk and b"event: error" not in chunk, chunk[-300:]
        raw += chunk
    ids = [
        json.loads(line[6:])["new"]["id"] for line in raw.split(b"\n") if line.startswith(b"data: ")
    ]
    assert ids == list(range(1000, 1000 + rows))
    # Now the slow one reads: some events, then the reason it was cut off, then the end.
    data = b""
    while b"subscriber_too_slow" not in data:
        chunk = await asyncio.wait_for(reader.read(1 << 16), 10)
        assert chunk, data[-500:]
        data += chunk
    assert data.count(b"event: change") < rows
    writer.close()
    await db("DELETE FROM s_other")


async def test_bad_requests_get_clear_errors(world: Stack, subscribe: Any) -> None:
    url = _nodes(world)[0]
    cases = [
        ("tables=orders", API_KEY_A, 400, "bad_request"),
        ("tables=public.no_such_table", API_KEY_A, 400, "bad_request"),
        ("", API_KEY_A, 400, "bad_request"),
        ("tables=public.s_orders&ops=upsert", API_KEY_A, 400, "bad_request"),
        ("tables=public.s_orders&cursor=nonsense", API_KEY_A, 400, "bad_request"),
        ("tables=public.s_orders&cursor=0000000000000001-00000000", API_KEY_A, 410, "stream_gap"),
        ("tables=public.s_orders", "ce_wrong_key", 401, "unauthorized"),
        ("tables=public.s_orders", API_KEY_C, 409, "capture_unavailable"),
    ]
    for query, key, status, code in cases:
        sub = await subscribe(url, query, key)
        body = await sub.resp.json()
        assert (sub.resp.status, body["error"]["code"]) == (status, code), (query, body)
        assert body["error"]["message"]
    missing = await subscribe(url, "tables=public.no_such_table")
    assert "public.no_such_table" in (await missing.resp.json())["error"]["message"]


async def test_idle_streams_get_keepalives(world: Stack, subscribe: Any) -> None:
    sub = await subscribe(_nodes(world)[1])
    with pytest.raises(TimeoutError):
        await sub.next(timeout=2.5)
    assert sub.comments >= 1  # ": keepalive" every stream_heartbeat (1 s here)


async def test_tenants_see_only_their_own_database(world: Stack, subscribe: Any) -> None:
    url = _nodes(world)[0]
    acme = await subscribe(url)
    globex = await subscribe(url, key=API_KEY_B)
    await db("INSERT INTO s_orders VALUES (7001, 1, 'acme row')")
    conn = await asyncpg.connect(dsn_for(STREAM_DB_B))
    try:
        await conn.execute("INSERT INTO s_orders VALUES (7002, 2, 'globex row')")
    finally:
        await conn.close()
    (a,) = await acme.changes(1)
    (g,) = await globex.changes(1)
    assert a.data["new"]["note"] == "acme row" and g.data["new"]["note"] == "globex row"
    with pytest.raises(TimeoutError):
        await acme.changes(1, timeout=1.0)  # globex's row never reaches acme
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        text = await resp.text()
    assert 'cache_edge_node_stream_subscribers{tenant="acme"} 1.0' in text
    assert 'cache_edge_node_stream_subscribers{tenant="globex"} 1.0' in text
    await db("DELETE FROM s_orders WHERE id = 7001")


async def test_a_huge_transaction_arrives_whole_and_in_order(world: Stack, subscribe: Any) -> None:
    """Read and stored in chunks (origin/capture/reader.py), delivered as one ordered run."""
    sub = await subscribe(_nodes(world)[1], "tables=public.s_other")
    rows = 12_000  # more than two capture chunks
    await db("INSERT INTO s_other SELECT g, 'p' FROM generate_series(1, $1) g", rows)
    raw = b""
    while raw.count(b"event: change") < rows:
        chunk = await asyncio.wait_for(sub.resp.content.readany(), 30)
        assert chunk and b"event: error" not in chunk, chunk[-300:]
        raw += chunk
    events = [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]
    assert [e["new"]["id"] for e in events] == list(range(1, rows + 1))
    assert len({e["xid"] for e in events}) == 1
    assert [e["cursor"] for e in events] == sorted(e["cursor"] for e in events)
    await db("DELETE FROM s_other")
