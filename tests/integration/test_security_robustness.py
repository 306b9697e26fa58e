"""Hostile clients at running servers: slowloris, vanishing clients, malformed bodies, no leaks."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Iterator

import aiohttp
import msgpack
import pytest

from cache_edge.common.wire import EXT_DECIMAL, EXT_UUID, packb
from tests.conftest import API_KEY_A, executions
from tests.integration.node_helpers import marker, node_doc, post
from tests.integration.security_helpers import eventually, metric_value
from tests.integration.stack import Server, Stack, running_stack

pytestmark = pytest.mark.security

IDLE = 1.5  # keepalive_timeout: also the deadline for a first request's headers
BODY = 1.0  # body_timeout


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, pg_databases: tuple[str, str], flushed_redis: str
) -> Iterator[Stack]:
    timeouts = {"keepalive_timeout": IDLE, "body_timeout": BODY}
    doc = node_doc(pg_databases, flushed_redis, node=timeouts, origin=dict(timeouts))
    with running_stack(tmp_path_factory.mktemp("robust"), doc, [("eu-west", None)]) as st:
        yield st


def node(stack: Stack) -> Server:
    return next(s for s in stack.servers if s.kind == "node")


def origin(stack: Stack) -> Server:
    assert stack.origin is not None
    return stack.origin


async def serves(http: aiohttp.ClientSession, stack: Stack) -> bool:
    reply = await post(http, node(stack).url, {"sql": "SELECT 1"}, API_KEY_A)
    return reply.status == 200 and reply.body["rows"] == [[1]]


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> float:
    """Seconds until the server closed the connection (EOF or reset)."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
    except ConnectionError:
        pass
    return time.monotonic() - started


# ---------------------------------------------------------------------- slow clients


@pytest.mark.parametrize("which", ["node", "origin"])
async def test_slowloris_headers_are_dropped_while_others_are_served(
    stack: Stack, http: aiohttp.ClientSession, which: str
) -> None:
    server = node(stack) if which == "node" else origin(stack)
    conns = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(20)]
    silent = await asyncio.open_connection("127.0.0.1", server.port)  # never sends a byte
    started = time.monotonic()
    for _, writer in conns:
        writer.write(b"POST /v1/query HTTP/1.1\r\nHost: x\r\n")

    async def trickle(writer: asyncio.StreamWriter) -> None:
        try:
            for i in range(100):
                writer.write(f"X-Slow-{i}: y".encode()[:1])
                await writer.drain()
                await asyncio.sleep(0.2)
        except ConnectionError:
            return

    tricklers = [asyncio.create_task(trickle(w)) for _, w in conns]
    # Meanwhile everyone else is served.
    for _ in range(5):
        assert await serves(http, stack)
        await asyncio.sleep(0.1)
    waits = await asyncio.gather(*(closed_by_server(r, 10) for r, _ in [*conns, silent]))
    for task in tricklers:
        task.cancel()
    for _, writer in [*conns, silent]:
        writer.close()
    # Dropped after the idle deadline, counted from the connection's start.
    assert all(w < 10 for w in waits), waits
    assert time.monotonic() - started < IDLE + 5
    assert await serves(http, stack)


@pytest.mark.parametrize("which", ["node", "origin"])
async def test_a_body_never_finished_gets_an_answer_and_a_closed_connection(
    stack: Stack, http: aiohttp.ClientSession, which: str
) -> None:
    server = node(stack) if which == "node" else origin(stack)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"POST /v1/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {API_KEY_A}\r\n".encode()
        + b"Content-Length: 1000\r\n\r\n"
        + b'{"sql": "SELECT'
    )
    await writer.drain()
    started = time.monotonic()
    async with asyncio.timeout(10):
        answer = await reader.read()  # until the server closes
    elapsed = time.monotonic() - started
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"bad_request" in answer and b"not received within" in answer
    assert BODY - 0.2 < elapsed < BODY + 3
    assert await serves(http, stack)


# ------------------------------------------------------------------ vanishing clients


