"""A raw PostgreSQL protocol 3.0 client that records what the server sends, byte for byte.

It is the tool of the front door's differential test: the same script is run against
PostgreSQL directly and through the front door, and the two captures must be identical
(apart from what legitimately differs between two sessions: BackendKeyData, and whatever
ParameterStatus values the caller chooses to ignore).

A script is a list of steps. Each step is sent in one write and its result is every backend
message received up to and including ReadyForQuery, as the raw bytes of each message::

    Simple(sql)                 Query
    Extended(sql, params, ...)  Parse(unnamed) Bind Describe(portal) Execute(max_rows) Sync
    Prepared(name, sql, ...)    Parse(name) Describe(statement) [Bind Execute]* Close Sync

``Extended`` with ``max_rows > 0`` sends Flush instead of Sync, Executes again after each
PortalSuspended until the portal completes (or fails), and then sends Sync: a Sync ends the
implicit transaction and with it the unnamed portal, so it cannot come before the portal is
done. Steps may also be given as tuples: ``("simple", sql)``, ``("extended", sql, params,
param_formats, result_formats, param_types, max_rows)`` and ``("prepared", name, sql,
executions, param_formats, result_formats, param_types)``.

Pure asyncio and struct; SCRAM-SHA-256 comes from ``scramp``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import struct
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from cache_edge.pgwire.messages import (
    PROTOCOL_3,
    cstring,
    message,
    parse_error_fields,
    split_messages,
)

__all__ = [
    "MESSAGE_NAMES",
    "Capture",
    "CaptureError",
    "Diff",
    "Extended",
    "Prepared",
    "RawConnection",
    "ServerError",
    "Simple",
    "Step",
    "StepLike",
    "Target",
    "as_step",
    "capture",
    "capture_both",
    "compare",
    "describe",
    "error_codes",
    "execute",
    "format_diffs",
    "normalize",
    "normalize_messages",
    "sql_identifier",
    "step_title",
]

MAX_MESSAGE = 1 << 30
DEFAULT_TIMEOUT = 15.0

MESSAGE_NAMES: Mapping[bytes, str] = {
    b"R": "Authentication",
    b"K": "BackendKeyData",
    b"2": "BindComplete",
    b"3": "CloseComplete",
    b"C": "CommandComplete",
    b"d": "CopyData",
    b"c": "CopyDone",
    b"G": "CopyInResponse",
    b"H": "CopyOutResponse",
    b"W": "CopyBothResponse",
    b"D": "DataRow",
    b"I": "EmptyQueryResponse",
    b"E": "ErrorResponse",
    b"V": "FunctionCallResponse",
    b"v": "NegotiateProtocolVersion",
    b"n": "NoData",
    b"N": "NoticeResponse",
    b"A": "NotificationResponse",
    b"t": "ParameterDescription",
    b"S": "ParameterStatus",
    b"1": "ParseComplete",
    b"s": "PortalSuspended",
    b"Z": "ReadyForQuery",
    b"T": "RowDescription",
}

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")


class CaptureError(Exception):
    """The conversation went wrong: closed, timed out, or a message the client cannot handle.
    ``received`` holds what the current step (or the startup) had received so far."""

    def __init__(self, text: str, received: Sequence[bytes] = ()) -> None:
        super().__init__(text)
        self.received = list(received)


class ServerError(CaptureError):
    """The server answered with an ErrorResponse where the client needed success
    (authentication, or an :func:`execute`)."""

    def __init__(self, msg: bytes, received: Sequence[bytes] = ()) -> None:
        self.fields = dict(parse_error_fields(msg))
        super().__init__(
            f"{self.fields.get('S', 'ERROR')} {self.fields.get('C', '?????')}: "
            f"{self.fields.get('M', '')}",
            received,
        )


# ------------------------------------------------------------------ where to connect


@dataclass(frozen=True)
class Target:
    """A PostgreSQL server (or anything that speaks its protocol) and the startup packet's
    user, database and further parameters (``TimeZone``, ``DateStyle``,
    ``extra_float_digits``, ``application_name``, ...)."""

    host: str
    port: int
    user: str = "postgres"
    database: str = "postgres"
    password: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_dsn(cls, dsn: str, **params: str) -> Target:
        """From ``postgresql://user[:password]@host[:port]/database[?application_name=..]``;
        query options other than ``sslmode``/``connect_timeout`` become startup parameters,
        as do ``params``."""
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgres", "postgresql"):
            raise ValueError(f"not a postgresql:// URL: {dsn!r}")
        startup = {
            k: v for k, v in parse_qsl(parts.query) if k not in ("sslmode", "connect_timeout")
        }
        startup.update(params)
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5432,
            user=unquote(parts.username or "postgres"),
            database=unquote(parts.path.lstrip("/")) or unquote(parts.username or "postgres"),
            password=None if parts.password is None else unquote(parts.password),
            params=startup,
        )

    def with_params(self, **params: str) -> Target:
        """This target with more (or other) startup parameters."""
        return replace(self, params={**self.params, **params})

    def with_database(self, database: str) -> Target:
        return replace(self, database=database)


# ------------------------------------------------------------------ script steps


@dataclass(frozen=True)
class Simple:
    """A simple Query. ``copy_data`` answers a COPY FROM STDIN (CopyData + CopyDone); without
    it the client answers CopyFail."""

    sql: str
    copy_data: bytes | None = None
    label: str = ""
    errors: tuple[str, ...] = ()  # SQLSTATEs this step is meant to produce (corpus checks)

    def encode(self) -> bytes:
        return message(b"Q", cstring(self.sql))


@dataclass(frozen=True)
class Extended:
    """The extended protocol on the unnamed statement and portal, in one write:
    Parse, Bind, Describe portal, Execute(max_rows), Sync (or Flush, see the module doc)."""

    sql: str
    params: Sequence[bytes | None] = ()
    param_formats: Sequence[int] = ()
    result_formats: Sequence[int] = ()
    param_types: Sequence[int] = ()
    max_rows: int = 0
    label: str = ""
    errors: tuple[str, ...] = ()

    def encode(self) -> bytes:
        out = parse_msg("", self.sql, self.param_types)
        out += bind_msg("", "", self.params, self.param_formats, self.result_formats)
        out += describe_msg(b"P", "")
        out += execute_msg("", self.max_rows)
        out += FLUSH if self.max_rows > 0 else SYNC
        return out


@dataclass(frozen=True)
class Prepared:
    """A named prepared statement: Parse(name), Describe statement, then Bind (unnamed
    portal) + Execute once per entry of ``executions`` (two by default, both without
    parameters), Close statement, Sync; all in one write."""

    name: str
    sql: str
    executions: Sequence[Sequence[bytes | None]] = ((), ())
    param_formats: Sequence[int] = ()
    result_formats: Sequence[int] = ()
    param_types: Sequence[int] = ()
    label: str = ""
    errors: tuple[str, ...] = ()

    def encode(self) -> bytes:
        out = parse_msg(self.name, self.sql, self.param_types)
        out += describe_msg(b"S", self.name)
        for params in self.executions:
            out += bind_msg("", self.name, params, self.param_formats, self.result_formats)
            out += execute_msg("", 0)
        out += close_msg(b"S", self.name)
        out += SYNC
        return out


Step = Simple | Extended | Prepared
StepLike = Step | tuple[Any, ...]


def as_step(step: StepLike) -> Step:
    """A step object from a step or its tuple form (see the module doc)."""
    if isinstance(step, Simple | Extended | Prepared):
        return step
    kind, *rest = step
    if kind == "simple":
        return Simple(*rest)
    if kind == "extended":
        return Extended(*rest)
    if kind == "prepared":
        return Prepared(*rest)
    raise ValueError(f"unknown step kind {kind!r}")


def step_title(step: Step) -> str:
    sql = " ".join(step.sql.split())
    if len(sql) > 70:
        sql = sql[:67] + "..."
    kind = type(step).__name__.lower()
    return f"{step.label or kind} [{kind}] {sql!r}"


# ------------------------------------------------------------------ frontend messages

SYNC = message(b"S")
FLUSH = message(b"H")
TERMINATE = message(b"X")


def parse_msg(name: str, sql: str, param_types: Sequence[int] = ()) -> bytes:
    body = cstring(name) + cstring(sql) + _I16.pack(len(param_types))
    body += b"".join(_U32.pack(oid) for oid in param_types)
    return message(b"P", body)


def bind_msg(
    portal: str,
    statement: str,
    params: Sequence[bytes | None] = (),
    param_formats: Sequence[int] = (),
    result_formats: Sequence[int] = (),
) -> bytes:
    body = cstring(portal) + cstring(statement)
    body += _I16.pack(len(param_formats)) + b"".join(_I16.pack(f) for f in param_formats)
    body += _I16.pack(len(params))
    for value in params:
        body += _I32.pack(-1) if value is None else _I32.pack(len(value)) + value
    body += _I16.pack(len(result_formats)) + b"".join(_I16.pack(f) for f in result_formats)
    return message(b"B", body)


def describe_msg(kind: bytes, name: str) -> bytes:
    return message(b"D", kind + cstring(name))


def execute_msg(portal: str, max_rows: int = 0) -> bytes:
    return message(b"E", cstring(portal) + _I32.pack(max_rows))


def close_msg(kind: bytes, name: str) -> bytes:
    return message(b"C", kind + cstring(name))


def startup_msg(user: str, database: str, params: Mapping[str, str]) -> bytes:
    body = _I32.pack(PROTOCOL_3) + cstring("user") + cstring(user)
    body += cstring("database") + cstring(database)
    for name, value in params.items():
        body += cstring(name) + cstring(value)
    body += b"\x00"
    return _I32.pack(len(body) + 4) + body


def _md5_password(user: str, password: str, salt: bytes) -> bytes:
    inner = hashlib.md5(password.encode() + user.encode()).hexdigest()
    return cstring("md5" + hashlib.md5(inner.encode() + salt).hexdigest())


# ------------------------------------------------------------------ the connection


class RawConnection:
    """One protocol conversation. ``auth`` holds the authentication requests before
    AuthenticationOk (they depend on the method and carry nonces and salts); ``startup``
    holds AuthenticationOk through the first ReadyForQuery."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._buf = bytearray()
        self._pending: deque[bytes] = deque()
        self.auth: list[bytes] = []
        self.startup: list[bytes] = []

    @classmethod
    async def connect(cls, target: Target, timeout: float = DEFAULT_TIMEOUT) -> RawConnection:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(target.host, target.port), timeout
        )
        conn = cls(reader, writer)
        try:
            async with asyncio.timeout(timeout):
                await conn._start(target)
        except TimeoutError:
            await conn.close(terminate=False)
            raise CaptureError(
                f"no ReadyForQuery within {timeout}s of the startup packet",
                conn.auth + conn.startup,
            ) from None
        except BaseException:
            await conn.close(terminate=False)
            raise
        return conn

    async def __aenter__(self) -> RawConnection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def read_message(self, received: Sequence[bytes] = ()) -> bytes:
        while not self._pending:
            chunk = await self._reader.read(1 << 16)
            if not chunk:
                raise CaptureError("the server closed the connection", received)
            self._buf += chunk
            msgs, used = split_messages(self._buf, MAX_MESSAGE)
            del self._buf[:used]
            self._pending.extend(msgs)
        return self._pending.popleft()

    async def _start(self, target: Target) -> None:
        await self.send(startup_msg(target.user, target.database, target.params))
        seen: list[bytes] = []
        scram: Any = None
        while True:
            msg = await self.read_message(seen)
            seen.append(msg)
            kind = msg[:1]
            if kind == b"E":
                raise ServerError(msg, seen)
            if kind != b"R":
                raise CaptureError(f"unexpected {describe(msg)} before authentication", seen)
            code = _I32.unpack_from(msg, 5)[0]
            if code == 0:
                break
            self.auth.append(msg)
            password = target.password
            if code in (3, 5, 10) and password is None:
                raise CaptureError(f"the server asks for a password (code {code})", seen)
            if code == 3:
                await self.send(message(b"p", cstring(password or "")))
            elif code == 5:
                salt = msg[9:13]
                await self.send(message(b"p", _md5_password(target.user, password or "", salt)))
            elif code == 10:
                mechanisms = [m.decode() for m in msg[9:].split(b"\x00") if m]
                if "SCRAM-SHA-256" not in mechanisms:
                    raise CaptureError(f"no supported SASL mechanism in {mechanisms}", seen)
                from scramp import ScramClient  # type: ignore[import-untyped]

                scram = ScramClient(["SCRAM-SHA-256"], target.user, password)
                first = scram.get_client_first().encode()
                body = cstring("SCRAM-SHA-256") + _I32.pack(len(first)) + first
                await self.send(message(b"p", body))
            elif code == 11 and scram is not None:
                scram.set_server_first(msg[9:].decode())
                await self.send(message(b"p", scram.get_client_final().encode()))
            elif code == 12 and scram is not None:
                scram.set_server_final(msg[9:].decode())
            else:
                raise CaptureError(f"unsupported authentication request code {code}", seen)
        self.startup.append(msg)
        while True:
            msg = await self.read_message(self.startup)
            self.startup.append(msg)
            if msg[:1] == b"E":
                raise ServerError(msg, self.startup)
            if msg[:1] == b"Z":
                return

    async def read_until_ready(self, received: list[bytes] | None = None) -> list[bytes]:
        """Messages up to and including ReadyForQuery (appended to ``received``)."""
        out = [] if received is None else received
        while True:
            msg = await self.read_message(out)
            out.append(msg)
            if msg[:1] == b"Z":
                return out

    async def run(self, step: StepLike, timeout: float = DEFAULT_TIMEOUT) -> list[bytes]:
        """Send one step and return every message it brought, through ReadyForQuery."""
        step = as_step(step)
        out: list[bytes] = []
        try:
            async with asyncio.timeout(timeout):
                await self.send(step.encode())
                if isinstance(step, Extended) and step.max_rows > 0:
                    await self._run_suspending(step, out)
                elif isinstance(step, Simple):
                    await self._run_simple(step, out)
                else:
                    await self.read_until_ready(out)
        except TimeoutError:
            raise CaptureError(
                f"no ReadyForQuery within {timeout}s for {step_title(step)}", out
            ) from None
        return out

    async def _run_simple(self, step: Simple, out: list[bytes]) -> None:
        while True:
            msg = await self.read_message(out)
            out.append(msg)
            kind = msg[:1]
            if kind == b"Z":
                return
            if kind == b"G":  # CopyInResponse: the server waits for our data
                if step.copy_data is None:
                    await self.send(message(b"f", cstring("no COPY data in the capture script")))
                else:
                    data = message(b"d", step.copy_data) if step.copy_data else b""
                    await self.send(data + message(b"c"))

    async def _run_suspending(self, step: Extended, out: list[bytes]) -> None:
        while True:
            msg = await self.read_message(out)
            out.append(msg)
            kind = msg[:1]
            if kind == b"s":  # PortalSuspended: fetch the next max_rows
                await self.send(execute_msg("", step.max_rows) + FLUSH)
            elif kind in (b"C", b"I", b"E"):
                break
        await self.send(SYNC)
        await self.read_until_ready(out)

    async def close(self, terminate: bool = True) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            if terminate and not self._writer.is_closing():
                self._writer.write(TERMINATE)
                await self._writer.drain()
        self._writer.close()
        with contextlib.suppress(OSError, RuntimeError):
            await self._writer.wait_closed()


