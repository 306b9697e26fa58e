"""The node's queries and transactions over its one link to the origin (CALL/REPLY frames).

The link's opening is the only signed step, so it is where replay and forgery must fail;
after it, calls are multiplexed, each gets its own answer, and failures keep the stable
error codes the HTTP path had.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from cache_edge.common.errors import OriginDown, OriginUnavailable, QueryError, Unauthorized
from cache_edge.common.protocol import Statement
from cache_edge.common.signing import SIGNATURE_HEADER, LinkSealer, link_key, sign_headers
from cache_edge.common.wire import unpackb
from cache_edge.node.origin_client import OriginClient as NodeOriginClient
from cache_edge.node.origin_guard import OriginGuard
from cache_edge.node.pgdoor.link import LinkDown, OriginLink
from cache_edge.pgwire.link import CALL, PATH, REPLY, decode_frames, encode_frame
from cache_edge.server.config import parse_settings
from origin.core.app import WIRE
from tests.conftest import API_KEY_A, NODE_SECRET, make_settings_doc
from tests.integration.node_helpers import marker, new_stack, post
from tests.integration.origin_helpers import OriginClient, running_origin

SLEEPY = "SELECT $1::int AS n, pg_sleep($2::float8)"


@pytest.fixture
async def origin(pg_databases: tuple[str, str]) -> AsyncIterator[OriginClient]:
    async with running_origin(parse_settings(make_settings_doc(*pg_databases))) as client:
        yield client


@pytest.fixture
async def link(origin: OriginClient) -> AsyncIterator[OriginLink]:
    node_link = OriginLink(origin.base_url, lambda: NODE_SECRET, 5.0)
    yield node_link
    await node_link.close()


def _client(base_url: str, secret: str = NODE_SECRET, timeout: float = 10.0) -> NodeOriginClient:
    guard = OriginGuard(max_waiting=100, failures=3, probe_interval=30.0)
    return NodeOriginClient(
        base_url, secret, timeout=timeout, connect_timeout=2.0, max_connections=20, guard=guard
    )


async def _open(origin: OriginClient, headers: dict[str, str]) -> int:
    """The status of a link opening with these headers (101 once upgraded)."""
    try:
        ws = await origin.session.ws_connect(origin.base_url + PATH, headers=headers)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    return 101


async def test_a_replayed_or_forged_link_opening_is_refused(origin: OriginClient) -> None:
    signed = sign_headers(NODE_SECRET, "GET", PATH, "", b"")
    assert await _open(origin, signed) == 101
    assert await _open(origin, signed) == 401  # the same signature twice: a replay
    forged = sign_headers("not-the-node-secret-at-all", "GET", PATH, "", b"")
    assert await _open(origin, forged) == 401
    assert await _open(origin, {}) == 401
    stale = sign_headers(NODE_SECRET, "GET", PATH, "", b"", now=time.time() - 3600)
    assert await _open(origin, stale) == 401
    # Signed for another path (a captured /v1/query signature) does not open a link.
    other = sign_headers(NODE_SECRET, "GET", "/v1/query", "", b"")
    assert await _open(origin, other) == 401


async def test_a_node_with_a_wrong_secret_gets_unauthorized(origin: OriginClient) -> None:
    client = _client(origin.base_url, secret="not-the-node-secret-at-all")
    try:
        with pytest.raises(Unauthorized):
            await client.query("acme", Statement("SELECT 1", []), read_only=True, request_id="r")
    finally:
        await client.close()


async def test_calls_answer_like_http(origin: OriginClient, link: OriginLink) -> None:
    body = {"sql": "SELECT $1::int AS n", "params": [7], "readOnly": True}
    status, raw, rid = await link.call("/v1/query", "acme", body, "req-42")
    assert (status, rid) == (200, "req-42")
    over_http = await origin.post("/v1/query", body)
    assert unpackb(raw)["rows"] == over_http.body["rows"] == [[7]]
    status, raw, _ = await link.call("/v1/query", "initech", body, "req-43")
    assert status == 401 and unpackb(raw)["error"]["code"] == "unauthorized"
    status, raw, _ = await link.call("/v1/invalidations", "acme", {"all": True}, "req-44")
    assert status == 400 and unpackb(raw)["error"]["code"] == "bad_request"
    status, raw, rid = await link.call("/v1/query", "acme", {"sql": "SELEC"}, "bad id!")
    assert status == 400 and rid != "bad id!"  # request ids follow the one rule
    tx = {
        "statements": [{"sql": "SELECT 1", "params": []}, {"sql": "SELECT 2", "params": []}],
        "isolationLevel": "read_committed",
    }
    status, raw, _ = await link.call("/v1/transaction", "acme", tx, "req-45")
    assert status == 200 and [r["rows"] for r in unpackb(raw)["results"]] == [[[1]], [[2]]]


async def test_concurrent_calls_get_their_own_answers(link: OriginLink) -> None:
    # Later calls sleep less, so answers come back in another order than the calls went.
    async def one(n: int) -> tuple[int, int, str]:
        body = {"sql": SLEEPY, "params": [n, (40 - n) / 400], "readOnly": True}
        status, raw, rid = await link.call("/v1/query", "acme", body, f"call-{n}")
        assert status == 200, unpackb(raw)
        return n, unpackb(raw)["rows"][0][0], rid

    answers = await asyncio.gather(*(one(n) for n in range(40)))
    assert all(got == n and rid == f"call-{n}" for n, got, rid in answers)


async def test_errors_keep_their_codes(origin: OriginClient) -> None:
    client = _client(origin.base_url)
    try:
        with pytest.raises(QueryError) as failed:
            await client.query("acme", Statement("SELECT 1/0", []), read_only=True, request_id="r")
        assert failed.value.extra.get("sqlstate") == "22012"
        assert client.guard.is_open is False  # an error body proves the origin reachable
    finally:
        await client.close()


async def test_a_withdrawn_secret_closes_the_link(origin: OriginClient, link: OriginLink) -> None:
    body = {"sql": "SELECT 1", "params": [], "readOnly": True}
    assert (await link.call("/v1/query", "acme", body, "a"))[0] == 200
    assert origin.app is not None
    origin.app[WIRE].revoke(("the-new-secret-only",))
    for _ in range(50):
        if not link.connected:
            break
        await asyncio.sleep(0.05)
    assert not link.connected
    # The next call opens a new link (this origin's settings still accept NODE_SECRET).
    assert (await link.call("/v1/query", "acme", body, "b"))[0] == 200


async def test_a_dead_origin_is_origin_unavailable_then_origin_down(
    origin: OriginClient,
) -> None:
    client = _client("http://127.0.0.1:9")  # nothing listens on the discard port
    try:
        for _ in range(3):
            with pytest.raises(OriginUnavailable) as failed:
                await client.query(
                    "acme", Statement("SELECT 1", []), read_only=True, request_id="r"
                )
            assert failed.value.code == "origin_unavailable"
        with pytest.raises(OriginDown):
            await client.query("acme", Statement("SELECT 1", []), read_only=True, request_id="r")
    finally:
        await client.close()


async def test_the_link_closing_under_a_call_fails_it_at_once(
    origin: OriginClient, link: OriginLink
) -> None:
    body = {"sql": SLEEPY, "params": [1, 5.0], "readOnly": True}
    call = asyncio.create_task(link.call("/v1/query", "acme", body, "slow"))
    await asyncio.sleep(0.5)
    assert origin.app is not None
    origin.app[WIRE].revoke(())
    started = time.monotonic()
    with pytest.raises(LinkDown):
        await call
    assert time.monotonic() - started < 2


async def test_origin_killed_mid_request_gives_origin_unavailable(
    tmp_path: Path, pg_databases: tuple[str, str], flushed_redis: str
) -> None:
    """Through a real node: a miss in flight when the origin dies answers 502
    origin_unavailable at once (not after origin_timeout); a restarted origin serves again."""
    st = new_stack(tmp_path, pg_databases, flushed_redis, node={"origin_timeout": 30.0})
    origin = st.start_origin()
    node = st.start_node()
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
    try:
        quick = {"sql": "SELECT $1::text AS m", "params": [marker()]}
        assert (await post(http, node.url, quick, API_KEY_A)).status == 200
        slow = {"sql": "SELECT pg_sleep(10)", "params": []}
        in_flight = asyncio.create_task(post(http, node.url, slow, API_KEY_A))
        await asyncio.sleep(1.0)
        origin.stop(signal.SIGKILL)
        started = time.monotonic()
        reply = await in_flight
        assert reply.status == 502 and reply.code == "origin_unavailable", reply.body
        assert time.monotonic() - started < 5
        reply = await post(http, node.url, quick, API_KEY_A)
        assert reply.status == 502 and reply.code == "origin_unavailable", reply.body
        origin.start()
        reply = await post(http, node.url, quick, API_KEY_A)
        assert reply.status == 200 and reply.body["rows"] == [quick["params"]], reply.body
    finally:
        await http.close()
        st.stop_all()


async def test_a_stopping_origin_answers_the_calls_in_flight_first(
    origin: OriginClient, link: OriginLink
) -> None:
    body = {"sql": SLEEPY, "params": [1, 0.5], "readOnly": True}
    in_flight = asyncio.create_task(link.call("/v1/query", "acme", body, "slow"))
    await asyncio.sleep(0.2)
    assert origin.app is not None
    closing = asyncio.create_task(origin.app[WIRE].close(drain=5.0))
    await asyncio.sleep(0.05)
    late = await link.call("/v1/query", "acme", {"sql": "SELECT 1", "params": []}, "late")
    assert late[0] == 502 and unpackb(late[1])["error"]["code"] == "origin_unavailable"
    status, raw, _ = await in_flight
    assert status == 200 and unpackb(raw)["rows"][0][0] == 1
    await closing


async def test_a_new_node_secret_proves_a_new_link_and_the_old_one_closes(
    pg_databases: tuple[str, str],
) -> None:
    """A rotation seen from the link: the node signs with the new secret from its next
    call on (a session-free link is re-proven), and the old link closes once idle."""
    new = "the-new-node-secret-0123456789abcdef"
    doc = make_settings_doc(*pg_databases)
    del doc["node_secret"]
    doc["node_secrets"] = [new, NODE_SECRET]
    async with running_origin(parse_settings(doc)) as origin:
        secret = [NODE_SECRET]
        link = OriginLink(origin.base_url, lambda: secret[0], 5.0)
        try:
            body = {"sql": "SELECT 1", "params": [], "readOnly": True}
            assert (await link.call("/v1/query", "acme", body, "a"))[0] == 200
            assert link._conn is not None
            old = link._conn
            secret[0] = new
            assert (await link.call("/v1/query", "acme", body, "b"))[0] == 200
            assert link._conn is not old and link._conn.secret == new
            for _ in range(50):
                if old.ws.closed:
                    break
                await asyncio.sleep(0.02)
            assert old.ws.closed
        finally:
            await link.close()


async def test_messages_not_sealed_by_the_links_node_close_it(origin: OriginClient) -> None:
    """After the signed opening every message carries a MAC keyed to that opening and
    numbered in order: an injected, altered or replayed message ends the link."""
    body = {"sql": "SELECT 1", "params": [], "readOnly": True}
    call = encode_frame(CALL, 1, {"path": "/v1/query", "tenant": "acme", "body": body})

    async def opened() -> tuple[aiohttp.ClientWebSocketResponse, LinkSealer]:
        headers = sign_headers(NODE_SECRET, "GET", PATH, "", b"")
        ws = await origin.session.ws_connect(origin.base_url + PATH, headers=headers)
        return ws, LinkSealer(link_key(NODE_SECRET, headers[SIGNATURE_HEADER]))

    async def answer(ws: aiohttp.ClientWebSocketResponse) -> object:
        msg = await ws.receive(timeout=5)
        if msg.type != aiohttp.WSMsgType.BINARY:
            return msg.type
        return decode_frames(msg.data)[0][0]

    ws, sealer = await opened()  # the real thing first: sealed, answered
    await ws.send_bytes(sealer.seal(call))
    assert await answer(ws) == REPLY
    sealed = sealer.seal(call)
    await ws.send_bytes(sealed)
    assert await answer(ws) == REPLY
    await ws.send_bytes(sealed)  # the same message again: a replay
    assert await answer(ws) in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await ws.close()

    ws, sealer = await opened()
    await ws.send_bytes(call)  # not sealed at all
    assert await answer(ws) in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await ws.close()

    ws, sealer = await opened()
    forged = bytearray(sealer.seal(call))
    forged[-1] ^= 1  # altered on the way
    await ws.send_bytes(bytes(forged))
    assert await answer(ws) in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await ws.close()


async def test_typed_parameters_cross_the_link_exactly(origin: OriginClient) -> None:
    """The body keeps the HTTP door's msgpack types (Decimal, UUID, dates...) over the link."""
    import datetime as dt
    import decimal
    import uuid

    client = _client(origin.base_url)
    params = [decimal.Decimal("12.340"), uuid.UUID(int=7), dt.date(2026, 11, 27)]
    sql = "SELECT $1::numeric, $2::uuid, $3::date"
    try:
        result = await client.query("acme", Statement(sql, params), read_only=True, request_id="t")
        assert unpackb(result.body)["rows"] == [params]
        tx = await client.transaction("acme", [Statement(sql, params)], "read_committed", "t2")
        assert unpackb(tx.body)["results"][0]["rows"] == [params]
    finally:
        await client.close()