async def test_a_client_gone_mid_miss_still_fills_the_cache_for_others(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    m = marker("gone")
    body = {
        "sql": "SELECT ce_mark($1), pg_sleep(1.0)",
        "params": [m],
        "cacheStrategy": {"ttl": 60},
    }
    task = asyncio.create_task(post(http, node(stack).url, body, API_KEY_A))
    await asyncio.sleep(0.4)  # the miss is at the database now
    task.cancel()  # the client goes away: aiohttp closes its connection
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(1.2)
    again = await post(http, node(stack).url, body, API_KEY_A)
    assert again.status == 200 and again.cache_status == "ttl", again.body
    assert await executions(m) == 1


async def test_clients_vanishing_mid_body_or_mid_response_leave_no_trace(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    for _ in range(10):
        _, writer = await asyncio.open_connection("127.0.0.1", node(stack).port)
        writer.write(
            b"POST /v1/query HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n"
            + f"Authorization: Bearer {API_KEY_A}\r\n\r\n".encode()
            + b'{"sql": '
        )
        await writer.drain()
        writer.close()  # gone mid-body
    big = {"sql": "SELECT repeat('x', 1000) FROM generate_series(1, 2000)"}
    for _ in range(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", node(stack).port)
        data = packb(big)
        writer.write(
            b"POST /v1/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
            + f"Authorization: Bearer {API_KEY_A}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        await writer.drain()
        await reader.read(100)  # the answer starts; then the client is gone mid-response
        writer.transport.abort()
    await asyncio.sleep(0.5)
    assert await serves(http, stack)
    await eventually(lambda: pool_idle(http, stack), timeout=10)


async def pool_idle(http: aiohttp.ClientSession, stack: Stack) -> bool:
    async with http.get(origin(stack).url + "/metrics") as resp:
        metrics = await resp.text()
    return all(
        metric_value(metrics, f"cache_edge_origin_pool_{gauge}", tenant=tenant) == 0
        for tenant in ("acme", "globex")
        for gauge in ("in_use", "waiting")
    )


# ------------------------------------------------------------------ malformed bodies

_EXT = msgpack.ExtType
HOSTILE: list[tuple[str, str, bytes]] = [
    ("json", "invalid utf-8", b'{"sql": "SELECT \xff\xfe"}'),
    ("json", "invalid utf-8 in a param", b'{"sql": "SELECT $1", "params": ["\xc3\x28"]}'),
    ("json", "lone surrogate escape", b'{"sql": "SELECT $1", "params": ["\\ud800"]}'),
    ("json", "deep nesting", b'{"sql": "SELECT $1", "params": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("json", "deep objects", b'{"sql": "SELECT 1", "cacheStrategy": ' + b'{"a":' * 5000 + b"1" + b"}" * 5001),
    ("json", "huge integer", b'{"sql": "SELECT $1", "params": [123456789012345678901234567890]}'),
    ("json", "huge exponent", b'{"sql": "SELECT $1", "params": [1e999999]}'),
    ("json", "NaN literal", b'{"sql": "SELECT $1", "params": [NaN]}'),
    ("json", "truncated", b'{"sql": "SELECT 1", "params": [1, 2'),
    ("json", "not an object", b'[1, 2, 3]'),
    ("json", "duplicate keys", b'{"sql": "SELECT 1", "sql": 5}'),
    ("json", "ttl as float", b'{"sql": "SELECT 1", "cacheStrategy": {"ttl": 1.5}}'),
    ("json", "ttl huge", b'{"sql": "SELECT 1", "cacheStrategy": {"ttl": 18446744073709551615}}'),
    ("json", "NUL in sql", b'{"sql": "SELECT 1\\u0000"}'),
    ("msgpack", "invalid utf-8 str", b"\x81\xa3sql\xa2\xff\xfe"),
    ("msgpack", "deep nesting", b"\x82\xa3sql\xa8SELECT $1\xa6params" + b"\x91" * 100_000 + b"\x01"),
    ("msgpack", "unknown ext type", packb({"sql": "SELECT $1", "params": [_EXT(99, b"x")]})),
    ("msgpack", "negative ext type", b"\x82\xa3sql\xa9SELECT $1\xa6params\x91\xd6\xff\x00\x00\x00\x01"),
    ("msgpack", "bad decimal ext", packb({"sql": "SELECT $1", "params": [_EXT(EXT_DECIMAL, b"12abc")]})),
    ("msgpack", "short uuid ext", packb({"sql": "SELECT $1", "params": [_EXT(EXT_UUID, b"abc")]})),
    ("msgpack", "huge array header", b"\x82\xa3sql\xa8SELECT $1\xa6params\xdd\xff\xff\xff\xff"),
    ("msgpack", "huge map header", b"\xdf\xff\xff\xff\xff"),
    ("msgpack", "huge str header", b"\x81\xa3sql\xdb\xff\xff\xff\xff"),
    ("msgpack", "trailing bytes", packb({"sql": "SELECT 1"}) + b"\x00"),
    ("msgpack", "int map keys", b"\x81\x01\x02"),
    ("msgpack", "binary sql", packb({"sql": b"SELECT 1"})),
    ("msgpack", "uint64 param", packb({"sql": "SELECT $1::int8", "params": [2**64 - 1]})),
    ("msgpack", "float64 inf", b"\x82\xa3sql\xa9SELECT $1\xa6params\x91\xcb" + struct.pack(">d", float("inf"))),
    ("msgpack", "ext in key", b"\x81\xd4\x63\x00\x01"),
    ("msgpack", "empty", b""),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "what", "raw"), HOSTILE, ids=[h[1] + "-" + h[0] for h in HOSTILE])
async def test_malformed_bodies_are_refused_cleanly(
    stack: Stack, http: aiohttp.ClientSession, fmt: str, what: str, raw: bytes
) -> None:
    reply = await post(http, node(stack).url, None, API_KEY_A, fmt=fmt, raw=raw)
    assert 400 <= reply.status < 500, (what, reply.status, reply.body)
    error = reply.body["error"]
    assert error["code"] in ("bad_request", "payload_too_large", "query_error"), error
    assert "Traceback" not in str(error) and 'File "' not in str(error)
    assert await serves(http, stack)
