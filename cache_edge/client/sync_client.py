"""The blocking client: the same methods as AsyncClient over the standard library's http.client.

It deliberately does not wrap the async client in a private event loop: http.client
costs no import time (it does not pull in aiohttp), works inside code that already
runs an event loop, and is thread-safe through a small pool of keep-alive connections.
"""

from __future__ import annotations

import http.client
import select
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from cache_edge.client import core
from cache_edge.client import stream as sse
from cache_edge.client.results import InvalidationResult, Result, Row, Rows
from cache_edge.client.stream import Backoff, ChangeEvent
from cache_edge.common.errors import CacheEdgeError
from cache_edge.common.strategy import CacheStrategy

__all__ = ["Client"]

# Below aiohttp's server keep-alive (75 s), so we rarely reuse a socket the node just closed.
IDLE_TIMEOUT = 15.0
_READ_SIZE = 64 * 1024  # at most this much of an event stream per read


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """An idle keep-alive socket that is readable was closed by the server (or is garbage)."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class _Pool:
    """Idle keep-alive connections to one host; a thread takes one, uses it, gives it back."""

    def __init__(self, scheme: str, host: str, port: int | None, timeout: float, size: int) -> None:
        self._factory = (
            http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        )
        self._host, self._port, self._timeout, self._size = host, port, timeout, size
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []
        self._lock = threading.Lock()

    def take(self) -> http.client.HTTPConnection:
        now = time.monotonic()
        while True:
            with self._lock:
                if not self._idle:
                    break
                conn, since = self._idle.pop()
            if now - since < IDLE_TIMEOUT and not _dropped(conn):
                return conn
            conn.close()
        return self._factory(self._host, self._port, timeout=self._timeout)

    def open(self, read_timeout: float) -> http.client.HTTPConnection:
        """A new connection of its own (never pooled): connects within the pool's timeout,
        then waits at most ``read_timeout`` for each read."""
        conn = self._factory(self._host, self._port, timeout=self._timeout)
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(read_timeout)
        return conn

    def give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self._size:
                self._idle.append((conn, time.monotonic()))
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()


class Client:
    """Query PostgreSQL through a cache-edge node from ordinary (blocking) code.

    ``with Client(url, api_key) as db: row = db.fetchrow("SELECT ...", 1)``. Safe to share
    between threads; failures raise the typed errors of :mod:`cache_edge.common.errors`.
    """

    def __init__(
        self, url: str, api_key: str, *, timeout: float = 30.0, max_idle_connections: int = 10
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.url = core.check_base_url(url)
        self.timeout = timeout
        parts = urlsplit(self.url)
        self._prefix = parts.path
        self._api_key = api_key
        self._headers = core.request_headers(api_key)
        self._pool = _Pool(
            parts.scheme, parts.hostname or "", parts.port, timeout, max_idle_connections
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._pool.close()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = self.url + path
        data = core.encode_body(body)
        conn = self._pool.take()
        try:
            # No retry on a failed send: a POST may be a write, and running it twice is worse.
            conn.request("POST", self._prefix + path, body=data, headers=self._headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise core.network_error(url, exc, self.timeout) from exc
        if resp.will_close:
            conn.close()
        else:
            self._pool.give_back(conn)
        return core.decode_response(
            resp.status, resp.getheader("Content-Type"), raw, url, resp.getheader("Retry-After")
        )

    def query(self, sql: str, *params: Any, cache: CacheStrategy | None = None) -> Result:
        """Run one statement and return everything: rows, columns, row count and cache info."""
        body = self._post(core.QUERY_PATH, core.query_body(sql, params, cache))
        return core.result_from_wire(body, self.url + core.QUERY_PATH)

    def fetch(self, sql: str, *params: Any, cache: CacheStrategy | None = None) -> Rows:
        return self.query(sql, *params, cache=cache).rows

    def fetchrow(self, sql: str, *params: Any, cache: CacheStrategy | None = None) -> Row | None:
        rows = self.fetch(sql, *params, cache=cache)
        return rows[0] if rows else None

    def fetchval(
        self, sql: str, *params: Any, column: int | str = 0, cache: CacheStrategy | None = None
    ) -> Any:
        return core.value_of(self.query(sql, *params, cache=cache), column)

    def execute(self, sql: str, *params: Any) -> int:
        """Run a statement (never cached) and return the number of rows it affected."""
        return self.query(sql, *params).row_count

    def transaction(
        self, statements: Iterable[core.StatementLike], isolation: str = "read_committed"
    ) -> list[Result]:
        """Run statements atomically on the origin; one Result per statement."""
        body = core.transaction_body(statements, isolation)
        answer = self._post(core.TRANSACTION_PATH, body)
        return core.results_from_wire(answer, self.url + core.TRANSACTION_PATH)

    def invalidate(
        self,
        tags: Sequence[str] = (),
        wait: float | None = 5.0,
        *,
        tables: Sequence[str] = (),
    ) -> InvalidationResult:
        """Purge every cached answer carrying any of ``tags`` in every region (see AsyncClient)."""
        body = core.invalidate_body(tags, False, wait, tables)
        return core.invalidation_from_wire(self._post(core.INVALIDATE_PATH, body))

    def invalidate_all(self, wait: float | None = 5.0) -> InvalidationResult:
        """Purge every cached answer of this API key's tenant in every region."""
        body = core.invalidate_body(None, True, wait)
        return core.invalidation_from_wire(self._post(core.INVALIDATE_PATH, body))

    def stream(
        self,
        tables: Sequence[str],
        *,
        ops: Sequence[str] | None = None,
        cursor: str | None = None,
        backoff: Backoff = sse.DEFAULT_BACKOFF,
        idle_timeout: float = 45.0,
    ) -> Iterator[ChangeEvent]:
        """Committed row changes of ``tables``, in commit order, for ever (see AsyncClient).

        ``for event in db.stream(["public.orders"]): ...`` resumes by itself after the
        last event with the same rules as ``AsyncClient.stream``; ``close()`` the iterator
        (or wrap it in ``contextlib.closing``) to drop the connection as soon as you stop.
        """
        path = sse.stream_path(tables, ops, idle_timeout)
        return self._stream(path, cursor, backoff, idle_timeout)

    def _stream(
        self, path: str, cursor: str | None, backoff: Backoff, idle_timeout: float
    ) -> Iterator[ChangeEvent]:
        url = self.url + path
        sub = sse.Subscription(url, cursor, backoff)
        while True:
            problem: sse.Resume | ValueError | CacheEdgeError
            conn: http.client.HTTPConnection | None = None
            try:
                conn = self._pool.open(idle_timeout)
                conn.request("GET", self._prefix + path, headers=sub.headers(self._api_key))
                resp = conn.getresponse()
                content_type = resp.getheader("Content-Type")
                if not sub.is_event_stream(resp.status, content_type):
                    raw = resp.read(sse.MAX_ERROR_BODY)
                    sub.refused(resp.status, content_type, raw, resp.getheader("Retry-After"))
                sub.start()
                while chunk := resp.read1(_READ_SIZE):
                    yield from sub.feed(chunk)
                problem = sub.ended()
            except (sse.Resume, ValueError, CacheEdgeError) as exc:
                problem = exc
            except (OSError, http.client.HTTPException) as exc:
                problem = core.network_error(url, exc, idle_timeout)
            finally:
                if conn is not None:
                    conn.close()
            time.sleep(sub.next_delay(problem))
