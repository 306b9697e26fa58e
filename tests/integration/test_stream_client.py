"""Change streams through the SDK and the CLI against a real origin, node and PostgreSQL.

Tenant ``acme`` has ``change_streams = true`` on its own database (set up with the real
setup command); ``globex`` has no streams. Writes come from a separate asyncpg
connection, bypassing cache-edge. Each test starts from a cursor read from a fresh
``ready`` event, so it sees exactly the changes committed after that point.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import signal
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from cache_edge.client import AsyncClient, Backoff, ChangeEvent, Client
from cache_edge.common.errors import BadRequest, CaptureUnavailable, Unauthorized
from tests.conftest import API_KEY_A, API_KEY_B, RedisLease, dsn_for, make_settings_doc
from tests.integration.capture_helpers import (
    execute,
    prepare_database,
    running_with_capture,
)
from tests.integration.stack import Server, Stack

STREAM_DB = "cache_edge_stream_client"
TABLE = "public.sc_items"
FAST = Backoff(initial=0.05, maximum=0.5)

SCHEMA = """
DROP TABLE IF EXISTS sc_items;
CREATE TABLE sc_items (id int PRIMARY KEY, name text NOT NULL, price numeric, tags text[]);
"""


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, pg_databases: tuple[str, str], redis_dbs: RedisLease
) -> Iterator[Stack]:
    asyncio.run(prepare_database(STREAM_DB, SCHEMA))
    node_redis = redis_dbs()
    doc = make_settings_doc(
        dsn_for(STREAM_DB),
        pg_databases[1],
        node={"redis_url": node_redis, "stream_heartbeat": 1.0},
    )
    tenants: list[dict[str, Any]] = doc["tenants"]  # type: ignore[assignment]
    tenants[0]["change_streams"] = True
    st = Stack(tmp_path_factory.mktemp("stream-client"), doc)
    with running_with_capture(st, ["acme"], [("sc-1", node_redis)]):
        yield st


def node_of(st: Stack) -> Server:
    return next(s for s in st.servers if s.kind == "node")


async def db(sql: str, *args: Any) -> None:
    await execute(STREAM_DB, sql, *args)


async def now_cursor(url: str) -> str:
    """The position a new subscription starts after (its ``ready`` event), read over HTTP."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{url}/v1/stream?tables={TABLE}", headers={"Authorization": f"Bearer {API_KEY_A}"}
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        head = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)
    assert head.startswith(b"event: ready\ndata: "), head
    return str(json.loads(head.split(b"data: ", 1)[1])["cursor"])


@contextlib.asynccontextmanager
async def collecting(
    url: str, cursor: str, **kw: Any
) -> AsyncIterator[tuple[list[ChangeEvent], asyncio.Task[None]]]:
    """The SDK's stream read into a list by a background task, as an application would."""
    got: list[ChangeEvent] = []

    async def run() -> None:
        async with AsyncClient(url, API_KEY_A) as client:
            stream = client.stream([TABLE], cursor=cursor, backoff=FAST, **kw)
            async with contextlib.aclosing(stream) as events:
                async for event in events:
                    got.append(event)

    task = asyncio.create_task(run())
    try:
        yield got, task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(got: list[ChangeEvent], count: int, task: asyncio.Future[None]) -> None:
    for _ in range(600):
        if task.done():
            task.result()  # raises what stopped the stream
            raise AssertionError(f"the stream ended after {len(got)} events")
        if len(got) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(got)} of {count} events arrived: {got[-3:]}")


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["stop", "kill"])
async def test_sdk_resumes_after_the_node_restarts_without_losing_events(
    world: Stack, how: signal.Signals
) -> None:
    node = node_of(world)
    base = 1000 if how == signal.SIGTERM else 2000
    start = await now_cursor(node.url)
    async with collecting(node.url, start) as (got, task):
        await db(
            "INSERT INTO sc_items SELECT g, 'n' || g, g * 0.25, ARRAY['t'] "
            "FROM generate_series($1::int, $1 + 4) g",
            base,
        )
        await db("UPDATE sc_items SET price = 1.25 WHERE id = $1", base)
        await until(got, 6, task)
        node.stop(how)  # the connection drops; the node's in-memory ring is gone
        for i in range(5, 10):  # committed while no node is there to relay them
            await db("INSERT INTO sc_items VALUES ($1, $2, NULL, NULL)", base + i, f"n{base + i}")
        await db("DELETE FROM sc_items WHERE id = $1", base + 1)
        node.start()
        await until(got, 12, task)
        await asyncio.sleep(0.5)  # a duplicate or a stray event would show up by now
    ops = [(e.op, (e.new or e.old or {}).get("id")) for e in got]
    assert ops == [
        *[("insert", base + i) for i in range(5)],
        ("update", base),
        *[("insert", base + i) for i in range(5, 10)],
        ("delete", base + 1),
    ]
    cursors = [e.cursor for e in got]
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)
    assert all(e.table == TABLE and e.commit_time is not None for e in got)
    price = f"{base * 0.25:.2f}"
    assert got[0].new == {"id": base, "name": f"n{base}", "price": price, "tags": ["t"]}
    assert got[0].commit_time is not None and got[0].commit_time.tzinfo is not None
    assert got[5].new is not None and got[5].new["price"] == "1.25"
    assert got[-1].old == {"id": base + 1} and got[-1].old_is_key and got[-1].new is None
    assert got[0].xid == got[4].xid != got[5].xid  # one transaction, then another


