"""Caching through the PostgreSQL door: which client flights the node may answer itself.

The node relays a session's messages to the origin, so it sees everything a cache needs:
the statements the client prepared, the transaction status each ReadyForQuery reports,
and the ``SET`` commands that change how results are printed. A flight the node may answer
from the cache is one statement, with nothing of the session in flight and no transaction
open (:func:`plan`):

    simple     Query (one statement)
    extended   [Parse] Bind [Describe portal] Execute(no row limit) Sync

Its answer comes from the region's read path (:class:`~cache_edge.node.read_path.QueryCache`,
with :class:`WireOrigin` as its origin) and is PostgreSQL's own RowDescription, DataRows
and CommandComplete, replayed byte for byte (:func:`replay`); the node adds only
ParseComplete, BindComplete and ReadyForQuery, which carry nothing of the result.

The key is the tenant (hence its one database role), the statement text without hint
comments, the parameter types, the Bind body (parameter formats and bytes, result formats)
and every setting of the session that can change a result's bytes: its startup settings
and the ``SET`` commands the node could read (:class:`SessionView`). A session that
changed a setting the node cannot read runs uncached.
"""

from __future__ import annotations

import re
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from cache_edge.common.answer import PG_CORE
from cache_edge.common.errors import (
    CacheEdgeError,
    DatabaseUnavailable,
    OriginUnavailable,
    PoolTimeout,
    QueryTimeout,
)
from cache_edge.common.protocol import Statement
from cache_edge.node.origin_client import OriginResult
from cache_edge.node.pgdoor.link import LinkDown, OriginLink
from cache_edge.pgwire.messages import (
    WRITE_TAGS,
    cstring,
    error_response,
    message,
    parse_error_fields,
)
from cache_edge.pgwire.statements import needs_pin

__all__ = [
    "DoorStatement",
    "Flight",
    "SessionView",
    "StatementFailed",
    "Uncacheable",
    "WireOrigin",
    "as_error_response",
    "door_sqlstate",
    "plan",
    "replay",
    "show_row",
]

_PARSE_COMPLETE = message(b"1")
_BIND_COMPLETE = message(b"2")
_NO_PARAMS_BIND = b"\x00\x00\x00\x00\x00\x00"  # no formats, no values, no result formats
# Settings that cannot change a result's bytes, kept out of the key.
_NOT_IN_KEY = frozenset({"application_name"})

_SET = re.compile(
    r"""\A\s*(?:
        SET\s+(?:SESSION\s+)?(?P<name>[A-Za-z_][\w.]*)\s*(?:=|\s TO \s)\s*(?P<value>.+?)
      | RESET\s+(?P<reset>[A-Za-z_][\w.]*)
    )\s*;?\s*\Z""",
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)
_READ_ONLY_BEGIN = re.compile(
    rb"\A\s*(?:BEGIN|START\s+TRANSACTION)\b[^;]*\bREAD\s+ONLY\b[^;]*;?\s*\Z", re.IGNORECASE
)
_LOCAL = re.compile(rb"\A\s*SET\s+LOCAL\s", re.IGNORECASE)
# set_config() changes a setting with no SET command tag (as cache_edge/pgwire/statements.py)
_SET_CONFIG = re.compile(rb"\bset_config\s*\(\s*(?:'(?P<name>[^']*)')?", re.IGNORECASE)
# Settings that may change (set_config, a reported one) without changing any result's
# bytes: asyncpg turns jit off and back around its type introspection.
_HARMLESS = frozenset({b"jit", b"application_name"})
_SHOW = re.compile(r"\A\s*SHOW\s+(?P<name>[A-Za-z_][\w.]*)\s*;?\s*\Z", re.IGNORECASE)


class Uncacheable(Exception):
    """The origin ran the statement but its result cannot be cached (the reason says why)."""


class StatementFailed(Exception):
    """PostgreSQL refused the statement: its ErrorResponse goes to the client as is."""

    def __init__(self, error: bytes, read_only: bool) -> None:
        super().__init__(parse_error_fields(error).get("M", "statement failed"))
        self.error = error
        self.read_only = read_only  # it tried to write in the read-only transaction


