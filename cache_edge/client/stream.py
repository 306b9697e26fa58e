"""Change streams, transport-free: the SSE parser, ``ChangeEvent`` and the reconnect policy.

``GET /v1/stream`` (docs/change-streams.md) answers ``text/event-stream``: a ``ready``
event, then ``change`` events carrying a resumable ``cursor``, ``: keepalive`` comments,
and at most one ``error`` event before the node closes the stream. This module turns
bytes into events and events into decisions (``Subscription``: what to yield, what to
resume from, what to raise, how long to wait); the loops that only move bytes are
``AsyncClient.stream`` (aiohttp) and ``Client.stream`` (http.client). It imports no
transport, so the blocking SDK stays light.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import urlencode

from cache_edge.client.core import USER_AGENT, decode_response
from cache_edge.common.errors import (
    BadRequest,
    CacheEdgeError,
    CaptureUnavailable,
    NotFound,
    OriginUnavailable,
    PayloadTooLarge,
    StreamGap,
    Unauthorized,
    error_from_body,
)
from cache_edge.common.wire import json_loads

__all__ = [
    "DEFAULT_BACKOFF",
    "EVENT_STREAM_TYPE",
    "MAX_ERROR_BODY",
    "STREAM_PATH",
    "TOO_SLOW",
    "Backoff",
    "ChangeEvent",
    "Resume",
    "SSEEvent",
    "SSEParser",
    "Subscription",
    "change_from_sse",
    "describe",
    "is_fatal",
    "stream_error",
    "stream_headers",
    "stream_path",
    "stream_query",
]

log = logging.getLogger("cache_edge.client")

STREAM_PATH = "/v1/stream"
EVENT_STREAM_TYPE = "text/event-stream"

# The in-stream error after which resuming at once with the last cursor is the right
# thing: the client fell behind its buffer, and nothing is lost.
TOO_SLOW = "subscriber_too_slow"

# Errors that a reconnect cannot cure: the request itself is wrong, the key is unknown,
# the tenant cannot stream, or history is gone. Everything else is retried.
_FATAL: tuple[type[CacheEdgeError], ...] = (
    BadRequest,
    Unauthorized,
    NotFound,
    CaptureUnavailable,
    StreamGap,
    PayloadTooLarge,
)

MAX_ERROR_BODY = 64 * 1024  # of a refused subscription's JSON body
_MAX_LINE = 16 * 1024 * 1024  # a single SSE line longer than this is not a cache-edge node
_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched server-sent event (``event`` defaults to ``message``)."""

    event: str
    data: str
    id: str | None = None  # the stream's last event id when this event was dispatched
    retry: int | None = None  # milliseconds, when the server set a reconnection time


class SSEParser:
    """Incremental parser of ``text/event-stream`` bytes (the WHATWG algorithm).

    Feed it chunks as they arrive, cut anywhere (even inside a UTF-8 character or
    between ``\\r`` and ``\\n``); it returns the events completed so far.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._started = False
        self._event = ""
        self._data: list[str] = []
        self._retry: int | None = None
        self.last_id: str | None = None
        self.comments = 0  # keepalives seen, for tests and diagnostics

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        # The buffer holds no line end but maybe a final \r: resume the scan there, so a
        # long line arriving in many chunks is scanned once, not once per chunk.
        scan_from = max(0, len(self._buffer) - 1)
        self._buffer += chunk
        if not self._started:
            if len(self._buffer) < 3 and b"\xef\xbb\xbf".startswith(self._buffer):
                return []  # maybe the start of a byte-order mark: wait for more
            self._started = True
            if self._buffer.startswith(b"\xef\xbb\xbf"):
                self._buffer = self._buffer[3:]
            scan_from = 0
        events: list[SSEEvent] = []
        start = 0
        for match in _LINE_END.finditer(self._buffer, scan_from):
            if match.group() == b"\r" and match.end() == len(self._buffer):
                break  # a lone \r at the end may be the first half of \r\n
            line = self._buffer[start : match.start()].decode("utf-8", errors="replace")
            start = match.end()
            event = self._line(line)
            if event is not None:
                events.append(event)
        self._buffer = self._buffer[start:]
        if len(self._buffer) > _MAX_LINE:
            raise ValueError(f"an event-stream line longer than {_MAX_LINE} bytes")
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments += 1
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self.last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        event, data, retry = self._event or "message", self._data, self._retry
        self._event, self._data, self._retry = "", [], None
        if not data:
            return None
        return SSEEvent(event, "\n".join(data), self.last_id, retry)


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One committed row change (or a truncate) of a subscribed table.

    Row values are JSON as the node sent them: numeric as a string, bytea base64,
    timestamps ISO 8601 text, json as structures (docs/change-streams.md).
    """

    cursor: str  # resumable position; cursors sort as strings
    table: str  # schema.name
    op: str  # insert | update | delete | truncate
    new: dict[str, Any] | None  # the new row (insert, update)
    old: dict[str, Any] | None  # the old key columns, or the whole old row (see old_is_key)
    old_is_key: bool
    unchanged: tuple[str, ...]  # columns of ``new`` not resent (TOASTed, untouched)
    xid: int | None
    commit_time: dt.datetime | None  # aware
    lsn: str
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)


