"""Reading a request body under a size cap and a deadline (node and origin alike).

aiohttp bounds the size of headers and (with ``client_max_size``) of a body read
at once, but not the time a client may take to send it: a client that trickles
its body, or never finishes it, would hold a handler forever. Here the body is
streamed with a running size check, under one deadline; a client that misses it
gets ``bad_request`` and its connection is closed (:func:`answer_and_close`).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from cache_edge.common.errors import BadRequest, PayloadTooLarge

__all__ = ["BodyTimeout", "answer_and_close", "read_capped"]

_CHUNK = 65536


class BodyTimeout(BadRequest):
    """The client did not send its whole body in time; answer, then close the connection."""


async def read_capped(request: web.Request, cap: int, timeout: float) -> bytes:
    """The whole body, or PayloadTooLarge past ``cap`` bytes, or BodyTimeout after ``timeout``."""
    if request.content_length is not None and request.content_length > cap:
        raise PayloadTooLarge(
            f"request body of {request.content_length} bytes exceeds the limit of {cap}"
        )
    # Fast path: a small body usually arrives with the headers and is already buffered;
    # then there is nothing to wait for and no deadline to arm.
    if request.content_length is not None:
        ready = request.content.read_nowait()
        if request.content.is_eof() and len(ready) == request.content_length:
            return ready
        chunks: list[bytes] = [ready] if ready else []
        size = len(ready)
    else:
        chunks = []
        size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_chunked(_CHUNK):
                size += len(chunk)
                if size > cap:
                    raise PayloadTooLarge(f"request body exceeds the limit of {cap} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeout(f"request body not received within {timeout:g} s") from None
    return b"".join(chunks)


async def answer_and_close(request: web.Request, response: web.StreamResponse) -> None:
    """Send ``response`` now and close the connection once it is flushed.

    aiohttp would otherwise linger up to 10 s reading the rest of an unfinished
    body before closing: for a client that stalled on purpose, that is 10 s more.
    """
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    if request.transport is not None:
        request.transport.close()  # flushes what was written, then closes