@dataclass(frozen=True, slots=True)
class DoorStatement(Statement):
    """A door read for the read path: ``sql``/``params`` make the key (see the module
    docstring); the rest is what the origin runs, which may differ in comments only."""

    run_parse: bytes = b""  # the Parse body after the name: hint-free text, parameter types
    bind: bytes = b""  # the Bind body after the portal and statement names
    key_sql: str = ""
    settings: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(
        cls,
        key_sql: str,
        run_parse: bytes,
        types: bytes,
        bind: bytes,
        key_settings: tuple[tuple[str, str], ...] = (),
        run_settings: tuple[tuple[str, str], ...] = (),
    ) -> DoorStatement:
        """The statement keyed by its hint-free text, parameter types, Bind body and the
        settings that shape its bytes; ``run_parse`` is what the origin prepares."""
        return cls(
            "pg\x00" + key_sql,
            [types, bind, key_settings],
            run_parse=run_parse,
            bind=bind,
            key_sql=key_sql,
            settings=run_settings,
        )


_STATE_ERRORS: dict[str, type[CacheEdgeError]] = {
    "53300": PoolTimeout,
    "08006": DatabaseUnavailable,
    "57014": QueryTimeout,
}


class WireOrigin:
    """The origin as the door's read path sees it: cacheable reads over the link."""

    def __init__(self, link: OriginLink, timeout: float) -> None:
        self._link = link
        self._timeout = timeout

    async def query(
        self,
        tenant: str,
        stmt: Statement,
        *,
        read_only: bool,
        request_id: str,
        min_watermark: int = 0,
    ) -> OriginResult:
        assert isinstance(stmt, DoorStatement)
        payload = {
            "tenant": tenant,
            "sql": stmt.key_sql,
            "parse": stmt.run_parse,
            "bind": stmt.bind,
            "settings": dict(stmt.settings),
            "minWatermark": min_watermark,
        }
        try:
            answer: Any = await self._link.read(payload, self._timeout)
        except LinkDown as exc:
            raise OriginUnavailable(str(exc)) from None
        except TimeoutError:
            raise OriginUnavailable(f"the origin did not answer within {self._timeout} s") from None
        if not isinstance(answer, dict):
            raise OriginUnavailable("the origin sent a malformed answer")
        if "answer" in answer:
            return OriginResult(bytes(answer["answer"]), request_id, PG_CORE)
        if "uncacheable" in answer:
            raise Uncacheable(str(answer["uncacheable"]))
        error = bytes(answer.get("error") or b"")
        fields = parse_error_fields(error)
        kind = _STATE_ERRORS.get(fields.get("C", ""))
        if kind is not None:  # the origin's trouble, not the statement's: staleIfError
            raise kind(fields.get("M", "origin error"))
        raise StatementFailed(error, bool(answer.get("readOnly")))


_SQLSTATE_OF = {
    "pool_timeout": "53300",
    "database_unavailable": "08006",
    "query_timeout": "57014",
    "origin_unavailable": "08006",
    "origin_down": "08006",
    "origin_overloaded": "53300",
}


def door_sqlstate(code: str) -> str:
    """The SQLSTATE a PostgreSQL client understands for one of our stable error codes."""
    return _SQLSTATE_OF.get(code, "XX000")


def as_error_response(exc: CacheEdgeError) -> bytes:
    """One of our errors as the ErrorResponse a PostgreSQL client understands."""
    return error_response(door_sqlstate(exc.code), exc.message)


@dataclass(frozen=True, slots=True)
class Flight:
    """One statement the node may answer from cache, as the client sent it."""

    tail: bytes  # the statement's Parse body after its name, as the client sent it
    bind: bytes  # the Bind body after the names (simple query: no values)
    simple: bool
    parse: bytes | None = None  # the batch's Parse message, if it has one
    describe: bool = False  # a Describe of the portal: RowDescription goes out

    @property
    def sql(self) -> str:
        return self.tail[: self.tail.index(b"\x00")].decode("utf-8", "replace")

    @property
    def types(self) -> bytes:
        return self.tail[self.tail.index(b"\x00") + 1 :]


def _cstr(data: bytes, pos: int) -> tuple[bytes, int]:
    end = data.index(b"\x00", pos)
    return data[pos:end], end + 1


def plan(msgs: list[bytes], view: SessionView) -> Flight | None:
    """The cacheable flight ``msgs`` is, or None (then it is relayed as usual). Inside a
    transaction only a READ ONLY one may be served from cache (and only by a hint)."""
    if view.inflight:
        return None
    if view.status != b"I" and not (view.status == b"T" and view.read_only_tx):
        return None
    try:
        return _shape(msgs, view)
    except (ValueError, IndexError, struct.error):
        return None  # malformed: PostgreSQL will say so