# ------------------------------------------------------------------ whole scripts


@dataclass
class Capture:
    """What one run of a script received: ``auth`` (requests before AuthenticationOk),
    ``startup`` (AuthenticationOk ... ReadyForQuery) and one message list per step."""

    auth: list[bytes]
    startup: list[bytes]
    steps: list[list[bytes]]
    script: list[Step] = field(default_factory=list)


async def capture(
    target: Target, script: Sequence[StepLike], *, timeout: float = DEFAULT_TIMEOUT
) -> Capture:
    """Run ``script`` on one new connection to ``target``."""
    steps = [as_step(s) for s in script]
    conn = await RawConnection.connect(target, timeout)
    async with conn:
        results = [await conn.run(step, timeout) for step in steps]
        return Capture(conn.auth, conn.startup, results, steps)


async def execute(target: Target, sql: str, *, timeout: float = 60.0) -> list[bytes]:
    """Run ``sql`` (one or more statements) as a simple Query; raise :class:`ServerError` on
    an ErrorResponse. For setup and teardown without another driver."""
    async with await RawConnection.connect(target, timeout) as conn:
        out = await conn.run(Simple(sql), timeout)
    for msg in out:
        if msg[:1] == b"E":
            raise ServerError(msg, out)
    return out


def error_codes(messages: Sequence[bytes]) -> list[str]:
    """The SQLSTATEs of the ErrorResponses among ``messages``, in order."""
    return [parse_error_fields(m).get("C", "") for m in messages if m[:1] == b"E"]


