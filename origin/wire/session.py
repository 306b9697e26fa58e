"""One client session of the PostgreSQL door, relayed onto pooled database connections.

Transaction pooling, as PgBouncer does it: a session borrows a connection when it sends
something and gives it back when PostgreSQL reports ReadyForQuery 'I' with nothing of the
client's left in flight. While it holds one, the client's messages go to it as they come
and PostgreSQL's messages come back untouched, so results are byte for byte the server's.

What a session carries from one connection to the next:

1. Its settings. Startup parameters and every ``SET`` that committed are read back from
   ``pg_settings`` before the connection is returned (only after a command tag showed a
   SET/RESET/DISCARD, or set_config() ran), and applied wherever the session lands next
   (``RESET ALL`` plus ``set_config``; connections already in that state skip it).
2. Its prepared statements. Their names are made unique per session (two clients may both
   call theirs ``S_1``), and one a client uses on a connection that lacks it is parsed there
   first, with the client's unnamed statement too when a Bind relies on an earlier Parse.
3. Nothing else: features that need one server session pin it (:mod:`cache_edge.pgwire.statements`).

Failure story: a connection that breaks or that the client abandons mid-transaction is
closed, never lent again (PostgreSQL rolls its transaction back); a client that goes quiet
inside a transaction loses it after ``idle_in_transaction_timeout`` (PostgreSQL ends it and
its FATAL error reaches the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import struct
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import xxhash

from cache_edge.common.errors import CacheEdgeError, DatabaseUnavailable, PoolTimeout
from cache_edge.pgwire.messages import (
    WRITE_TAGS,
    ProtocolViolation,
    error_response,
    message,
    ready_for_query,
    split_messages,
    sqlstate_of,
)
from cache_edge.pgwire.statements import (
    IDENTITY_REFUSAL,
    needs_pin,
    refusal_sql,
    refused,
    touches_settings,
)
from cache_edge.server.logs import get_logger
from origin.wire.pool import WirePool
from origin.wire.server import ServerConnection, ServerError

__all__ = ["SessionEvents", "WireSession", "sqlstate_for"]

log = get_logger("origin.wire.session")


class _Check:
    """Queue item: look whether the connection can go back."""


@dataclass(frozen=True, slots=True)
class _Define:
    """Queue item: a Parse the node answered itself (it served the statement from cache)."""

    parse: bytes


_CHECK: Final = _Check()
_MAX_MESSAGE = 1 << 30


def _snapshot_sql(login: str) -> str:
    """The session's settings, and a row ('', 'true') while it still runs as the login role
    (a boolean cast to text is 'true', not 't')."""
    same = f"current_user = {_dollar(login)} AND session_user = {_dollar(login)}"
    return (
        "SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session' "
        f"UNION ALL SELECT '', ({same})::text"
    )


# Command tags after which the session's settings (or its role) may have changed. DO is
# there because a DO block can run SET through EXECUTE without a SET tag of its own.
_STATE_TAGS = (b"SET", b"RESET", b"DISCARD", b"DO")

_UIDS = itertools.count(1)
_DEALLOCATE = re.compile(
    rb'\A\s*DEALLOCATE\s+(?:PREPARE\s+)?(?:"(?P<quoted>(?:[^"]|"")+)"|(?P<name>[A-Za-z_][\w$]*))'
    rb"\s*;?\s*\Z",
    re.IGNORECASE,
)
# What the relay sent and awaits an answer to (ParseComplete, CloseComplete, ReadyForQuery)
_PARSE, _INJECTED, _SYNC, _CLOSE, _INJECTED_CLOSE = 0, 1, 2, 3, 4
_PLACEHOLDER, _REFUSED = 5, 6  # a Parse that redefines a statement (see _redefine)

_SQLSTATES = {PoolTimeout: "53300", DatabaseUnavailable: "08006"}


def sqlstate_for(exc: CacheEdgeError) -> str:
    """The SQLSTATE a door client sees for one of our own errors (mapped here only)."""
    for kind, state in _SQLSTATES.items():
        if isinstance(exc, kind):
            return state
    return "XX000"


class SessionEvents:
    """What a session tells the rest of the origin (the link, metrics, the WAL capture)."""

    def __init__(
        self,
        send: Callable[[int, bytes], None],
        ended: Callable[[int, bytes], None],
        wrote: Callable[[str, int], None] = lambda tenant, sid: None,
        pinned: Callable[[str], None] = lambda tenant: None,
        leased: Callable[[str], None] = lambda tenant: None,
        failed: Callable[[str, str], None] = lambda tenant, sqlstate: None,
    ) -> None:
        self.send = send
        self.ended = ended
        self.wrote = wrote
        self.pinned = pinned
        self.leased = leased  # a database connection was lent to the session
        self.failed = failed  # the client received an ErrorResponse (tenant, SQLSTATE)


def _cstr(data: bytes, pos: int) -> tuple[bytes, int]:
    end = data.find(b"\x00", pos)
    if end < 0:  # a client's malformed message: 08P01 as PostgreSQL, not an internal error
        raise ProtocolViolation(f"invalid string in message type {data[:1].decode('latin-1')}")
    return data[pos:end], end + 1


def _dollar(value: str) -> str:
    tag = "$ce$"
    # Not only inside the value: one ending in "$ce" would close "$ce$" early.
    while (value + tag).find(tag) < len(value):
        tag = tag[:-1] + "x$"
    return f"{tag}{value}{tag}"


def apply_sql(settings: dict[str, str]) -> str:
    calls = ", ".join(
        f"pg_catalog.set_config({_dollar(k)}, {_dollar(v)}, false)"
        for k, v in sorted(settings.items())
    )
    return "RESET ALL" + (f"; SELECT {calls}" if calls else "")


def settings_key(settings: dict[str, str]) -> str:
    if not settings:
        return ""
    return xxhash.xxh3_64_hexdigest(repr(sorted(settings.items())).encode())


def _data_rows(messages: list[bytes]) -> list[list[str | None]]:
    rows: list[list[str | None]] = []
    for msg in messages:
        if msg[:1] != b"D":
            continue
        count = struct.unpack_from("!H", msg, 5)[0]
        pos = 7
        row: list[str | None] = []
        for _ in range(count):
            size = struct.unpack_from("!i", msg, pos)[0]
            pos += 4
            if size < 0:
                row.append(None)
            else:
                row.append(msg[pos : pos + size].decode())
                pos += size
        rows.append(row)
    return rows


class WireSession:
    """A client session at the origin; fed whole frontend messages by the link."""

    def __init__(
        self,
        sid: int,
        tenant: str,
        pool: WirePool,
        settings: dict[str, str],
        events: SessionEvents,
        max_prepared: int = 500,
    ) -> None:
        self.sid = sid  # the link's name for the session (unique on that link only)
        self.uid = next(_UIDS)  # unique in this origin process: names its statements
        self.tenant = tenant
        self.pool = pool
        self.events = events
        self.settings = pool.clamped(settings)
        self._key = settings_key(self.settings)
        self._max_prepared = max_prepared
        self.conn: ServerConnection | None = None
        self.status = b"I"
        self.pinned = False
        self._queue: asyncio.Queue[bytes | _Check | _Define | None] = asyncio.Queue()
        self._outstanding = 0  # ReadyForQuery messages still to come
        self._unsynced = False  # extended-protocol messages sent since the last Sync
        self._dirty = False  # settings may have changed: read them before release
        self._wrote = False
        self._statements: dict[bytes, tuple[bytes, bytes]] = {}  # client -> (server, tail)
        self._unnamed: bytes | None = None  # the tail of the last unnamed Parse
        self._unnamed_gen = 0
        # Parses, Closes and Syncs sent and not yet answered, in order (see _answered)
        self._pending: deque[tuple[int, bytes]] = deque()
        # connections this session parsed statements on (closed there when it ends)
        self._placed: weakref.WeakSet[ServerConnection] = weakref.WeakSet()
        self._counter = 0
        self._pump: asyncio.Task[None] | None = None
        self._ended = False
        self._task = asyncio.create_task(self._run(), name=f"wire-session-{sid}")

    # ------------------------------------------------------------ called by the link

    def feed(self, data: bytes) -> None:
        if not self._ended:
            self._queue.put_nowait(data)

    def close(self) -> None:
        self._queue.put_nowait(None)

    def define(self, parse: bytes) -> None:
        """Record a statement the client parsed while the node served it from cache: it is
        prepared on a connection when the client first uses it there (as after pooling).
        A Query instead of a Parse: the node answered it, and PostgreSQL would have dropped
        the unnamed statement."""
        if not self._ended:
            self._queue.put_nowait(_Define(parse))

    def _define(self, m: bytes) -> None:
        if m[:1] == b"Q":  # a simple query the node answered: it drops the unnamed statement
            self._unnamed = None
            return
        name, pos = _cstr(m, 5)
        tail = m[pos:]
        if not name:
            self._unnamed = tail
            self._unnamed_gen += 1
            return
        if name in self._statements:
            return  # the node answers only new names; PostgreSQL would refuse a redefinition
        self._counter += 1
        self._statements[name] = (f"_ce{self.uid}_{self._counter}".encode(), tail)

    async def cancel_query(self) -> None:
        conn = self.conn
        if conn is not None and self._outstanding > 0:
            await self.pool.cancel(conn)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._task)

    # ------------------------------------------------------------ the session's own task

    async def _run(self) -> None:
        reason = b""
        try:
            while True:
                item = await self._queue.get()
                if item is None:
                    break
                if isinstance(item, bytes):
                    await self._handle(item)
                elif isinstance(item, _Define):
                    self._define(item.parse)
                if self._queue.empty() and self._releasable():
                    await self._release()
        except _SessionOver as over:
            reason = over.message
        except ProtocolViolation as exc:
            reason = error_response("08P01", str(exc), "FATAL")
        except Exception:
            log.exception("wire_session_failed", tenant=self.tenant)
            reason = error_response("XX000", "internal error in the origin's relay", "FATAL")
        finally:
            self._ended = True
            await self._drop_connection()
            self._forget_all()
            self.events.ended(self.sid, reason)

    def _releasable(self) -> bool:
        return (
            self.conn is not None
            and not self.pinned
            and self._outstanding == 0
            and not self._unsynced
            and self.status == b"I"
        )

    async def _handle(self, data: bytes) -> None:
        msgs, used = split_messages(data, _MAX_MESSAGE)
        if used != len(data):
            raise ProtocolViolation("a frame ended inside a message")
        if self.conn is None:
            msgs = [m for m in msgs if m[:1] not in b"dcf"]  # PostgreSQL ignores stray COPY data
            if all(m[:1] in b"SH" for m in msgs):
                # Only Sync/Flush with no transaction open (asyncpg's Sync after a refused
                # Parse/Describe/Flush): ReadyForQuery alone, without waiting for a connection.
                syncs = sum(1 for m in msgs if m[:1] == b"S")
                if syncs:
                    self.events.send(self.sid, ready_for_query(self.status) * syncs)
                return
            try:
                await self._lend()
            except CacheEdgeError as exc:
                self._refuse(msgs, error_response(sqlstate_for(exc), str(exc)))
                return
            except ServerError as exc:
                self._refuse(msgs, error_response(exc.sqlstate, str(exc)))
                return
            await self._prepare()
            assert self.conn is not None
            self._pump = asyncio.create_task(self._relay(self.conn), name=f"wire-pump-{self.sid}")
        conn = self.conn
        assert conn is not None
        conn.write(b"".join([self._rewrite(m, conn) for m in msgs]))
        # A failed write needs no handling here: the pump sees the connection end.
        with contextlib.suppress(ConnectionError, OSError):
            await conn.writer.drain()

    def _refuse(self, msgs: list[bytes], error: bytes) -> None:
        """Answer a batch that found no connection as PostgreSQL answers a failing one."""
        out = bytearray()
        failed = False  # an extended-protocol message failed: the rest waits for Sync
        for m in msgs:
            kind = m[:1]
            if kind in (b"Q", b"F"):
                out += error + ready_for_query(self.status)
                failed = False
            elif kind == b"S":
                out += ready_for_query(self.status)
                failed = False
            elif not failed and kind in (b"P", b"B", b"D", b"E", b"C"):
                out += error
                failed = True
        if out:
            self.events.send(self.sid, bytes(out))

    async def _lend(self) -> None:
        conn = await self.pool.acquire()
        try:
            if conn.state_key != self._key:
                await conn.run(apply_sql(self.settings))
                conn.state_key = self._key
        except BaseException:
            self.pool.release(conn, reusable=False)
            raise
        self.conn = conn
        self.status = b"I"
        self.events.leased(self.tenant)

    async def _prepare(self) -> None:
        """Before a borrowed connection runs anything of this session: close there the
        statements of ended sessions, and the oldest past ``max_prepared_statements``."""
        conn = self.conn
        assert conn is not None
        dead = [n for n in conn.to_close if n in conn.prepared]
        conn.to_close.clear()
        excess = len(conn.prepared) - len(dead) - self._max_prepared
        if excess > 0:  # least recently used first (_ensure moves a used one to the end)
            doomed = set(dead)
            dead.extend(itertools.islice((n for n in conn.prepared if n not in doomed), excess))
        if not dead:
            return
        for name in dead:
            conn.prepared.pop(name, None)
        closes = b"".join(message(b"C", b"S" + name + b"\x00") for name in dead)
        conn.write(closes + message(b"S"))
        try:
            await conn.until_ready()
        except ServerError:
            pass  # closing a statement the server no longer has is harmless
        except (ConnectionError, OSError, ProtocolViolation):
            raise _SessionOver(_lost()) from None

    def _parse(self, server: bytes, tail: bytes, injected: bool) -> bytes:
        """A Parse to send, noted so that its answer can be matched (and, if injected,
        swallowed: the client did not send it and expects no ParseComplete)."""
        self._pending.append((_INJECTED if injected else _PARSE, server))
        if server and self.conn is not None:
            self._placed.add(self.conn)
        return message(b"P", server + b"\x00" + tail)

    def _ensure(self, stmt: bytes, conn: ServerConnection) -> bytes:
        """The Parse a Bind or Describe of ``stmt`` needs first on this connection, if any:
        a session's statements follow it from one pooled connection to the next."""
        if stmt:
            known = self._statements.get(stmt)
            if known is None:
                return b""
            if known[0] in conn.prepared:
                conn.prepared.move_to_end(known[0])  # recently used: evicted last
                return b""
            conn.prepared[known[0]] = None
            return self._parse(known[0], known[1], injected=True)
        if self._unnamed is None:
            # The session has none, but the connection may hold another session's: drop it
            # first, so that PostgreSQL itself answers 26000 instead of running that one.
            conn.unnamed_owner = None
            self._pending.append((_INJECTED_CLOSE, b""))
            return message(b"C", b"S\x00")
        if conn.unnamed_owner == (self.uid, self._unnamed_gen):
            return b""
        conn.unnamed_owner = (self.uid, self._unnamed_gen)
        return self._parse(b"", self._unnamed, injected=True)

    def _rewrite(self, m: bytes, conn: ServerConnection) -> bytes:
        kind = m[:1]
        if kind == b"P":
            self._unsynced = True
            name, pos = _cstr(m, 5)
            sql, _ = _cstr(m, pos)
            tail = self._screen(sql, m[pos:])
            if not name:
                self._unnamed = tail
                self._unnamed_gen += 1
                conn.unnamed_owner = (self.uid, self._unnamed_gen)
                return self._parse(b"", tail, injected=False)
            if name in self._statements:
                return self._redefine(name, tail, conn)
            self._counter += 1
            server = f"_ce{self.uid}_{self._counter}".encode()
            self._statements[name] = (server, tail)
            conn.prepared[server] = None
            conn.prepared.move_to_end(server)
            return self._parse(server, tail, injected=False)
        if kind == b"B":
            self._unsynced = True
            portal, pos = _cstr(m, 5)
            stmt, rest = _cstr(m, pos)
            first = self._ensure(stmt, conn)
            known = self._statements.get(stmt) if stmt else None
            if known is None:
                return first + m
            return first + message(b"B", portal + b"\x00" + known[0] + b"\x00" + m[rest:])
        if kind in b"DC":
            self._unsynced = True
            if kind == b"C":
                self._pending.append((_CLOSE, b""))
            if m[5:6] != b"S":
                return m
            stmt, _ = _cstr(m, 6)
            first = self._ensure(stmt, conn) if kind == b"D" else b""
            known = self._statements.get(stmt) if stmt else None
            if known is None:
                return first + m
            if kind == b"C":
                del self._statements[stmt]
                conn.prepared.pop(known[0], None)
                self._forget(known[0])
            return first + message(kind, b"S" + known[0] + b"\x00")
        if kind == b"Q":
            deallocate = self._deallocate(m[5:-1], conn)
            self._outstanding += 1
            self._pending.append((_SYNC, b""))
            self._unsynced = False
            self._unnamed = None  # a simple query replaces the unnamed statement
            conn.unnamed_owner = None
            if deallocate is not None:
                return deallocate
            sql = m[5:-1]
            screened = self._screen(sql, sql + b"\x00")
            return m if screened[:-1] == sql else message(b"Q", screened)
        if kind in b"SF":
            self._outstanding += 1
            self._pending.append((_SYNC, b""))
            self._unsynced = self._unsynced and kind == b"F"
            return m
        if kind == b"E":
            self._unsynced = True
        return m  # Execute, Flush, CopyData, CopyDone, CopyFail

    def _deallocate(self, sql: bytes, conn: ServerConnection) -> bytes | None:
        """SQL ``DEALLOCATE name`` of a statement the client prepared with the protocol
        (psycopg with libpq < 17 does this): the statement's name here is the session's
        own, so the command is rewritten to it, after preparing it on this connection if
        it lives elsewhere. None: not such a command."""
        match = _DEALLOCATE.match(sql)
        if match is None:
            return None
        quoted: bytes | None = match.group("quoted")
        plain: bytes = match.group("name") or b""
        name = quoted.replace(b'""', b'"') if quoted is not None else plain.lower()
        known = self._statements.get(name)
        if known is None:
            return None
        first = self._ensure(name, conn)
        del self._statements[name]
        conn.prepared.pop(known[0], None)
        self._forget(known[0])
        return first + message(b"Q", b'DEALLOCATE "' + known[0] + b'"\x00')

    def _redefine(self, name: bytes, tail: bytes, conn: ServerConnection) -> bytes:
        """A Parse of a name the session already has: PostgreSQL parses the text, refuses
        with 42P05 naming the statement, and keeps the old one. A placeholder under the
        client's own name, parsed first, makes PostgreSQL do exactly that here; it is
        closed the next time a session borrows the connection (as if forgotten)."""
        out = b""
        if name not in conn.prepared:
            conn.prepared[name] = None
            conn.to_close.add(name)
            self._pending.append((_PLACEHOLDER, name))
            out = message(b"P", name + b"\x00\x00\x00\x00")
        self._pending.append((_REFUSED, name))
        return out + message(b"P", name + b"\x00" + tail)

    def _dropped_all(self, conn: ServerConnection) -> None:
        """DEALLOCATE ALL or DISCARD ALL ran: every named statement of the connection is
        gone (other sessions' are parsed again where they are used next), and all of this
        session's are gone for its client, wherever they were."""
        for server, _ in self._statements.values():
            self._forget(server)
        self._statements.clear()
        conn.prepared.clear()

    def _answered(self, kind: bytes, conn: ServerConnection) -> bool:
        """Match a ParseComplete, CloseComplete or ReadyForQuery with what was sent; False:
        swallow it."""
        pending = self._pending
        if kind in b"13":
            while pending and pending[0][0] == _SYNC:
                pending.popleft()  # cannot happen: a ReadyForQuery consumed it
            swallow = (_INJECTED, _INJECTED_CLOSE, _PLACEHOLDER)
            return not (pending and pending.popleft()[0] in swallow)
        # ReadyForQuery: Parses still pending before this Sync were skipped after an error
        while pending:
            token, server = pending.popleft()
            if token == _SYNC:
                break
            if token in (_CLOSE, _INJECTED_CLOSE, _REFUSED):
                continue
            conn.prepared.pop(server, None)
            if server and token == _PARSE:
                for name, (known, _) in list(self._statements.items()):
                    if known == server:
                        del self._statements[name]
            if not server:
                conn.unnamed_owner = None
                if token == _PARSE and not any(t == _PARSE and not s for t, s in pending):
                    # PostgreSQL drops the unnamed statement before parsing the new one
                    self._unnamed = None
        return True

    def _screen(self, sql: bytes, tail: bytes) -> bytes:
        """Pin or refuse by the statement's text; returns the (possibly replaced) tail."""
        if refused(sql):
            return refusal_sql("42501", IDENTITY_REFUSAL) + tail[len(sql) :]
        if not self.pinned and needs_pin(sql):
            self.pinned = True
            self.events.pinned(self.tenant)
            log.info("wire_session_pinned", tenant=self.tenant, sid=self.sid)
        if touches_settings(sql):
            self._dirty = True
        return tail

    def _forget(self, server: bytes) -> None:
        """A statement of this session is gone for its client: close it, at their next
        borrow, on the other connections that hold it."""
        for conn in self._placed:
            if server in conn.prepared:
                conn.to_close.add(server)

    def _forget_all(self) -> None:
        """The session ended: its statements are closed where they are, when each of those
        connections is next borrowed (one scan per connection it used, not per borrow)."""
        names = {server for server, _ in self._statements.values()}
        for conn in self._placed:
            conn.to_close.update(n for n in names if n in conn.prepared)
        self._placed.clear()

    async def _relay(self, conn: ServerConnection) -> None:
        """Copy PostgreSQL's messages to the client, noting what the session must know."""
        fatal = False
        try:
            while True:
                msgs = await conn.read_some()
                ready = False
                swallowed = False
                for i, msg in enumerate(msgs):
                    kind = msg[:1]
                    if kind in (b"1", b"3"):
                        if not self._answered(kind, conn):
                            msgs[i] = b""
                            swallowed = True
                    elif kind == b"Z":
                        self._answered(kind, conn)
                        self._outstanding -= 1
                        self.status = msg[5:6]
                        ready = True
                        if self._wrote and self.status == b"I":
                            self._wrote = False  # committed: the node fences its reads
                            self.events.wrote(self.tenant, self.sid)
                    elif kind == b"C":
                        tag = msg[5:-1].split(b" ", 1)[0]
                        if tag in _STATE_TAGS:
                            self._dirty = True
                        elif tag in WRITE_TAGS:
                            self._wrote = True
                        if msg[5:-1] in (b"DEALLOCATE ALL", b"DISCARD ALL"):
                            self._dropped_all(conn)
                    elif kind == b"S":
                        # a reported setting changed, maybe with no SET tag (a function, DO)
                        self._dirty = True
                    elif kind == b"E":
                        fatal = fatal or b"SFATAL\x00" in msg[:40]
                        self.events.failed(self.tenant, sqlstate_of(msg, "XX000"))
                out = b"".join(msgs)
                if out or not swallowed:
                    self.events.send(self.sid, out)
                if ready and self._outstanding <= 0:
                    self._queue.put_nowait(_CHECK)
        except asyncio.CancelledError:
            raise
        except (ConnectionError, OSError, ProtocolViolation):
            conn.broken = True
            if not self._ended and not fatal:
                self.events.send(self.sid, _lost())
            self._queue.put_nowait(None)

    async def _stop_pump(self) -> None:
        pump, self._pump = self._pump, None
        if pump is not None and not pump.done():
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _release(self) -> None:
        conn = self.conn
        assert conn is not None
        await self._stop_pump()
        self.conn = None
        reusable = not conn.closed
        if reusable and self._dirty:
            try:
                rows = _data_rows(await conn.run(_snapshot_sql(self.pool.target.user)))
                raw = {str(r[0]): r[1] or "" for r in rows if r[0]}
                self.settings = self.pool.clamped(raw)
                # The connection holds what the session set (even a lifted timeout, for the
                # rest of that transaction); the session carries it within the ceilings.
                conn.state_key = settings_key(raw)
                self._key = settings_key(self.settings)
                self._dirty = False
                # The role is not a setting RESET ALL restores: a connection whose role
                # changed (a role change the text filter missed) is closed, never lent on.
                reusable = ["", "true"] in rows
                if not reusable:
                    log.warning("wire_role_changed", tenant=self.tenant, sid=self.sid)
            except (ServerError, ConnectionError, OSError, ProtocolViolation):
                reusable = False
        self.pool.release(conn, reusable)

    async def _drop_connection(self) -> None:
        conn = self.conn
        if conn is None:
            return
        if self._releasable() and not conn.closed:
            await self._release()
            return
        await self._stop_pump()
        self.conn = None
        self.pool.release(conn, reusable=False)


class _SessionOver(Exception):
    def __init__(self, message: bytes) -> None:
        super().__init__("session over")
        self.message = message


def _lost() -> bytes:
    return error_response("08006", "the origin lost its connection to the database", "FATAL")