def _shape(msgs: list[bytes], view: SessionView) -> Flight | None:
    kinds = b"".join(m[:1] for m in msgs)
    if kinds == b"Q":
        sql = msgs[0][5:-1]
        if b";" in sql.rstrip().rstrip(b";") or not sql.strip():
            return None  # several statements (or a ';' in a literal): relayed
        return Flight(sql + b"\x00\x00\x00", _NO_PARAMS_BIND, simple=True)
    if kinds not in (b"PBDES", b"PBES", b"BDES", b"BES"):
        return None
    parse = msgs[0] if kinds[0:1] == b"P" else None
    rest = msgs[1:] if parse is not None else msgs
    bind, execute = rest[0], rest[-2]
    portal, pos = _cstr(bind, 5)
    stmt, pos = _cstr(bind, pos)
    if struct.unpack_from("!i", execute, 5 + len(portal) + 1)[0] != 0:
        return None  # a row limit: never served from or stored in the cache
    describe = len(rest) == 4
    if describe and rest[1][5:6] != b"P":
        return None
    if parse is not None:
        name, at = _cstr(parse, 5)
        if name != stmt or (name and name in view.statements):
            return None  # a new name only: PostgreSQL would refuse a redefinition
        tail = parse[at:]
    else:
        known = view.statements.get(stmt) if stmt else view.unnamed
        if known is None:
            return None
        tail = known
    return Flight(tail, bind[pos:], simple=False, parse=parse, describe=describe)


def _messages(data: bytes) -> list[bytes]:
    out = []
    pos = 0
    while pos < len(data):
        length = struct.unpack_from("!I", data, pos + 1)[0]
        out.append(data[pos : pos + 1 + length])
        pos += 1 + length
    return out


def replay(flight: Flight, core: bytes, status: bytes = b"I") -> bytes:
    """The client's answer from PostgreSQL's result bytes (``core``)."""
    ready = message(b"Z", status)
    if flight.simple:
        return core + ready
    head = (_PARSE_COMPLETE if flight.parse is not None else b"") + _BIND_COMPLETE
    if flight.describe:
        return head + core + ready
    body = b"".join(m for m in _messages(core) if m[:1] != b"T")
    return head + body + ready


def show_row(name: str, value: str) -> tuple[bytes, bytes]:
    """A one-text-column SHOW: (RowDescription, DataRow + CommandComplete)."""
    column = cstring(name) + struct.pack("!IhIhih", 0, 0, 25, -1, -1, 0)
    encoded = value.encode()
    return (
        message(b"T", struct.pack("!h", 1) + column),
        message(b"D", struct.pack("!hi", 1, len(encoded)) + encoded)
        + message(b"C", cstring("SHOW")),
    )


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    return value


