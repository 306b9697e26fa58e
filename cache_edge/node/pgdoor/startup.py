"""A new connection's first packets: TLS and GSSAPI negotiation, cancels, the startup packet.

Follows PostgreSQL's order: a client may ask for TLS (SSLRequest) or GSSAPI encryption
(GSSENCRequest, always refused so libpq falls back) before its StartupMessage, or send a
CancelRequest instead. Bytes that arrive after an SSLRequest but before the handshake
are refused: they were sent in plaintext and a man in the middle could have written them
(CVE-2021-23214).
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from dataclasses import dataclass, field

from cache_edge.pgwire.messages import (
    CANCEL_REQUEST,
    GSSENC_REQUEST,
    PROTOCOL_3,
    SSL_REQUEST,
    ProtocolViolation,
    cstring,
    error_response,
    message,
    parse_startup,
)

__all__ = ["Cancel", "ClientStream", "Refused", "Startup", "negotiate"]

_MAX_STARTUP = 10_000  # PostgreSQL's MAX_STARTUP_PACKET_LENGTH
_FALSE = ("false", "off", "no", "0")


class Refused(Exception):
    """The connection is refused with this FATAL ErrorResponse (may be b"": just close)."""

    def __init__(self, response: bytes) -> None:
        super().__init__("refused")
        self.response = response


class ClientStream:
    """A client socket with our own read buffer (so that pipelined bytes can be seen)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()
        self.tls = False

    async def fill(self, limit: int = 1 << 16) -> None:
        data = await self.reader.read(limit)
        if not data:
            raise ConnectionResetError("the client closed the connection")
        self.buffer += data

    async def need(self, size: int) -> None:
        while len(self.buffer) < size:
            await self.fill()


@dataclass(frozen=True, slots=True)
class Startup:
    user: str
    database: str
    settings: dict[str, str] = field(default_factory=dict)  # everything else, incl. options
    application_name: str = ""


@dataclass(frozen=True, slots=True)
class Cancel:
    pid: int
    secret: int


def _fatal(sqlstate: str, text: str) -> Refused:
    return Refused(error_response(sqlstate, text, "FATAL"))


def parse_options(options: str) -> dict[str, str]:
    """libpq's ``options``: ``-c name=value`` and ``--name=value``, backslash escapes spaces."""
    words: list[str] = []
    current = ""
    escaped = False
    for ch in options:
        if escaped:
            current += ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch.isspace():
            if current:
                words.append(current)
            current = ""
        else:
            current += ch
    if current:
        words.append(current)
    out: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-c" and i + 1 < len(words):
            pair = words[i + 1]
            i += 2
        elif word.startswith("-c") or word.startswith("--"):
            pair = word[2:]
            i += 1
        else:
            raise _fatal("22023", f"invalid command-line argument for server process: {word}")
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise _fatal("22023", f"invalid command-line argument for server process: {pair}")
        out[name.replace("-", "_")] = value
    return out


async def negotiate(stream: ClientStream, tls: ssl.SSLContext | None) -> Startup | Cancel:
    """Read packets until a StartupMessage (or a CancelRequest); raises Refused."""
    while True:
        await stream.need(4)
        (length,) = struct.unpack_from("!I", stream.buffer, 0)
        if length < 8 or length > _MAX_STARTUP:
            # As PostgreSQL: a packet of invalid length is logged and the connection closed
            # without a word (a client that queued Terminate before connecting, say).
            raise Refused(b"")
        await stream.need(length)
        packet = bytes(stream.buffer[:length])
        del stream.buffer[:length]
        (code,) = struct.unpack_from("!I", packet, 4)
        if code in (SSL_REQUEST, GSSENC_REQUEST):
            if stream.buffer:
                raise _fatal("08P01", "received unencrypted data after SSL request")
            if code == SSL_REQUEST and tls is not None and not stream.tls:
                stream.writer.write(b"S")
                await stream.writer.drain()
                await stream.writer.start_tls(tls)
                stream.tls = True
            else:
                stream.writer.write(b"N")
            continue
        if code == CANCEL_REQUEST:
            if length != 16:
                raise Refused(b"")
            pid, secret = struct.unpack_from("!II", packet, 8)
            return Cancel(pid, secret)
        major, minor = code >> 16, code & 0xFFFF
        if major != 3:
            raise _fatal(
                "0A000",
                f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0",
            )
        try:
            params = parse_startup(packet[8:])
        except ProtocolViolation as exc:
            raise _fatal("08P01", str(exc)) from None
        unknown = [name for name in params if name.startswith("_pq_.")]
        if minor > 0 or unknown:
            # NegotiateProtocolVersion: 3.0, and none of the protocol options asked for.
            body = struct.pack("!II", PROTOCOL_3, len(unknown))
            stream.writer.write(message(b"v", body + b"".join(cstring(u) for u in unknown)))
        return _startup(params)


def _startup(params: dict[str, str]) -> Startup:
    user = params.pop("user", "")
    if not user:
        raise _fatal("28000", "no PostgreSQL user name specified in startup packet")
    database = params.pop("database", "") or user
    replication = params.pop("replication", "false").lower()
    if replication not in _FALSE:
        raise _fatal(
            "0A000",
            "replication connections are not supported by cache-edge: connect to the "
            "database directly for replication",
        )
    settings: dict[str, str] = {}
    options = params.pop("options", "")
    if options:
        settings.update(parse_options(options))
    for name, value in params.items():
        if not name.startswith("_pq_."):
            settings[name] = value
    for name in settings:
        if name.lower() in ("role", "session_authorization"):
            raise _fatal(
                "42501",
                "changing the role is not supported through cache-edge: the database role "
                "comes from the tenant's configuration",
            )
    return Startup(user, database, settings, settings.get("application_name", ""))