@contextlib.asynccontextmanager
async def collecting_blocking(
    url: str, cursor: str, wake_id: int
) -> AsyncIterator[tuple[list[ChangeEvent], asyncio.Future[None]]]:
    """The blocking client's stream read into a list by a thread, as a worker would.

    To stop it, a flag is set and one more row (``wake_id``) is inserted: the thread sees
    the flag on that event, before keeping it, and closes the stream.
    """
    got: list[ChangeEvent] = []
    stop = threading.Event()
    done: concurrent.futures.Future[None] = concurrent.futures.Future()

    def run() -> None:
        try:
            with Client(url, API_KEY_A) as client:
                stream = client.stream([TABLE], cursor=cursor, backoff=FAST)
                with contextlib.closing(stream) as events:
                    for event in events:
                        if stop.is_set():
                            break
                        got.append(event)
        except BaseException as exc:
            done.set_exception(exc)
        else:
            done.set_result(None)

    threading.Thread(target=run, name="blocking-stream", daemon=True).start()
    finished = asyncio.wrap_future(done)
    try:
        yield got, finished
    finally:
        stop.set()
        if not finished.done():
            await db("INSERT INTO sc_items VALUES ($1, 'wake', NULL, NULL)", wake_id)
        await asyncio.wait_for(finished, 20)


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["stop", "kill"])
async def test_blocking_sdk_streams_in_order_and_resumes_after_a_node_restart(
    world: Stack, how: signal.Signals
) -> None:
    node = node_of(world)
    base = 5000 if how == signal.SIGTERM else 6000
    start = await now_cursor(node.url)
    async with collecting_blocking(node.url, start, wake_id=base + 99) as (got, finished):
        for i in range(5):  # five transactions, one insert each
            await db("INSERT INTO sc_items VALUES ($1, $2, $3, NULL)", base + i, f"b{i}", i)
        await until(got, 5, finished)
        node.stop(how)  # the connection drops; the node's in-memory ring is gone
        for i in range(5, 10):  # committed while no node is there to relay them
            await db("INSERT INTO sc_items VALUES ($1, $2, $3, NULL)", base + i, f"b{i}", i)
        node.start()
        await until(got, 10, finished)
        await asyncio.sleep(0.5)  # a duplicate or a stray event would show up by now
    assert [(e.op, (e.new or {}).get("id")) for e in got] == [
        ("insert", base + i) for i in range(10)
    ]
    assert [(e.new or {}).get("name") for e in got] == [f"b{i}" for i in range(10)]
    cursors = [e.cursor for e in got]
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)
    assert cursors[0] > start
    assert all(e.table == TABLE and e.commit_time is not None for e in got)
    assert got[7].new is not None and got[7].new["price"] == "7"


async def test_sdk_filters_by_operation_and_resumes_from_a_saved_cursor(world: Stack) -> None:
    url = node_of(world).url
    start = await now_cursor(url)
    await db("INSERT INTO sc_items SELECT g, 'x', 1, NULL FROM generate_series(3000, 3002) g")
    await db("DELETE FROM sc_items WHERE id IN (3000, 3002)")
    async with collecting(url, start, ops=["delete"]) as (deletes, task):
        await until(deletes, 2, task)
    assert [(e.op, e.old) for e in deletes] == [("delete", {"id": 3000}), ("delete", {"id": 3002})]
    # A new client resuming after the first delete gets only what came after it.
    async with collecting(url, deletes[0].cursor) as (after, task):
        await db("UPDATE sc_items SET name = 'y' WHERE id = 3001")
        await until(after, 2, task)
    assert [(e.op, (e.new or e.old or {})["id"]) for e in after] == [
        ("delete", 3002),
        ("update", 3001),
    ]


