"""An authenticated client connection of the PostgreSQL door, relayed to the origin.

The node checks the framing (lengths, known message types) and forwards whole messages:
everything a client sent in one write travels as one link frame, so Parse/Bind/Execute/
Sync cost one round trip to the origin. PostgreSQL's answers come back as they arrive.
A client that stops mid-message for ``pg_startup_timeout`` seconds is dropped.

Flights the cache may answer (:mod:`cache_edge.node.pgdoor.caching`) go through the
region's read path instead, and ``SET/RESET/SHOW cache_edge.*`` are answered here: the
node owns those settings, the database never sees them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from cache_edge.common.errors import CacheEdgeError
from cache_edge.common.protocol import QueryRequest
from cache_edge.common.request_ids import request_id as make_request_id
from cache_edge.common.wire import packb
from cache_edge.node.pgdoor.caching import (
    DoorStatement,
    Flight,
    SessionView,
    StatementFailed,
    Uncacheable,
    as_error_response,
    cache_edge_command,
    plan,
    replay,
    show_row,
)
from cache_edge.node.pgdoor.hints import HintError, SessionHints, read_hints, strategy_from
from cache_edge.node.pgdoor.link import LinkDown, OriginLink
from cache_edge.node.pgdoor.rules import RuleBook
from cache_edge.node.pgdoor.startup import ClientStream
from cache_edge.node.read_path import QueryCache
from cache_edge.pgwire.messages import (
    ProtocolViolation,
    cstring,
    error_response,
    message,
    notice_response,
    split_messages,
)

__all__ = ["ClientSession", "DoorCache"]

_FRONTEND = frozenset(b"QPBDEHSCFXdcf")
_PG_KEY = len(packb("pg"))
_FENCE_WAIT = 3.0  # more than the origin's write_invalidation_wait (2 s by default)


@dataclass(frozen=True, slots=True)
class DoorCache:
    """What a session needs to serve cached reads: the door's read path and its metrics."""

    cache: QueryCache
    rules: RuleBook | None = None
    observe: Callable[[str, str], None] = lambda tenant, status: None  # (tenant, status)
    unmodelled: Callable[[str], None] = lambda tenant: None