@dataclass(slots=True)
class SessionView:
    """What the node knows of a session from the messages it relays both ways."""

    startup: dict[str, str]
    status: bytes = b"I"
    inflight: int = 0  # Query/Sync/FunctionCall relayed whose ReadyForQuery is still due
    statements: dict[bytes, bytes] = field(default_factory=dict)  # name -> Parse tail
    unnamed: bytes | None = None
    settings: dict[str, str] = field(default_factory=dict)  # SETs read, applied
    unmodelled: str = ""  # a setting changed in a way the node could not read
    last_status: str = "none"
    # Writes committed whose covering purge the origin has not named yet (WROTE frames),
    # and the newest it named: the session's reads serve nothing older (read your writes).
    fences_due: int = 0
    fence: int = 0
    fence_unknown: bool = False
    _wrote: bool = False
    # per relayed Query/Sync, in order: the SET it carries ((name, value); "" value: RESET)
    _expect: deque[tuple[str, str] | None] = field(default_factory=deque)
    _ok: bool = True
    read_only_tx: bool = False  # in a transaction begun READ ONLY (hinted reads may hit)
    pinned: bool = False  # used a feature of one server session (temp table, LISTEN...)
    _read_only_begin: bool = False

    def sent(self, msgs: list[bytes]) -> None:
        for m in msgs:
            kind = m[:1]
            if kind in (b"Q", b"P") and _sets_config(m):
                self.unmodelled = self.unmodelled or "set_config() ran"
            if kind == b"Q":
                self.inflight += 1
                self.unnamed = None
                self._expect.append(_intent(m[5:-1]))
                self._read_only_begin = _READ_ONLY_BEGIN.match(m[5:-1]) is not None
                self.pinned = self.pinned or needs_pin(m[5:-1])
            elif kind in (b"S", b"F"):
                self.inflight += 1
                self._expect.append(None)
            elif kind == b"P":
                name, at = _cstr(m, 5)
                self.pinned = self.pinned or needs_pin(m[at:])
                if name:
                    self.statements[name] = m[at:]
                else:
                    self.unnamed = m[at:]
            elif kind == b"C" and m[5:6] == b"S":
                name, _ = _cstr(m, 6)
                if name:
                    self.statements.pop(name, None)

    def received(self, data: bytes) -> None:
        pos = 0
        end = len(data)
        while pos + 5 <= end:
            kind = data[pos : pos + 1]
            length = struct.unpack_from("!I", data, pos + 1)[0]
            if kind == b"Z":
                status = data[pos + 5 : pos + 6]
                if self._wrote and status == b"I":
                    self._wrote = False
                    self.fences_due += 1
                self._ready(status)
            elif kind == b"E":
                self._ok = False
            elif kind == b"C":
                tag = data[pos + 5 : pos + 1 + length - 1].split(b" ", 1)[0]
                if tag in WRITE_TAGS:
                    self._wrote = True
                # DO: a block can run SET through EXECUTE, with no SET tag of its own
                if tag in (b"SET", b"RESET", b"DISCARD", b"DO") and not (
                    self._expect and self._expect[0] is not None
                ):
                    self.unmodelled = self.unmodelled or "a setting changed"
            elif kind == b"S" and not (self._expect and self._expect[0] is not None):
                # a reported setting changed with no SET the node read (a function, DO)
                name = data[pos + 5 : data.index(b"\x00", pos + 5)].lower()
                if name not in _HARMLESS:
                    self.unmodelled = self.unmodelled or "a reported setting changed"
            pos += 1 + length

    def _ready(self, status: bytes) -> None:
        self.status = status
        if status != b"T":
            self.read_only_tx = False
        elif self._read_only_begin:
            self.read_only_tx = True
        self._read_only_begin = False
        self.inflight = max(0, self.inflight - 1)
        intent = self._expect.popleft() if self._expect else None
        if intent is not None and intent[0] and self._ok:
            if status != b"I":
                self.unmodelled = "a setting changed inside a transaction"
            elif intent[0] == "all":
                self.settings.clear()
            elif intent[1]:
                self.settings[intent[0]] = intent[1]
            else:
                self.settings.pop(intent[0], None)
        self._ok = True

    def fenced(self, seq: int | None) -> None:
        """The origin named the purge covering a write of this session (None: unknown)."""
        self.fences_due = max(0, self.fences_due - 1)
        if seq is None:
            self.fence_unknown = True
        else:
            self.fence = max(self.fence, seq)

    def key_settings(self) -> tuple[tuple[str, str], ...]:
        merged = {k.lower(): v for k, v in self.startup.items()}
        merged.update(self.settings)
        return tuple(sorted((k, v) for k, v in merged.items() if k not in _NOT_IN_KEY))

    def run_settings(self) -> dict[str, str]:
        return {**self.startup, **self.settings}


def _sets_config(msg: bytes) -> bool:
    """Does this Query or Parse call set_config() on a setting that may change results?"""
    return any(
        found.group("name") is None or found.group("name").lower() not in _HARMLESS
        for found in _SET_CONFIG.finditer(msg, 5)
    )


def _intent(sql: bytes) -> tuple[str, str] | None:
    """The setting a one-statement SET/RESET changes: (name, value); value "" resets.
    ("", "") is a SET LOCAL: expected, and gone with its transaction."""
    if _LOCAL.match(sql):
        return ("", "")
    match = _SET.match(sql.decode("utf-8", "replace"))
    if match is None:
        return None
    if match.group("reset"):
        return (match.group("reset").lower(), "")
    value = _unquote(match.group("value"))
    if value.lower() == "default":
        value = ""
    return (match.group("name").lower(), value)


def cache_edge_command(sql: bytes) -> tuple[str, str, str] | None:
    """``SET/RESET/SHOW cache_edge.<name>``: (verb, name, value), answered by the node."""
    text = sql.decode("utf-8", "replace")
    show = _SHOW.match(text)
    if show is not None:
        name = show.group("name").lower()
        return ("show", name[len("cache_edge.") :], "") if name.startswith("cache_edge.") else None
    match = _SET.match(text)
    if match is None:
        return None
    if match.group("reset"):
        name = match.group("reset").lower()
        if name.startswith("cache_edge."):
            return ("reset", name[len("cache_edge.") :], "")
        return None
    name = match.group("name").lower()
    if not name.startswith("cache_edge."):
        return None
    return ("set", name[len("cache_edge.") :], _unquote(match.group("value")))


def simple_tail(sql: str) -> bytes:
    """A Parse body (after the name) for a statement sent as a simple query."""
    return sql.encode() + b"\x00\x00\x00"