def _row(value: Any, name: str) -> dict[str, Any] | None:
    if value is None or isinstance(value, dict):
        return value
    raise ValueError(f"{name} is not an object")


def _commit_time(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    moment = dt.datetime.fromisoformat(str(value))  # 3.11 reads a trailing "Z"
    if moment.tzinfo is None:
        raise ValueError(f"commitTime without an offset: {value!r}")
    return moment


def change_from_sse(sse: SSEEvent) -> ChangeEvent:
    """Decode a ``change`` event; a malformed one raises ValueError (a server bug)."""
    try:
        data = json_loads(sse.data)
    except CacheEdgeError as exc:
        raise ValueError(exc.message) from None
    if not isinstance(data, dict):
        raise ValueError("change data is not an object")
    cursor = data.get("cursor") or sse.id
    if not isinstance(cursor, str) or not cursor:
        raise ValueError("change event without a cursor")
    table, op = data.get("table"), data.get("op")
    if not isinstance(table, str) or not isinstance(op, str):
        raise ValueError("change event without table or op")
    xid = data.get("xid")
    return ChangeEvent(
        cursor=cursor,
        table=table,
        op=op,
        new=_row(data.get("new"), "new"),
        old=_row(data.get("old"), "old"),
        old_is_key=bool(data.get("oldIsKey", False)),
        unchanged=tuple(str(c) for c in data.get("unchanged") or ()),
        xid=int(xid) if xid is not None else None,
        commit_time=_commit_time(data.get("commitTime")),
        lsn=str(data.get("lsn", "")),
        raw=data,
    )


def stream_error(sse: SSEEvent) -> tuple[str, CacheEdgeError]:
    """An in-stream ``error`` event: its code and the typed error it describes."""
    try:
        body = json_loads(sse.data)
    except CacheEdgeError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    code = str(err.get("code", "")) if isinstance(err, dict) else ""
    return code, error_from_body(body, 200)


def is_fatal(exc: CacheEdgeError) -> bool:
    """True when reconnecting cannot help (bad request, bad key, no capture, a gap)."""
    return isinstance(exc, _FATAL)


def _names(values: Sequence[str], what: str) -> list[str]:
    if isinstance(values, str):
        raise TypeError(f"{what} must be a list of strings, not a string")
    names = [str(v).strip() for v in values]
    if not names or any(not n or "," in n for n in names):
        raise ValueError(f"{what} must be a non-empty list of names without commas: {values!r}")
    return names


def stream_query(tables: Sequence[str], ops: Sequence[str] | None) -> str:
    """The query string of ``GET /v1/stream``; the node validates the names themselves."""
    params = {"tables": ",".join(_names(tables, "tables"))}
    if ops is not None:
        params["ops"] = ",".join(_names(ops, "ops"))
    return urlencode(params, safe=",")


def stream_path(tables: Sequence[str], ops: Sequence[str] | None, idle_timeout: float) -> str:
    """Path and query of a subscription, its arguments checked before any connection."""
    query = stream_query(tables, ops)
    if idle_timeout <= 0:
        raise ValueError("idle_timeout must be > 0")
    return f"{STREAM_PATH}?{query}"


def stream_headers(api_key: str, cursor: str | None) -> dict[str, str]:
    headers = {
        "Authorization": f"Bearer {api_key}",
        "Accept": EVENT_STREAM_TYPE,
        "Cache-Control": "no-cache",
        "User-Agent": USER_AGENT,
    }
    if cursor:
        headers["Last-Event-ID"] = cursor
    return headers


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before the ``attempt``-th reconnect in a row (0-based): capped
    exponential with jitter. ``give_up_after`` seconds without a working connection
    raise the last error; None retries for ever."""

    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2  # +- this fraction of the delay, so that clients do not stampede
    give_up_after: float | None = None

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < self.initial or self.multiplier < 1:
            raise ValueError("need 0 <= initial <= maximum and multiplier >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    def delay(self, attempt: int, floor: float = 0.0) -> float:
        base = min(self.maximum, max(floor, self.initial) * self.multiplier ** min(attempt, 64))
        return base * (1 + self.jitter * (2 * random.random() - 1))


DEFAULT_BACKOFF = Backoff()


def describe(exc: BaseException) -> str:
    if isinstance(exc, CacheEdgeError):
        return f"{exc.code}: {exc.message}"
    return str(exc) or type(exc).__name__


class Resume(Exception):
    """The node cut the stream for a reason that a reconnect with the cursor cures."""


def _ready_cursor(event: SSEEvent) -> str | None:
    try:
        data = json_loads(event.data)
    except CacheEdgeError:
        return None
    cursor = data.get("cursor") if isinstance(data, dict) else None
    return cursor if isinstance(cursor, str) and cursor else None


class Subscription:
    """One ``GET /v1/stream`` across its reconnects, whatever moves the bytes.

    A client loop asks for ``headers()``, checks the answer (``is_event_stream`` or
    ``refused``), calls ``start()`` and yields what ``feed(chunk)`` yields; when a
    connection ends (``ended()``), fails, or ``feed`` raises ``Resume``, ``ValueError`` or
    a ``CacheEdgeError``, it waits ``next_delay(problem)`` seconds, which raises instead
    when the problem is final. The cursor it resumes from is the last one yielded, or
    the ``ready`` position when nothing was yielded yet.
    """

    def __init__(self, url: str, cursor: str | None, backoff: Backoff) -> None:
        self.url = url
        self.cursor = cursor
        self.backoff = backoff
        self._attempt = 0  # failed connections in a row
        self._failing_since: float | None = None
        self._floor = 0.0  # the server's reconnection time (SSE "retry:"), seconds
        self._parser = SSEParser()

    def headers(self, api_key: str) -> dict[str, str]:
        return stream_headers(api_key, self.cursor)

    @staticmethod
    def is_event_stream(status: int, content_type: str | None) -> bool:
        kind = (content_type or "").split(";", 1)[0].strip().lower()
        return status == 200 and kind == EVENT_STREAM_TYPE

    def refused(
        self, status: int, content_type: str | None, raw: bytes, retry_after: str | None
    ) -> NoReturn:
        """Raise the typed error of a refused subscription (an ordinary JSON error body)."""
        decode_response(status, content_type, raw, self.url, retry_after)
        kind = (content_type or "").split(";", 1)[0].strip().lower()
        raise OriginUnavailable(f"{self.url} answered HTTP {status} ({kind}), not an event stream")

    def start(self) -> None:
        """A new connection answered with an event stream: parse it from its first byte."""
        self._parser = SSEParser()

    def feed(self, chunk: bytes) -> Iterator[ChangeEvent]:
        """The new changes in ``chunk``, in order; an in-stream error raises after them."""
        for event in self._parser.feed(chunk):
            if event.retry is not None:
                self._floor = event.retry / 1000
            if event.event == "ready":
                self._attempt, self._failing_since = 0, None
                self.cursor = self.cursor or _ready_cursor(event)
            elif event.event == "change":
                change = change_from_sse(event)
                if self.cursor is not None and change.cursor <= self.cursor:
                    continue  # at-least-once: already delivered
                self.cursor = change.cursor
                yield change
            elif event.event == "error":
                code, exc = stream_error(event)
                if code == TOO_SLOW:
                    raise Resume(describe(exc))
                raise exc

    def ended(self) -> CacheEdgeError:
        """The problem of a stream the node closed without an error event."""
        return OriginUnavailable(f"{self.url} ended the stream")

    def next_delay(self, problem: Resume | ValueError | CacheEdgeError) -> float:
        """Seconds to wait before reconnecting after ``problem``; raises it when final."""
        if isinstance(problem, Resume):
            log.warning("change stream: %s; resuming after cursor %s", problem, self.cursor)
            return 0.0
        if isinstance(problem, ValueError):
            raise OriginUnavailable(f"{self.url} sent a malformed event: {problem}") from problem
        if is_fatal(problem):
            raise problem
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        give_up = self.backoff.give_up_after
        if give_up is not None and now - self._failing_since >= give_up:
            raise problem
        delay = max(self.backoff.delay(self._attempt, self._floor), problem.retry_after or 0.0)
        self._attempt += 1
        log.warning(
            "change stream: %s; reconnecting in %.2fs after cursor %s",
            describe(problem),
            delay,
            self.cursor,
        )
        return delay