class ClientSession:
    def __init__(
        self,
        stream: ClientStream,
        link: OriginLink,
        max_message: int,
        stall_timeout: float,
        cache: DoorCache | None = None,
    ) -> None:
        self.stream = stream
        self.link = link
        self.max_message = max_message
        self.stall_timeout = stall_timeout  # node.pg_startup_timeout
        self.cache = cache
        self.sid = 0
        self.tenant = ""
        self.view = SessionView({})
        self.hints = SessionHints()
        self._local: dict[bytes, tuple[str, str, str]] = {}  # prepared cache_edge commands
        self._fenced = asyncio.Event()
        self._key = (0, 0)
        self._closed = False

    async def open(
        self, tenant: str, settings: dict[str, str], key: tuple[int, int], describe: bool
    ) -> Any:
        self.tenant = tenant
        self.view = SessionView(dict(settings))
        self._key = key
        try:
            self.sid, answer = await self.link.open(self, tenant, settings, key, describe)
        except LinkDown:
            if describe or self.cache is None:
                raise
            # The origin is unreachable, but the node knows how this session starts: the
            # client may log in and read from the cache; the origin session opens later.
            self.sid, answer = 0, {}
        return answer or {}

    def on_link_lost(self, final: bytes) -> None:
        view = self.view
        if self._closed or view.inflight or view.status != b"I" or view.pinned:
            self.on_close(final)
            return
        self.sid = 0  # idle: the next statement that needs the origin opens a new session

    async def _attach(self) -> bool:
        """Open a new origin session for a client whose session ended with the link: its
        settings and prepared statements go with it (the database never lost anything
        of an idle session that a new one cannot rebuild)."""
        view = self.view
        try:
            self.sid, _ = await self.link.open(
                self, self.tenant, view.run_settings(), self._key, False
            )
        except LinkDown:
            return False
        for name, tail in view.statements.items():
            self.link.define(self.sid, message(b"P", name + b"\x00" + tail))
        if view.unnamed is not None:
            self.link.define(self.sid, message(b"P", b"\x00" + view.unnamed))
        return True

    # LinkSession: called by the link's reader
    def on_data(self, data: bytes) -> None:
        if not self._closed:
            self.view.received(data)
            self.stream.writer.write(data)

    def on_fence(self, seq: int | None) -> None:
        self.view.fenced(seq)
        if self.view.fences_due == 0:
            self._fenced.set()

    def on_close(self, final: bytes) -> None:
        if self._closed:
            return
        self._closed = True
        writer = self.stream.writer
        if final and not writer.is_closing():
            writer.write(final)
        writer.close()

    async def relay(self) -> None:
        stream = self.stream
        while not self._closed:
            if stream.buffer:
                # Mid-message: a client that stalls here is holding memory and a slot.
                async with asyncio.timeout(self.stall_timeout):
                    await stream.fill()
            else:
                await stream.fill()
            try:
                msgs, used = split_messages(stream.buffer, self.max_message)
            except ProtocolViolation as exc:
                self._fatal("08P01", str(exc))
                return
            if not used:
                continue
            del stream.buffer[:used]
            for i, msg in enumerate(msgs):
                kind = msg[0]
                if kind not in _FRONTEND:
                    await self._dispatch(msgs[:i])
                    self._fatal("08P01", f"invalid frontend message type {kind}")
                    return
                if kind == ord("X"):
                    await self._dispatch(msgs[:i])
                    return
                if not _well_formed(msg):  # the node reads these strings itself
                    await self._dispatch(msgs[:i])
                    self._fatal("08P01", f"invalid string in message type {chr(kind)}")
                    return
            await self._dispatch(msgs)

    async def _dispatch(self, msgs: list[bytes]) -> None:
        if not msgs:
            return
        if self.view.inflight == 0 and await self._answer_here(msgs):
            return
        if not self.sid and not await self._attach():
            self._unreachable(msgs)
            return
        self._forward(msgs)

    def _unreachable(self, msgs: list[bytes]) -> None:
        """Answer a batch the origin cannot take as PostgreSQL answers a failing one: an
        error per Query, one per extended sequence then ReadyForQuery at its Sync. The
        session stays usable (cached reads, and a retry once the origin is back)."""
        error = error_response(
            "08006", "the origin is unreachable: only cached reads are served right now"
        )
        out = bytearray()
        failed = False
        for m in msgs:
            kind = m[:1]
            if kind in (b"Q", b"F"):
                out += error + message(b"Z", self.view.status)
                failed = False
            elif kind == b"S":
                out += message(b"Z", self.view.status)
                failed = False
            elif not failed and kind in (b"P", b"B", b"D", b"E", b"C"):
                out += error
                failed = True
        self._write(bytes(out))

    def _forward(self, msgs: list[bytes]) -> None:
        if not msgs:
            return
        self.view.sent(msgs)  # as the client sent them: its statements keep their hints
        msgs = [_without_hints(m) for m in msgs]
        if any(m[:1] in (b"Q", b"E") for m in msgs):
            self.view.last_status = "none"
        if not self.link.send(self.sid, b"".join(msgs)):
            raise LinkDown("the link to the origin closed")

    def _write(self, data: bytes) -> None:
        if not self._closed:
            self.stream.writer.write(data)

    # ------------------------------------------------------------ answered by the node

    async def _answer_here(self, msgs: list[bytes]) -> bool:
        if self.view.status != b"E":  # in a failed transaction PostgreSQL refuses them all
            local = self._cache_edge_batch(msgs)
            if local is not None:
                self._write(local)
                return True
        if self.cache is None:
            return False
        flight = plan(msgs, self.view)
        if flight is None:
            return False
        return await self._cached(flight, msgs)

    def _cache_edge_batch(self, msgs: list[bytes]) -> bytes | None:
        """Answer a batch made only of ``SET/RESET/SHOW cache_edge.*`` statements, in either
        protocol (drivers prepare them like any statement); None: not such a batch."""
        if len(msgs) == 1 and msgs[0][:1] == b"Q":
            verb = cache_edge_command(msgs[0][5:-1])
            if verb is None:
                return None
            head, rows, error = self._run_command(verb)
            return (error or head + rows) + message(b"Z", self.view.status)
        statements = dict(self._local)
        portals: dict[bytes, tuple[str, str, str]] = {}
        out = bytearray()
        failed = False
        ours = False  # a cache_edge statement takes part: else the batch is PostgreSQL's
        for m in msgs:
            kind = m[:1]
            ours = ours or kind in b"PBDE"  # (each returns None below unless it is ours)
            if kind == b"P":
                name, at = _cstr(m, 5)
                sql, _ = _cstr(m, at)
                verb = cache_edge_command(sql)
                if verb is None:
                    return None
                statements[name] = verb
                out += b"" if failed else message(b"1")
            elif kind == b"B":
                portal, at = _cstr(m, 5)
                stmt, _ = _cstr(m, at)
                if stmt not in statements:
                    return None
                portals[portal] = statements[stmt]
                out += b"" if failed else message(b"2")
            elif kind == b"D":
                name, _ = _cstr(m, 6)
                verb = (statements if m[5:6] == b"S" else portals).get(name)
                if verb is None:
                    return None
                if not failed:
                    if m[5:6] == b"S":
                        out += message(b"t", b"\x00\x00")  # no parameters
                    out += _description(verb)
            elif kind == b"E":
                portal, _ = _cstr(m, 5)
                verb = portals.get(portal)
                if verb is None:
                    return None
                if not failed:
                    _, rows, error = self._run_command(verb)
                    out += error or rows
                    failed = bool(error)
            elif kind == b"C":
                name, _ = _cstr(m, 6)
                if name not in (statements if m[5:6] == b"S" else portals):
                    return None  # PostgreSQL's statement or portal: its Close goes there
                ours = True
                if m[5:6] == b"S":
                    statements.pop(name, None)
                out += b"" if failed else message(b"3")
            elif kind == b"S":
                out += message(b"Z", self.view.status)
                failed = False
            elif kind != b"H":
                return None
        if not ours:
            return None  # only Sync/Flush: PostgreSQL may be waiting for that Sync
        self._local = {k: v for k, v in statements.items() if k}
        return bytes(out)

    def _run_command(self, verb: tuple[str, str, str]) -> tuple[bytes, bytes, bytes]:
        """One command: (RowDescription, DataRows + CommandComplete, ErrorResponse)."""
        action, name, value = verb
        try:
            if action == "set":
                self.hints.set(name, value)
                return b"", message(b"C", cstring("SET")), b""
            if action == "reset":
                if name != "last_status":
                    self.hints.reset(name)
                return b"", message(b"C", cstring("RESET")), b""
            return *self._show(name), b""
        except HintError as exc:
            state = "42704" if "unrecognized" in str(exc) else "22023"
            return b"", b"", error_response(state, str(exc))

    def _show(self, name: str) -> tuple[bytes, bytes]:
        if name == "last_status":
            value = self.view.last_status
        elif name in ("ttl", "swr", "tags", "stale_if_error"):
            value = self.hints.fields.get(name, "")
        else:
            raise HintError(f'unrecognized configuration parameter "cache_edge.{name}"')
        return show_row(f"cache_edge.{name}", value)

    async def _cached(self, flight: Flight, msgs: list[bytes]) -> bool:
        assert self.cache is not None
        hinted = read_hints(flight.sql)
        if hinted.error:
            self._write(notice_response("01000", f"{hinted.error}; the statement runs uncached"))
            return False
        types = flight.types
        run_parse = hinted.run_sql.encode() + b"\x00" + types
        by_rule = not hinted.fields and not self.hints.fields
        if by_rule and self.view.status != b"I":
            return False  # in a READ ONLY transaction only a hint opts a read in
        if by_rule:
            rules = self.cache.rules
            if rules is None:
                return False
            found = rules.strategy(self.tenant, hinted.key_sql, run_parse, flight.bind)
            if found is None:
                return False
            strategy = found
        else:
            try:
                strategy = strategy_from(hinted.fields, self.hints.fields)
            except HintError as exc:
                self._write(notice_response("01000", f"{exc}; the statement runs uncached"))
                return False
        if not strategy.cached:
            return False
        if self.view.unmodelled:
            self.cache.unmodelled(self.tenant)
            return False
        if not await self._writes_covered():
            return False
        stmt = DoorStatement.of(
            hinted.key_sql,
            run_parse,
            types,
            flight.bind,
            self.view.key_settings(),
            tuple(self.view.run_settings().items()),
        )
        request_id = make_request_id(None)  # a counter: no os.urandom per hit
        try:
            answer = await self.cache.cache.query(
                self.tenant,
                QueryRequest(stmt, strategy, min_watermark=self.view.fence),
                request_id,
            )
        except Uncacheable:
            return False
        except StatementFailed as failed:
            if by_rule and failed.read_only and self.cache.rules is not None:
                self.cache.rules.writes(self.tenant, hinted.key_sql)
                return False  # a rule never refuses a write: it runs uncached
            if not failed.read_only:
                return False  # PostgreSQL's own error, in its own place: relay the flight
            self._write(
                error_response(
                    "25006",
                    "cache hints apply to reads: this statement writes",
                    hint="remove the cache hint (or SET cache_edge.ttl = 0) to run it",
                )
                + message(b"Z", self.view.status)
            )
            return True
        except CacheEdgeError as exc:
            self._write(as_error_response(exc) + message(b"Z", self.view.status))
            return True
        core = msgpack.unpackb(answer.core[_PG_KEY:])
        if flight.parse is not None:
            self.view.sent([flight.parse])  # the session's statements know it now
            self.link.define(self.sid, flight.parse)
        elif flight.simple:  # a simple query drops the unnamed statement, here and there
            self.view.unnamed = None
            self.link.define(self.sid, msgs[0])
        self.view.last_status = answer.status
        self.cache.observe(self.tenant, answer.status)
        self._write(replay(flight, core, self.view.status))
        return True

    async def _writes_covered(self) -> bool:
        """Read your writes: after this session committed a write, its cached reads wait
        until the origin names the purge that covers it (and then serve nothing older).
        False: it could not say in time; this read goes to the database."""
        if self.view.fences_due:
            self._fenced.clear()
            try:
                async with asyncio.timeout(_FENCE_WAIT):
                    await self._fenced.wait()
            except TimeoutError:
                self.view.fences_due = 0
                return False
        if self.view.fence_unknown:
            self.view.fence_unknown = False
            return False
        return True

    def _fatal(self, sqlstate: str, text: str) -> None:
        if not self._closed:
            self.stream.writer.write(error_response(sqlstate, text, "FATAL"))
            self._closed = True

    def end(self) -> None:
        """The client left (or was dropped): end the session at the origin."""
        self._closed = True
        if self.sid:
            self.link.close_session(self.sid)