# ------------------------------------------------------------------ normalising


def _parameter_name(msg: bytes) -> str:
    return msg[5:].split(b"\x00", 1)[0].decode("utf-8", "replace")


def normalize_messages(
    messages: Sequence[bytes],
    *,
    drop_kinds: Collection[bytes] = (b"K",),
    ignore_parameters: Collection[str] = (),
) -> list[bytes]:
    """``messages`` without those of the types in ``drop_kinds`` (BackendKeyData unless
    told) and without ParameterStatus messages for the parameters in ``ignore_parameters``
    (compared case-insensitively, as PostgreSQL does)."""
    ignored = {name.lower() for name in ignore_parameters}
    return [
        m
        for m in messages
        if m[:1] not in drop_kinds and not (m[:1] == b"S" and _parameter_name(m).lower() in ignored)
    ]


def normalize(
    cap: Capture,
    *,
    drop_kinds: Collection[bytes] = (b"K",),
    ignore_parameters: Collection[str] = (),
) -> Capture:
    """``cap`` with :func:`normalize_messages` applied to the startup and every step. The
    authentication requests are kept apart in ``auth`` and never compared."""
    return Capture(
        list(cap.auth),
        normalize_messages(cap.startup, drop_kinds=drop_kinds, ignore_parameters=ignore_parameters),
        [
            normalize_messages(s, drop_kinds=drop_kinds, ignore_parameters=ignore_parameters)
            for s in cap.steps
        ],
        list(cap.script),
    )


