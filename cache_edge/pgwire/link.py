"""Frames of the node↔origin link: PostgreSQL-door sessions and the HTTP door's origin calls.

One WebSocket per node process, authenticated once when it opens (the node signs the
upgrade request with the node secret and a nonce, and the origin refuses a second use of
that signature), then multiplexing every client session of that process and every query
or transaction the node sends the origin (CALL/REPLY: the body and the answer bytes of
``POST /v1/query`` or ``/v1/transaction``, without a signature per request). A frame is a
msgpack array ``[kind, session id, payload]``; session data is whole protocol messages,
so a client's Parse/Bind/Execute/Sync travel as one frame.
"""

from __future__ import annotations

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
    "decode_frame",
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


def decode_frame(data: bytes) -> tuple[int, int, Any]:
    try:
        frame = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ValueError(f"malformed link frame: {exc}") from None
    if not isinstance(frame, list) or len(frame) != 3:
        raise ValueError("malformed link frame: expected [kind, session, payload]")
    kind, sid, payload = frame
    if not isinstance(kind, int) or not isinstance(sid, int):
        raise ValueError("malformed link frame: kind and session must be integers")
    return kind, sid, payload
