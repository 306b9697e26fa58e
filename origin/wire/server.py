"""One raw protocol-3.0 connection to PostgreSQL, owned by the wire pool.

asyncpg decodes everything it reads; the door must hand clients PostgreSQL's own bytes,
so this is a small client of its own: startup, authentication (trust, cleartext, md5,
SCRAM-SHA-256 through scramp), optional TLS, and whole-message reads. Everything after
startup is relayed by :mod:`origin.wire.session`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import struct
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import scramp

from cache_edge.pgwire.messages import (
    CANCEL_REQUEST,
    PROTOCOL_3,
    ProtocolViolation,
    cstring,
    message,
    parse_error_fields,
    split_messages,
)

__all__ = ["DatabaseTarget", "ServerConnection", "ServerError", "send_cancel"]

_MAX_SERVER_MESSAGE = 1 << 30  # PostgreSQL's own bound on a message
_READ_CHUNK = 1 << 16


class ServerError(Exception):
    """PostgreSQL refused the connection or an internal statement (carries its fields)."""

    def __init__(self, fields: Mapping[str, str]) -> None:
        super().__init__(fields.get("M", "database error"))
        self.fields = dict(fields)

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "08006")


@dataclass(frozen=True, slots=True)
class DatabaseTarget:
    """Where and as whom a tenant's connections log in, from its database_url."""

    host: str
    port: int
    user: str
    password: str
    database: str
    sslmode: str = "prefer"

    @classmethod
    def from_url(cls, url: str) -> DatabaseTarget:
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        host = query.get("host") or unquote(parts.hostname or "") or "/var/run/postgresql"
        port = int(query.get("port") or parts.port or 5432)
        user = unquote(parts.username or "") or query.get("user", "postgres")
        database = unquote(parts.path.lstrip("/")) or query.get("dbname", "") or user
        return cls(
            host=host,
            port=port,
            user=user,
            password=unquote(parts.password or "") or query.get("password", ""),
            database=database,
            sslmode=query.get("sslmode", "prefer"),
        )

    async def open(self, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with asyncio.timeout(timeout):
            if self.host.startswith("/"):
                return await asyncio.open_unix_connection(f"{self.host}/.s.PGSQL.{self.port}")
            reader, writer = await asyncio.open_connection(self.host, self.port)
            if self.sslmode in ("disable", "allow"):
                return reader, writer
            writer.write(struct.pack("!II", 8, 80877103))
            answer = await reader.readexactly(1)
            if answer == b"S":
                context = ssl.create_default_context()
                if self.sslmode in ("prefer", "require"):
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                await writer.start_tls(context, server_hostname=self.host)
            elif self.sslmode in ("require", "verify-ca", "verify-full"):
                writer.close()
                raise ServerError({"C": "08004", "M": "the database does not accept TLS"})
            return reader, writer


class ServerConnection:
    """A logged-in database session: its key for cancels, its reported parameters, and
    what cache-edge has put into it (prepared statements, the session state it carries)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: DatabaseTarget
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.target = target
        self.pid = 0
        self.secret = 0
        self.parameters: dict[str, str] = {}
        # server statement name -> None, oldest first (the pool closes the oldest past its cap)
        self.prepared: OrderedDict[bytes, None] = OrderedDict()
        # statements of ended sessions (or closed by their client elsewhere): closed here
        # the next time a session borrows this connection
        self.to_close: set[bytes] = set()
        self.state_key = ""  # fingerprint of the client settings applied ("" = none)
        # whose unnamed statement this connection holds: (session, its Parse generation)
        self.unnamed_owner: tuple[int, int] | None = None
        self.broken = False
        self._buffer = bytearray()
        self._messages: list[bytes] = []

    @classmethod
    async def connect(
        cls, target: DatabaseTarget, startup: Mapping[str, str], timeout: float
    ) -> ServerConnection:
        reader, writer = await target.open(timeout)
        conn = cls(reader, writer, target)
        try:
            async with asyncio.timeout(timeout):
                await conn._startup(startup)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _startup(self, startup: Mapping[str, str]) -> None:
        params = {"user": self.target.user, "database": self.target.database, **startup}
        body = struct.pack("!I", PROTOCOL_3)
        body += b"".join(cstring(k) + cstring(v) for k, v in params.items()) + b"\x00"
        self.writer.write(struct.pack("!I", len(body) + 4) + body)
        scram: scramp.ScramClient | None = None
        while True:
            msg = await self.read_message()
            kind = msg[:1]
            if kind == b"E":
                raise ServerError(parse_error_fields(msg))
            if kind == b"R":
                code = struct.unpack_from("!I", msg, 5)[0]
                if code == 0:
                    continue
                if code == 3:
                    self.writer.write(message(b"p", cstring(self.target.password)))
                elif code == 5:
                    salt = msg[9:13]
                    inner = hashlib.md5(
                        (self.target.password + self.target.user).encode()
                    ).hexdigest()
                    outer = hashlib.md5(inner.encode() + salt).hexdigest()
                    self.writer.write(message(b"p", cstring("md5" + outer)))
                elif code == 10:
                    mechanisms = [m.decode() for m in msg[9:].split(b"\x00") if m]
                    scram = scramp.ScramClient(mechanisms, self.target.user, self.target.password)
                    first = scram.get_client_first().encode()
                    self.writer.write(
                        message(
                            b"p",
                            cstring(scram.mechanism_name) + struct.pack("!I", len(first)) + first,
                        )
                    )
                elif code == 11 and scram is not None:
                    scram.set_server_first(msg[9:].decode())
                    self.writer.write(message(b"p", scram.get_client_final().encode()))
                elif code == 12 and scram is not None:
                    scram.set_server_final(msg[9:].decode())
                else:
                    raise ServerError(
                        {"C": "08004", "M": f"unsupported authentication request {code}"}
                    )
            elif kind == b"S":
                name, value = msg[5:-1].split(b"\x00")[:2]
                self.parameters[name.decode()] = value.decode()
            elif kind == b"K":
                self.pid, self.secret = struct.unpack_from("!II", msg, 5)
            elif kind == b"Z":
                return

    async def read_message(self) -> bytes:
        """The next whole message (the door's relay reads in chunks instead: :meth:`read_some`)."""
        while not self._messages:
            await self._fill()
        return self._messages.pop(0)

    async def read_some(self) -> list[bytes]:
        """Every whole message that has arrived, waiting for at least one."""
        while not self._messages:
            await self._fill()
        out, self._messages = self._messages, []
        return out

    async def _fill(self) -> None:
        data = await self.reader.read(_READ_CHUNK)
        if not data:
            self.broken = True
            raise ConnectionResetError("the database closed the connection")
        self._buffer += data
        try:
            found, used = split_messages(self._buffer, _MAX_SERVER_MESSAGE)
        except ProtocolViolation:
            self.broken = True
            raise
        if used:
            del self._buffer[:used]
            self._messages.extend(found)

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def run(self, sql: str) -> list[bytes]:
        """Run cache-edge's own simple query; its messages, or ServerError (state stays valid:
        the error is read through to ReadyForQuery)."""
        self.unnamed_owner = None  # a simple query drops the unnamed statement
        self.writer.write(message(b"Q", cstring(sql)))
        return await self.until_ready()

    async def until_ready(self) -> list[bytes]:
        out: list[bytes] = []
        error: ServerError | None = None
        while True:
            msg = await self.read_message()
            kind = msg[:1]
            if kind == b"Z":
                if error is not None:
                    raise error
                return out
            if kind == b"E":
                error = ServerError(parse_error_fields(msg))
            elif kind == b"S":
                name, value = msg[5:-1].split(b"\x00")[:2]
                self.parameters[name.decode()] = value.decode()
            out.append(msg)

    @property
    def has_unread(self) -> bool:
        """An idle connection has nothing to say: anything waiting (PostgreSQL's FATAL
        before it closed: pg_terminate_backend, idle_session_timeout, a restart) means it
        is dead, and it must not be lent to a session that would get that error."""
        pending = getattr(self.reader, "_buffer", b"")  # asyncio's StreamReader buffer
        return bool(pending) or bool(self._buffer) or bool(self._messages) or self.reader.at_eof()

    @property
    def closed(self) -> bool:
        return self.broken or self.writer.is_closing() or self.reader.at_eof()

    def close(self) -> None:
        self.broken = True
        if not self.writer.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                self.writer.write(message(b"X"))
            self.writer.close()


async def send_cancel(target: DatabaseTarget, pid: int, secret: int, timeout: float) -> None:
    """PostgreSQL's cancel: a new connection carrying the backend's key, then closed."""
    try:
        reader, writer = await target.open(timeout)
    except (OSError, TimeoutError, ServerError):
        return
    try:
        writer.write(struct.pack("!IIII", 16, CANCEL_REQUEST, pid, secret))
        await writer.drain()
        async with asyncio.timeout(timeout):
            await reader.read(1)  # the server closes when done
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()