# ------------------------------------------------------------------ comparing


def describe(msg: bytes, limit: int = 200) -> str:
    """A readable one-line summary of a backend message."""
    kind = msg[:1]
    name = MESSAGE_NAMES.get(kind, f"unknown {kind!r}")
    body = msg[5:]
    try:
        detail = _detail(kind, body)
    except (struct.error, IndexError, UnicodeDecodeError, ValueError):
        detail = "(malformed)"
    text = f"{name}{' ' + detail if detail else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _detail(kind: bytes, body: bytes) -> str:
    if kind == b"C":
        return repr(body.rstrip(b"\x00").decode())
    if kind == b"Z":
        return repr(body.decode())
    if kind in (b"E", b"N"):
        fields = parse_error_fields(b"xxxxx" + body)
        return " ".join(f"{k}={v!r}" for k, v in fields.items())
    if kind == b"S":
        name, value, _ = body.split(b"\x00", 2)
        return f"{name.decode()}={value.decode()!r}"
    if kind == b"R":
        return f"code={_I32.unpack_from(body)[0]}"
    if kind == b"T":
        count = _I16.unpack_from(body)[0]
        pos, cols = 2, []
        for _ in range(count):
            end = body.index(b"\x00", pos)
            col = body[pos:end].decode()
            _table, _attnum, oid, _size, _mod, fmt = struct.unpack_from("!IhIhih", body, end + 1)
            cols.append(f"{col}:{oid}{'b' if fmt else ''}")
            pos = end + 19
        return " ".join(cols)
    if kind == b"D":
        count = _I16.unpack_from(body)[0]
        pos, values = 2, []
        for _ in range(count):
            size = _I32.unpack_from(body, pos)[0]
            pos += 4
            if size < 0:
                values.append("NULL")
            else:
                values.append(repr(body[pos : pos + size]))
                pos += size
        return " ".join(values)
    if kind == b"t":
        count = _I16.unpack_from(body)[0]
        return " ".join(str(oid) for oid in struct.unpack_from(f"!{count}I", body, 2))
    if kind in (b"d", b"A"):
        return repr(body)
    return ""