def _cstr(data: bytes, pos: int) -> tuple[bytes, int]:
    end = data.index(b"\x00", pos)
    return data[pos:end], end + 1


# Where the strings the node reads start in a message, and how many (Query, Parse, Bind,
# Describe, Close, Execute); a message without them is malformed (08P01, as PostgreSQL).
_STRINGS = {ord("Q"): (5, 1), ord("P"): (5, 2), ord("B"): (5, 2), ord("D"): (6, 1),
            ord("C"): (6, 1), ord("E"): (5, 1)}  # fmt: skip


def _well_formed(msg: bytes) -> bool:
    pos, count = _STRINGS.get(msg[0], (0, 0))
    for _ in range(count):
        end = msg.find(b"\x00", pos)
        if end < 0:
            return False
        pos = end + 1
    return True


def _description(verb: tuple[str, str, str]) -> bytes:
    """What a Describe of a cache_edge command answers: a SHOW's column, else NoData."""
    if verb[0] != "show":
        return message(b"n")
    return show_row("cache_edge." + verb[1], "")[0]


def _without_hints(m: bytes) -> bytes:
    """A Query or Parse whose cache hint comment is removed: hints are not the database's."""
    kind = m[:1]
    if kind not in (b"Q", b"P") or b"/*" not in m:
        return m
    if kind == b"Q":
        hinted = read_hints(m[5:-1].decode("utf-8", "surrogateescape"))
        if not hinted.fields:
            return m
        return message(b"Q", cstring_bytes(hinted.run_sql))
    end = m.index(b"\x00", 5)
    sql_end = m.index(b"\x00", end + 1)
    hinted = read_hints(m[end + 1 : sql_end].decode("utf-8", "surrogateescape"))
    if not hinted.fields:
        return m
    return message(b"P", m[5 : end + 1] + cstring_bytes(hinted.run_sql) + m[sql_end + 1 :])


def cstring_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape") + b"\x00"
