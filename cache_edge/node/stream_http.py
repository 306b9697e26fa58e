"""``GET /v1/stream``: change events as server-sent events (docs/change-streams.md).

Everything that can fail is checked before the response starts, so such failures are
ordinary JSON errors with their status; once streaming, the end of a stream is an
``error`` event naming why, then the end of the response.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from aiohttp import web

from cache_edge.common.errors import BadRequest, CacheEdgeError
from cache_edge.common.wire import json_dumps
from cache_edge.node.streams import StreamHub
from cache_edge.server.config import NodeConfig

__all__ = ["serve_stream"]

_OPS = ("insert", "update", "delete", "truncate")
# A subscriber that does not read must fill its queue soon, not a kernel buffer of megabytes.
_SEND_BUFFER = 64 * 1024
# How long the closing error event may take to reach a client that is not reading.
_FINAL_WRITE = 1.0


def _split(value: str | None, name: str) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise BadRequest(f"{name} is empty", field=name)
    return items


def _sse(event: str, data: bytes, event_id: str | None = None) -> bytes:
    """One server-sent event; ``data`` is its JSON, on one line."""
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\n".encode() + b"data: " + data + b"\n\n"


async def serve_stream(
    request: web.Request, hub: StreamHub, tenant: str, config: NodeConfig
) -> web.StreamResponse:
    tables = _split(request.query.get("tables"), "tables")
    if tables is None:
        raise BadRequest("tables is required, e.g. ?tables=public.orders", field="tables")
    ops = _split(request.query.get("ops"), "ops")
    if ops is not None and not set(ops) <= set(_OPS):
        raise BadRequest(f"ops must list some of {', '.join(_OPS)}", field="ops")
    cursor = request.headers.get("Last-Event-ID") or request.query.get("cursor") or None
    async with hub.subscribe(tenant, tables, ops, cursor) as sub:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
            }
        )
        await response.prepare(request)
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
        await response.write(_sse("ready", json_dumps({"cursor": sub.start})))
        try:
            while True:
                item = await sub.next(config.stream_heartbeat)
                if item is None:
                    data = b": keepalive\n\n"
                elif isinstance(item, CacheEdgeError):
                    if not sub.ended_cleanly:
                        await _write_final(response, _sse("error", json_dumps(item.to_body())))
                    break
                else:
                    data = b"".join(_sse("change", e.json, e.cursor) for e in item)
                if not await _write(response, data, sub.closed_event):
                    # Cut off while the client was not reading: say why if it still can.
                    assert sub.closed is not None
                    error = json_dumps(sub.closed.to_body())
                    await _write_final(response, _sse("error", error))
                    break
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away; its last cursor lets it resume
        return response


async def _write(response: web.StreamResponse, data: bytes, closed: asyncio.Event) -> bool:
    """Write, unless the subscription is closed while the write waits for the client."""
    write = asyncio.ensure_future(response.write(data))
    if write.done():
        await write
        return True
    closing = asyncio.ensure_future(closed.wait())
    try:
        await asyncio.wait({write, closing}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        closing.cancel()
    if write.done():
        await write
        return True
    write.cancel()
    return False


async def _write_final(response: web.StreamResponse, data: bytes) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(response.write(data), _FINAL_WRITE)