def _hex(msg: bytes | None, limit: int) -> str:
    if msg is None:
        return "(none)"
    text = msg[:limit].hex(" ")
    return text + (f" ... ({len(msg)} bytes)" if len(msg) > limit else "")


@dataclass(frozen=True)
class Diff:
    """One message that differs: ``step`` is the script index (-1: startup), ``index`` the
    message's position in that step; ``left``/``right`` are None when that side has fewer
    messages."""

    step: int
    title: str
    index: int
    left: bytes | None
    right: bytes | None

    @property
    def first_difference(self) -> int:
        """The offset of the first differing byte."""
        a, b = self.left or b"", self.right or b""
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            if x != y:
                return i
        return min(len(a), len(b))

    def render(self, names: tuple[str, str] = ("left", "right"), hex_limit: int = 512) -> str:
        width = max(len(n) for n in names)
        lines = [f"{'startup' if self.step < 0 else f'step {self.step}'}: {self.title}"]
        lines.append(f"  message {self.index}: first difference at byte {self.first_difference}")
        for name, msg in zip(names, (self.left, self.right), strict=True):
            lines.append(f"  {name:<{width}}  {describe(msg) if msg is not None else '(none)'}")
            lines.append(f"  {'':<{width}}  {_hex(msg, hex_limit)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


def _diff_lists(step: int, title: str, left: Sequence[bytes], right: Sequence[bytes]) -> list[Diff]:
    out = []
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else None
        b = right[i] if i < len(right) else None
        if a != b:
            out.append(Diff(step, title, i, a, b))
    return out


def compare(
    left: Capture,
    right: Capture,
    *,
    drop_kinds: Collection[bytes] = (b"K",),
    ignore_parameters: Collection[str] = (),
) -> list[Diff]:
    """The differences between two captures of the same script, after :func:`normalize`."""
    a = normalize(left, drop_kinds=drop_kinds, ignore_parameters=ignore_parameters)
    b = normalize(right, drop_kinds=drop_kinds, ignore_parameters=ignore_parameters)
    out = _diff_lists(-1, "startup", a.startup, b.startup)
    script = left.script or right.script
    for i in range(max(len(a.steps), len(b.steps))):
        title = step_title(script[i]) if i < len(script) else ""
        out += _diff_lists(
            i,
            title,
            a.steps[i] if i < len(a.steps) else [],
            b.steps[i] if i < len(b.steps) else [],
        )
    return out


def format_diffs(
    diffs: Sequence[Diff], names: tuple[str, str] = ("left", "right"), limit: int = 20
) -> str:
    """A report of ``diffs`` (the first ``limit`` of them) for an assertion message."""
    if not diffs:
        return "no differences"
    steps = sorted({d.step for d in diffs})
    head = f"{len(diffs)} differing messages in {len(steps)} step(s): {steps}"
    body = [d.render(names) for d in diffs[:limit]]
    more = [f"... and {len(diffs) - limit} more"] if len(diffs) > limit else []
    return "\n".join([head, *body, *more])


async def capture_both(
    direct: Target,
    other: Target,
    script: Sequence[StepLike],
    *,
    drop_kinds: Collection[bytes] = (b"K",),
    ignore_parameters: Collection[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
) -> list[Diff]:
    """Run ``script`` on ``direct`` and then on ``other`` (one after the other, so that
    steps that write see the same data) and return the differences. ``str(diff)`` or
    :func:`format_diffs` render them."""
    left = await capture(direct, script, timeout=timeout)
    right = await capture(other, script, timeout=timeout)
    return compare(left, right, drop_kinds=drop_kinds, ignore_parameters=ignore_parameters)


def sql_identifier(name: str) -> str:
    """``name`` if it is a plain lower-case SQL identifier (schema names in scripts)."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"not a plain identifier: {name!r}")
    return name
