"""Frames of the node↔origin link: PostgreSQL-door sessions and the HTTP door's origin calls.

One WebSocket per node process. It is authenticated once, when it opens: the node signs
the upgrade request with the node secret and a nonce, and the origin refuses a second use
of that signature. Every message the node sends afterwards is sealed with a MAC keyed to
that opening (cache_edge.common.signing.LinkSealer). The link multiplexes every client
session of that process and every query or transaction the node sends the origin
(CALL/REPLY: the body and the answer bytes of ``POST /v1/query`` or ``/v1/transaction``,
without a signature per request). A frame is a msgpack array ``[kind, session id,
payload]``; session data is whole protocol messages, so a client's Parse/Bind/Execute/Sync
travel as one frame. A WebSocket message carries one frame or several back to back
(:func:`batch`): under load a writer sends what queued up while it was sending in one
message and one system call, not one each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

__all__ = [
    "CALL",
    "CALLS",
    "CANCEL",
    "CLOSE",
    "DATA",
    "DEFINE",
    "OPEN",
    "OPENED",
    "PATH",
    "QUERY",
    "REPLY",
    "RESULT",
    "WROTE",
    "batch",
    "decode_frame",
    "decode_frames",
    "encode_frame",
]

PATH = "/v1/wire"

# node -> origin
OPEN = 1  # payload {"tenant", "settings": {name: value}, "key": [pid, secret]}
DATA = 2  # payload: frontend (node -> origin) or backend (origin -> node) messages
CLOSE = 3  # node -> origin: the client left; origin -> node: payload = final messages
CANCEL = 4  # node -> origin, payload [pid, secret]: the client's cancel key
# origin -> node
OPENED = 5  # payload {"status": [[name, value], ...]} or {"error": ErrorResponse bytes}
# node -> origin, session id = a request id: one cacheable read (origin.wire.reads)
QUERY = 6
# origin -> node: its answer, {"answer"} | {"error", "readOnly"} | {"uncacheable"}
RESULT = 7
# node -> origin: a Parse the node answered itself (a cached read); the session records the
# statement without running it, to prepare it where the client uses it next
DEFINE = 8
# origin -> node, payload the purge seq covering the session's last committed write (0: no
# automatic invalidation; None: unknown): the node's reads then serve nothing older
WROTE = 9
# node -> origin, session id = a call id: what POST /v1/query or /v1/transaction would carry,
# {"path", "tenant", "requestId", "body"}; the tenant is the one the node authenticated
CALL = 10
# origin -> node: [status, answer bytes (the HTTP body, msgpack), request id]
REPLY = 11
CALLS = ("/v1/query", "/v1/transaction")  # the paths a CALL may name


def encode_frame(kind: int, sid: int, payload: Any) -> bytes:
    packed: bytes = msgpack.packb([kind, sid, payload], use_bin_type=True)
    return packed


_BATCH_BYTES = 1 << 20  # a batch stops growing here (messages may be up to 64 MiB)


def batch(first: bytes, more: Callable[[], bytes | None]) -> bytes:
    """``first`` and the frames ``more()`` gives until it gives None, as one message
    (at most about 1 MiB of them: a frame already queued behind waits for the next)."""
    nxt = more()
    if nxt is None:
        return first
    parts, size = [first, nxt], len(first) + len(nxt)
    while size < _BATCH_BYTES:
        nxt = more()
        if nxt is None:
            break
        parts.append(nxt)
        size += len(nxt)
    return b"".join(parts)


def decode_frames(data: bytes) -> list[tuple[int, int, Any]]:
    """Every frame of one message (usually one)."""
    try:
        first, rest = msgpack.unpackb(data, raw=False), b""
    except msgpack.ExtraData as extra:
        first, rest = extra.unpacked, extra.extra
    except (ValueError, msgpack.FormatError, msgpack.StackError) as exc:
        raise ValueError(f"malformed link frame: {exc}") from None
    frames = [_checked(first)]
    if not rest:
        return frames
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(rest), 1 << 20))
    unpacker.feed(rest)
    end = 0  # where the last whole frame ended
    try:
        while end < len(rest):
            frames.append(_checked(unpacker.unpack()))
            end = unpacker.tell()
    except msgpack.OutOfData:
        raise ValueError("malformed link frame: truncated") from None
    except _Malformed:
        raise
    except (ValueError, msgpack.FormatError, msgpack.StackError) as exc:
        raise ValueError(f"malformed link frame: {exc}") from None
    return frames


def decode_frame(data: bytes) -> tuple[int, int, Any]:
    try:
        frame = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ValueError(f"malformed link frame: {exc}") from None
    return _checked(frame)


class _Malformed(ValueError):
    pass


def _checked(frame: Any) -> tuple[int, int, Any]:
    if not isinstance(frame, list) or len(frame) != 3:
        raise _Malformed("malformed link frame: expected [kind, session, payload]")
    kind, sid, payload = frame
    if not isinstance(kind, int) or not isinstance(sid, int):
        raise _Malformed("malformed link frame: kind and session must be integers")
    return kind, sid, payload