async def test_sdk_errors_are_typed_and_not_retried(world: Stack) -> None:
    url = node_of(world).url

    async def first(key: str, tables: list[str]) -> None:
        async with AsyncClient(url, key) as client:
            async for _ in client.stream(tables, backoff=Backoff(initial=30.0, maximum=30.0)):
                return

    with pytest.raises(BadRequest) as bad_table:
        await asyncio.wait_for(first(API_KEY_A, ["public.sc_nope"]), 10)
    assert bad_table.value.extra.get("field") == "tables"
    assert "public.sc_nope" in bad_table.value.message
    with pytest.raises(Unauthorized):
        await asyncio.wait_for(first("ce_not_a_key", [TABLE]), 10)
    with pytest.raises(CaptureUnavailable):
        await asyncio.wait_for(first(API_KEY_B, [TABLE]), 10)


async def _stream_cli(url: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cache_edge.cli",
        "stream",
        "--url",
        url,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _lines(proc: asyncio.subprocess.Process, count: int) -> list[str]:
    assert proc.stdout is not None
    out = []
    for _ in range(count):
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line, "the CLI ended early"
        out.append(line.decode().rstrip("\n"))
    return out


async def _interrupt(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_cli_prints_json_lines_and_exits_0_on_ctrl_c(world: Stack) -> None:
    url = node_of(world).url
    start = await now_cursor(url)
    await db("INSERT INTO sc_items VALUES (4000, 'a', 2.50, '{x,y}'), (4001, 'b', NULL, NULL)")
    proc = await _stream_cli(url, "--api-key", API_KEY_A, "--table", TABLE, "--cursor", start, "--json")  # fmt: skip
    try:
        lines = await _lines(proc, 2)
        await db("UPDATE sc_items SET name = 'c' WHERE id = 4001")  # while it listens
        lines += await _lines(proc, 1)
    finally:
        code, err = await _interrupt(proc)
    events = [json.loads(line) for line in lines]
    assert [(e["op"], e["new"]["id"]) for e in events] == [
        ("insert", 4000),
        ("insert", 4001),
        ("update", 4001),
    ]
    assert events[0]["new"] == {"id": 4000, "name": "a", "price": "2.50", "tags": ["x", "y"]}
    assert events[2]["table"] == TABLE and events[2]["commitTime"]
    assert code == 0, err
    assert f"resume with --cursor {events[-1]['cursor']}" in err
    assert "Traceback" not in err


async def test_cli_prints_a_readable_line_per_event(world: Stack) -> None:
    url = node_of(world).url
    start = await now_cursor(url)
    await db("INSERT INTO sc_items VALUES (4100, 'gone', 1, NULL)")
    await db("DELETE FROM sc_items WHERE id = 4100")
    args = ("--api-key", API_KEY_A, "--table", TABLE, "--op", "delete", "--cursor", start)
    proc = await _stream_cli(url, *args)
    try:
        (line,) = await _lines(proc, 1)
    finally:
        code, err = await _interrupt(proc)
    when, op, table, rest = line.split(" ", 3)
    assert (op, table) == ("delete", TABLE) and when.endswith("Z"), line
    assert rest.startswith('old_key={"id":4100} xid='), line
    assert " cursor=" in rest
    assert code == 0 and f"streaming {TABLE} (delete)" in err


@pytest.mark.parametrize(
    ("key", "table", "expected"),
    [
        (API_KEY_A, "public.sc_nope", "error: bad_request: "),
        ("ce_not_a_key", TABLE, "error: unauthorized: "),
        (API_KEY_B, TABLE, "error: capture_unavailable: "),
    ],
)
async def test_cli_reports_errors_clearly_and_exits_1(
    world: Stack, key: str, table: str, expected: str
) -> None:
    proc = await _stream_cli(node_of(world).url, "--api-key", key, "--table", table)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1, err
    assert expected in err.decode() and out == b""
    if "nope" in table:
        assert "public.sc_nope" in err.decode() and "field: tables" in err.decode()
