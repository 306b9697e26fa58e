"""Protocol 3.0 framing, and the handful of messages cache-edge writes itself.

Everything else is relayed as PostgreSQL produced it. A message is a type byte and a
big-endian int32 length that counts itself but not the type byte; the startup-phase
packets (startup, SSLRequest, GSSENCRequest, CancelRequest) have no type byte.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

__all__ = [
    "CANCEL_REQUEST",
    "GSSENC_REQUEST",
    "PROTOCOL_3",
    "SSL_REQUEST",
    "WRITE_TAGS",
    "ErrorFields",
    "Frames",
    "ProtocolViolation",
    "auth_ok",
    "auth_request",
    "backend_key_data",
    "cstring",
    "error_response",
    "message",
    "notice_response",
    "parameter_status",
    "parse_error_fields",
    "parse_startup",
    "ready_for_query",
    "split_messages",
    "sqlstate_of",
]

PROTOCOL_3 = 196608  # 3.0
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

# CommandComplete tags of statements that may have changed data (COMMIT: of a transaction
# that may have): after one, a door session's reads must not be older than its write.
WRITE_TAGS = frozenset({b"INSERT", b"UPDATE", b"DELETE", b"MERGE", b"COPY", b"TRUNCATE", b"COMMIT"})

_HEADER = struct.Struct("!cI")
_INT32 = struct.Struct("!I")


class ProtocolViolation(Exception):
    """The peer broke the framing rules; the connection cannot continue (SQLSTATE 08P01)."""


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + _INT32.pack(len(body) + 4) + body


def cstring(text: str) -> bytes:
    return text.encode() + b"\x00"


def split_messages(buf: bytearray | bytes, max_size: int) -> tuple[list[bytes], int]:
    """Cut the complete messages off the front of ``buf``: (messages, bytes consumed).

    Each message is returned whole (type byte, length, body). A length below 4 or above
    ``max_size`` is a violation: the stream has lost its framing or is hostile, and
    nothing after it can be trusted.
    """
    out: list[bytes] = []
    pos = 0
    end = len(buf)
    while end - pos >= 5:
        length = _INT32.unpack_from(buf, pos + 1)[0]
        if length < 4 or length > max_size:
            raise ProtocolViolation(
                f"invalid message length {length} for message type {bytes(buf[pos : pos + 1])!r}"
            )
        stop = pos + 1 + length
        if stop > end:
            break
        out.append(bytes(buf[pos:stop]))
        pos = stop
    return out, pos


class Frames:
    """Iterate the messages of a buffer that holds only whole messages (already split)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __iter__(self) -> Iterator[tuple[bytes, memoryview]]:
        view = memoryview(self._data)
        pos = 0
        while pos < len(view):
            kind = bytes(view[pos : pos + 1])
            length = _INT32.unpack_from(view, pos + 1)[0]
            yield kind, view[pos : pos + 1 + length]
            pos += 1 + length


def parse_startup(body: bytes) -> dict[str, str]:
    """The name/value pairs of a StartupMessage body after the protocol version."""
    parts = body.split(b"\x00")
    if len(parts) < 2 or parts[-1] != b"" or parts[-2] != b"":
        raise ProtocolViolation("startup packet is not terminated")
    pairs = parts[:-2]
    if len(pairs) % 2:
        raise ProtocolViolation("startup packet has a parameter without a value")
    try:
        decoded = [p.decode() for p in pairs]
    except UnicodeDecodeError:
        raise ProtocolViolation("startup packet is not valid UTF-8") from None
    params: dict[str, str] = {}
    for name, value in zip(decoded[::2], decoded[1::2], strict=True):
        if not name:
            raise ProtocolViolation("startup packet has an empty parameter name")
        params[name] = value
    return params


# ---------------------------------------------------------------- backend messages we write


def auth_ok() -> bytes:
    return message(b"R", _INT32.pack(0))


def auth_request(code: int, data: bytes = b"") -> bytes:
    return message(b"R", _INT32.pack(code) + data)


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstring(name) + cstring(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    return message(b"K", struct.pack("!II", pid, secret))


def ready_for_query(status: bytes = b"I") -> bytes:
    return message(b"Z", status)


@dataclass(frozen=True, slots=True)
class ErrorFields:
    """An ErrorResponse/NoticeResponse built by cache-edge (PostgreSQL's are relayed as is)."""

    sqlstate: str
    message: str
    severity: str = "ERROR"
    detail: str = ""
    hint: str = ""

    def encode(self, kind: bytes = b"E") -> bytes:
        body = b"S" + cstring(self.severity) + b"V" + cstring(self.severity)
        body += b"C" + cstring(self.sqlstate) + b"M" + cstring(self.message)
        if self.detail:
            body += b"D" + cstring(self.detail)
        if self.hint:
            body += b"H" + cstring(self.hint)
        return message(kind, body + b"\x00")


def error_response(
    sqlstate: str, text: str, severity: str = "ERROR", detail: str = "", hint: str = ""
) -> bytes:
    return ErrorFields(sqlstate, text, severity, detail, hint).encode(b"E")


def notice_response(sqlstate: str, text: str, severity: str = "WARNING") -> bytes:
    return ErrorFields(sqlstate, text, severity).encode(b"N")


def sqlstate_of(msg: bytes, default: str = "") -> str:
    """The SQLSTATE (C field) of an ErrorResponse, without decoding the other fields."""
    at = msg.find(b"\x00C", 5)
    return msg[at + 2 : at + 7].decode("ascii", "replace") if at >= 0 else default


def parse_error_fields(msg: bytes) -> Mapping[str, str]:
    """The fields of an ErrorResponse/NoticeResponse message, by their one-letter codes."""
    out: dict[str, str] = {}
    for part in msg[5:].split(b"\x00"):
        if part:
            out[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return out
