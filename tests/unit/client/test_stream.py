"""Change streams in the SDK: SSE parsing, event decoding, and resume against a scripted node.

The scripted node is a real aiohttp server on loopback that answers each connection
with the next script (events, an error, a refusal, a dropped socket), so reconnects
and the cursor they carry are observed on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from cache_edge.client import AsyncClient, ChangeEvent, Client
from cache_edge.client.stream import (
    Backoff,
    SSEEvent,
    SSEParser,
    change_from_sse,
    stream_error,
    stream_query,
)
from cache_edge.common.errors import (
    BadRequest,
    CaptureUnavailable,
    OriginUnavailable,
    StreamGap,
    Unauthorized,
)

API_KEY = "ce_stream_unit_key"
FAST = Backoff(initial=0.01, maximum=0.05, jitter=0.0)

# --------------------------------------------------------------------------- SSE parsing

WIRE = (
    b"\xef\xbb\xbf: hello\r\n"
    b"event: ready\r\n"
    b'data: {"cursor": "A"}\r\n'
    b"\r\n"
    b"id: 0001\n"
    b"event: change\n"
    b"data: line one\n"
    b"data:line two\n"
    b"retry: 1500\n"
    b"\n"
    b"data: after\r"
    b"\r"
    b"event: lonely\n"
    b"\n"
    b": keepalive\n"
    b"id\n"
    b"data\n"
    b"\n"
    b"data: caf\xc3\xa9\n\n"
)
EXPECTED = [
    SSEEvent("ready", '{"cursor": "A"}', None, None),
    SSEEvent("change", "line one\nline two", "0001", 1500),
    SSEEvent("message", "after", "0001", None),
    # "event: lonely" had no data: not dispatched. A bare "id" resets the id to "".
    SSEEvent("message", "", "", None),
    SSEEvent("message", "café", "", None),
]


def test_parser_reads_every_field_and_line_ending() -> None:
    parser = SSEParser()
    assert parser.feed(WIRE) == EXPECTED
    assert parser.comments == 2


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_parser_gives_the_same_events_whatever_the_chunking(size: int) -> None:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for i in range(0, len(WIRE), size):
        events += parser.feed(WIRE[i : i + size])
    assert events == EXPECTED


def test_parser_waits_for_the_blank_line_and_for_a_split_crlf() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\r\n") == []
    assert parser.feed(b"\r") == []  # could be \r\n or a lone \r: not yet known
    assert parser.feed(b"\ndata: y\n\n") == [
        SSEEvent("message", "x"),
        SSEEvent("message", "y"),
    ]


def test_parser_refuses_an_endless_line() -> None:
    parser = SSEParser()
    with pytest.raises(ValueError, match="longer than"):
        for _ in range(20):
            parser.feed(b"x" * 1024 * 1024)


# --------------------------------------------------------------------------- events

CHANGE = {
    "cursor": "00000000032D5858-00000001",
    "table": "public.orders",
    "op": "update",
    "new": {"id": 7, "total": "12.50", "status": "paid", "tags": ["a"], "doc": {"k": None}},
    "old": {"id": 7},
    "oldIsKey": True,
    "unchanged": ["blob"],
    "xid": 812,
    "commitTime": "2026-11-25T01:16:19.123456+00:00",
    "lsn": "0/32D5858",
}


def test_change_event_keeps_json_values_and_parses_the_commit_time() -> None:
    event = change_from_sse(SSEEvent("change", json.dumps(CHANGE), CHANGE["cursor"]))  # type: ignore[arg-type]
    assert event == ChangeEvent(
        cursor="00000000032D5858-00000001",
        table="public.orders",
        op="update",
        new={"id": 7, "total": "12.50", "status": "paid", "tags": ["a"], "doc": {"k": None}},
        old={"id": 7},
        old_is_key=True,
        unchanged=("blob",),
        xid=812,
        commit_time=dt.datetime(2026, 11, 25, 1, 16, 19, 123456, tzinfo=dt.UTC),
        lsn="0/32D5858",
    )
    assert event.commit_time is not None and event.commit_time.utcoffset() == dt.timedelta(0)
    assert event.raw == CHANGE


def test_truncate_event_has_no_rows_and_falls_back_to_the_sse_id() -> None:
    data = {"table": "public.t", "op": "truncate", "new": None, "old": None, "xid": 9}
    event = change_from_sse(SSEEvent("change", json.dumps(data), "C-1"))
    assert (event.cursor, event.op, event.new, event.old, event.unchanged) == (
        "C-1",
        "truncate",
        None,
        None,
        (),
    )
    assert event.commit_time is None


@pytest.mark.parametrize(
    "data",
    [
        "not json",
        "[1]",
        json.dumps({"table": "public.t", "op": "insert"}),  # no cursor at all
        json.dumps({"cursor": "C", "op": "insert"}),
        json.dumps({**CHANGE, "new": [1, 2]}),
        json.dumps({**CHANGE, "commitTime": "2026-11-25T01:16:19"}),  # naive
        json.dumps({**CHANGE, "commitTime": "yesterday"}),
    ],
)
def test_malformed_change_events_raise_value_error(data: str) -> None:
    with pytest.raises(ValueError):
        change_from_sse(SSEEvent("change", data))


def test_in_stream_errors_become_typed_errors() -> None:
    body = {"error": {"code": "stream_gap", "message": "history lost"}}
    code, exc = stream_error(SSEEvent("error", json.dumps(body)))
    assert code == "stream_gap" and isinstance(exc, StreamGap) and exc.message == "history lost"
    code, exc = stream_error(SSEEvent("error", "garbage"))
    assert code == "" and isinstance(exc, OriginUnavailable)


def test_stream_query_and_its_validation() -> None:
    assert stream_query(["public.a", "s.b"], None) == "tables=public.a,s.b"
    assert stream_query(["public.a"], ["insert", "delete"]) == "tables=public.a&ops=insert,delete"
    assert stream_query(["public.ä&x"], None) == "tables=public.%C3%A4%26x"
    with pytest.raises(TypeError):
        stream_query("public.a", None)
    for bad in ([], ["a,b"], [""]):
        with pytest.raises(ValueError):
            stream_query(bad, None)


def test_backoff_grows_to_its_cap_with_bounded_jitter() -> None:
    plain = Backoff(initial=0.1, maximum=1.0, jitter=0.0)
    assert [plain.delay(n) for n in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert plain.delay(10_000) == 1.0
    assert plain.delay(0, floor=0.5) == 0.5  # the server's "retry:" raises the first delay
    jittered = Backoff(initial=1.0, maximum=1.0, jitter=0.2)
    assert all(0.8 <= jittered.delay(3) <= 1.2 for _ in range(200))
    with pytest.raises(ValueError):
        Backoff(initial=2.0, maximum=1.0)
    with pytest.raises(ValueError):
        Backoff(jitter=1.0)


# --------------------------------------------------------------------------- a scripted node

Script = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ScriptedNode:
    """Answers the n-th connection with scripts[n] (the last one repeats)."""

    scripts: list[Script]
    requests: list[web.Request] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        script = self.scripts[min(len(self.requests), len(self.scripts)) - 1]
        return await script(request)

    def cursors(self) -> list[str | None]:
        return [r.headers.get("Last-Event-ID") for r in self.requests]


@contextlib.asynccontextmanager
async def scripted(*scripts: Script) -> AsyncIterator[ScriptedNode]:
    node = ScriptedNode(list(scripts))
    app = web.Application()
    app.router.add_get("/v1/stream", node.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    node.url = f"http://127.0.0.1:{port}"
    try:
        yield node
    finally:
        await runner.cleanup()


def cur(n: int) -> str:
    """Cursors as the node makes them: fixed-width hex, so they sort as strings."""
    return f"{n:016X}-00000000"


def change(n: int, table: str = "public.t") -> dict[str, Any]:
    return {
        "cursor": cur(n),
        "table": table,
        "op": "insert",
        "new": {"id": n, "price": f"{n}.50"},
        "old": None,
        "oldIsKey": False,
        "unchanged": [],
        "xid": 100 + n,
        "commitTime": "2026-11-25T01:16:19.5+01:00",
        "lsn": f"0/{n:X}",
    }


def frame(event: str, data: Any, with_id: bool = False) -> bytes:
    head = f"id: {data['cursor']}\n" if with_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def events(
    ready: int,
    numbers: list[int],
    *,
    end: str = "close",
    error: str | None = None,
    hold: float = 0.0,
) -> Script:
    """ready, the changes ``numbers``, then: an error event, a clean end, an abrupt drop,
    or (``end="hang"``) silence."""

    async def script(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(frame("ready", {"cursor": cur(ready)}) + b": keepalive\n\n")
        for n in numbers:
            await resp.write(frame("change", change(n), with_id=True))
        if error is not None:
            message = {"error": {"code": error, "message": f"{error} (scripted)"}}
            await resp.write(f"event: error\ndata: {json.dumps(message)}\n\n".encode())
        await asyncio.sleep(hold)
        if end == "drop":
            assert request.transport is not None
            request.transport.abort()
        elif end == "hang":
            await asyncio.sleep(3600)
        return resp

    return script


def refuse(status: int, code: str, **headers: str) -> Script:
    async def script(request: web.Request) -> web.StreamResponse:
        body = {"error": {"code": code, "message": f"{code} (scripted)", "requestId": "r1"}}
        if code == "bad_request":
            body["error"]["field"] = "tables"
        return web.json_response(body, status=status, headers=headers)

    return script


@pytest.fixture(params=["async", "sync"])
def flavor(request: pytest.FixtureRequest) -> str:
    """Which client reads the stream: AsyncClient, or the blocking Client in a thread."""
    return str(request.param)


async def take(
    url: str,
    flavor: str,
    n: int,
    *,
    tables: Sequence[str] = ("public.t",),
    got: list[ChangeEvent] | None = None,
    **kw: Any,
) -> list[ChangeEvent]:
    """The first ``n`` events of a new subscription, appended to ``got`` as they arrive
    (so a caller sees them even when the stream raises), then the stream is closed."""
    got = [] if got is None else got
    if flavor == "async":
        async with (
            AsyncClient(url, API_KEY) as adb,
            contextlib.aclosing(adb.stream(list(tables), **kw)) as astream,
        ):
            async for event in astream:
                got.append(event)
                if len(got) == n:
                    break
        return got

    def run() -> None:
        with Client(url, API_KEY) as db, contextlib.closing(db.stream(list(tables), **kw)) as it:
            for event in it:
                got.append(event)
                if len(got) == n:
                    break

    await asyncio.to_thread(run)
    return got


def numbers(got: list[ChangeEvent]) -> list[int]:
    return [int(e.new["id"]) for e in got if e.new is not None]


async def test_stream_sends_tables_ops_key_and_yields_typed_events(flavor: str) -> None:
    async with scripted(events(0, [1, 2], end="hang")) as node:
        got = await take(node.url, flavor, 2, tables=["public.t", "public.u"], ops=["insert"])
    assert numbers(got) == [1, 2]
    assert got[0].commit_time == dt.datetime(2026, 11, 25, 0, 16, 19, 500000, tzinfo=dt.UTC)
    assert got[0].new == {"id": 1, "price": "1.50"} and got[0].xid == 101
    request = node.requests[0]
    assert request.query["tables"] == "public.t,public.u" and request.query["ops"] == "insert"
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.headers["Accept"] == "text/event-stream"
    assert "Last-Event-ID" not in request.headers


@pytest.mark.parametrize("end", ["drop", "close"])
async def test_a_lost_connection_resumes_after_the_last_cursor_without_duplicates(
    end: str, flavor: str
) -> None:
    # The second connection repeats event 2 (at-least-once): the client must skip it.
    async with scripted(events(0, [1, 2], end=end), events(2, [2, 3, 4], end="hang")) as node:
        got = await take(node.url, flavor, 4, cursor=cur(0), backoff=FAST)
    assert numbers(got) == [1, 2, 3, 4]
    assert node.cursors() == [cur(0), got[1].cursor]


async def test_without_a_cursor_the_ready_position_is_where_it_resumes(flavor: str) -> None:
    async with scripted(events(0, [], end="drop"), events(0, [5], end="hang")) as node:
        got = await take(node.url, flavor, 1, backoff=FAST)
    assert numbers(got) == [5]
    assert node.cursors() == [None, cur(0)]


async def test_subscriber_too_slow_reconnects_with_the_cursor(flavor: str) -> None:
    async with scripted(
        events(0, [1], error="subscriber_too_slow"), events(1, [2], end="hang")
    ) as node:
        got = await take(node.url, flavor, 2, backoff=Backoff(initial=30.0, maximum=30.0))
    # Resumed at once (a 30 s backoff would time the test out): nothing was lost.
    assert numbers(got) == [1, 2]
    assert node.cursors() == [None, got[0].cursor]


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (400, "bad_request", BadRequest),
        (401, "unauthorized", Unauthorized),
        (409, "capture_unavailable", CaptureUnavailable),
        (410, "stream_gap", StreamGap),
    ],
)
async def test_refusals_that_a_retry_cannot_cure_raise_at_once(
    status: int, code: str, error: type[Exception], flavor: str
) -> None:
    async with scripted(refuse(status, code)) as node:
        with pytest.raises(error) as raised:
            await take(node.url, flavor, 1, cursor=cur(9), backoff=FAST)
    assert len(node.requests) == 1
    assert node.cursors() == [cur(9)]
    assert raised.value.message == f"{code} (scripted)"  # type: ignore[attr-defined]
    if code == "bad_request":
        assert raised.value.extra["field"] == "tables"  # type: ignore[attr-defined]


@pytest.mark.parametrize("code", ["stream_gap", "capture_unavailable"])
async def test_fatal_in_stream_errors_raise_after_the_events_before_them(
    code: str, flavor: str
) -> None:
    async with scripted(events(0, [1], error=code)) as node:
        got: list[ChangeEvent] = []
        with pytest.raises((StreamGap, CaptureUnavailable)) as raised:
            await take(node.url, flavor, 0, got=got, backoff=FAST)
    assert numbers(got) == [1] and raised.value.code == code
    assert len(node.requests) == 1


async def test_unavailable_nodes_are_retried_with_backoff_and_retry_after(flavor: str) -> None:
    async with scripted(
        refuse(503, "database_unavailable", **{"Retry-After": "0.2"}),
        refuse(502, "origin_unavailable"),
        refuse(500, "internal"),
        events(0, [1], end="hang"),
    ) as node:
        loop = asyncio.get_running_loop()
        started = loop.time()
        got = await take(node.url, flavor, 1, backoff=FAST)
        waited = loop.time() - started
    assert numbers(got) == [1] and len(node.requests) == 4
    assert waited >= 0.2  # Retry-After is a lower bound on the delay, not a speed claim


async def test_a_silent_connection_is_dropped_after_idle_timeout(flavor: str) -> None:
    async with scripted(events(0, [1], end="hang"), events(1, [2], end="hang")) as node:
        got = await take(node.url, flavor, 2, backoff=FAST, idle_timeout=0.3)
    assert numbers(got) == [1, 2] and node.cursors() == [None, got[0].cursor]


async def test_give_up_after_raises_the_last_problem(flavor: str) -> None:
    async with scripted(refuse(502, "origin_unavailable")) as node:
        backoff = Backoff(initial=0.01, maximum=0.02, give_up_after=0.2)
        with pytest.raises(OriginUnavailable, match="origin_unavailable"):
            await take(node.url, flavor, 1, backoff=backoff)
    assert len(node.requests) >= 2


async def test_a_node_that_is_not_there_is_retried_then_given_up(flavor: str) -> None:
    from cache_edge.devtools.harness import free_port

    url = f"http://127.0.0.1:{free_port()}"
    backoff = Backoff(initial=0.01, maximum=0.02, give_up_after=0.1)
    with pytest.raises(OriginUnavailable, match="cannot reach"):
        await take(url, flavor, 1, backoff=backoff)


async def test_a_non_stream_answer_is_retried_and_a_malformed_event_raises(flavor: str) -> None:
    async def html(request: web.Request) -> web.StreamResponse:
        return web.Response(text="<h1>hi</h1>", content_type="text/html")

    async def broken(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'event: change\ndata: {"op": "insert"}\n\n')
        await asyncio.sleep(3600)
        return resp

    async with scripted(html, broken) as node:
        with pytest.raises(OriginUnavailable, match="malformed event"):
            await take(node.url, flavor, 1, backoff=FAST)
    assert len(node.requests) == 2


async def test_the_server_retry_field_raises_the_reconnect_delay(flavor: str) -> None:
    async def retry_then_drop(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"retry: 300\n" + frame("ready", {"cursor": cur(0)}))
        return resp

    async with scripted(retry_then_drop, events(0, [1], end="hang")) as node:
        loop = asyncio.get_running_loop()
        started = loop.time()
        backoff = Backoff(initial=0.01, maximum=1.0, jitter=0.0)  # "retry:" is capped too
        got = await take(node.url, flavor, 1, backoff=backoff)
        waited = loop.time() - started
    assert numbers(got) == [1] and node.cursors() == [None, cur(0)]
    assert waited >= 0.3  # a lower bound, not a speed claim


def test_stream_validates_its_arguments_before_connecting() -> None:
    for db in (AsyncClient("http://127.0.0.1:1", API_KEY), Client("http://127.0.0.1:1", API_KEY)):
        with pytest.raises(TypeError):
            db.stream("public.t")
        with pytest.raises(ValueError):
            db.stream(["public.t"], idle_timeout=0)


def test_cli_formats_one_readable_line_per_event() -> None:
    from cache_edge.cli.stream import format_event

    update = change_from_sse(SSEEvent("change", json.dumps(CHANGE)))
    assert format_event(update) == (
        '2026-11-25T01:16:19.123Z update public.orders {"id":7,"total":"12.50","status":"paid",'
        '"tags":["a"],"doc":{"k":null}} old_key={"id":7} unchanged=blob xid=812 '
        "cursor=00000000032D5858-00000001"
    )
    data = {"cursor": "C", "table": "public.t", "op": "truncate", "xid": None}
    assert format_event(change_from_sse(SSEEvent("change", json.dumps(data)))) == (
        "- truncate public.t xid=- cursor=C"
    )
