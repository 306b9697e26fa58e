"""The asyncio client: asyncpg-like methods over one keep-alive aiohttp session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterable, Sequence
from types import TracebackType
from typing import Any

import aiohttp

from cache_edge.client import core
from cache_edge.client import stream as sse
from cache_edge.client.results import InvalidationResult, Result, Row, Rows
from cache_edge.client.stream import Backoff, ChangeEvent
from cache_edge.common.errors import CacheEdgeError
from cache_edge.common.strategy import CacheStrategy

__all__ = ["AsyncClient"]


class AsyncClient:
    """Query PostgreSQL through a cache-edge node from asyncio code.

    Use it as ``async with AsyncClient(url, api_key) as db: rows = await db.fetch(...)``,
    or keep one for the life of the process and ``await db.close()`` at the end: the
    HTTP session is created on first use and its connections are reused across calls.
    Failures raise the typed errors of :mod:`cache_edge.common.errors`.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        max_connections: int = 100,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if timeout <= 0 or connect_timeout <= 0:
            raise ValueError("timeout and connect_timeout must be > 0")
        self.url = core.check_base_url(url)
        self.timeout = timeout
        self._api_key = api_key
        self._connect_timeout = connect_timeout
        self._headers = core.request_headers(api_key)
        self._client_timeout = aiohttp.ClientTimeout(total=timeout, connect=connect_timeout)
        self._max_connections = max_connections
        self._session = session
        # A session passed in belongs to the caller, who closes it.
        self._owns_session = session is None

    async def __aenter__(self) -> AsyncClient:
        self._get_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                timeout=self._client_timeout,
            )
            self._owns_session = True
        return self._session

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = self.url + path
        data = core.encode_body(body)
        session = self._get_session()
        try:
            async with session.post(url, data=data, headers=self._headers) as resp:
                raw = await resp.read()
                status, headers = resp.status, resp.headers
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise core.network_error(url, exc, self.timeout) from exc
        return core.decode_response(
            status, headers.get("Content-Type"), raw, url, headers.get("Retry-After")
        )

    async def query(self, sql: str, *params: Any, cache: CacheStrategy | None = None) -> Result:
        """Run one statement and return everything: rows, columns, row count and cache info."""
        body = await self._post(core.QUERY_PATH, core.query_body(sql, params, cache))
        return core.result_from_wire(body, self.url + core.QUERY_PATH)

    async def fetch(self, sql: str, *params: Any, cache: CacheStrategy | None = None) -> Rows:
        return (await self.query(sql, *params, cache=cache)).rows

    async def fetchrow(
        self, sql: str, *params: Any, cache: CacheStrategy | None = None
    ) -> Row | None:
        rows = await self.fetch(sql, *params, cache=cache)
        return rows[0] if rows else None

    async def fetchval(
        self, sql: str, *params: Any, column: int | str = 0, cache: CacheStrategy | None = None
    ) -> Any:
        return core.value_of(await self.query(sql, *params, cache=cache), column)

    async def execute(self, sql: str, *params: Any) -> int:
        """Run a statement (never cached) and return the number of rows it affected."""
        return (await self.query(sql, *params)).row_count

    async def transaction(
        self, statements: Iterable[core.StatementLike], isolation: str = "read_committed"
    ) -> list[Result]:
        """Run statements atomically on the origin; one Result per statement."""
        body = core.transaction_body(statements, isolation)
        answer = await self._post(core.TRANSACTION_PATH, body)
        return core.results_from_wire(answer, self.url + core.TRANSACTION_PATH)

    async def invalidate(
        self,
        tags: Sequence[str] = (),
        wait: float | None = 5.0,
        *,
        tables: Sequence[str] = (),
    ) -> InvalidationResult:
        """Purge every cached answer carrying any of ``tags`` in every region.

        ``wait`` asks the node to hold the answer up to that many seconds until the
        regions have applied it; the result lists the regions still pending.
        """
        body = core.invalidate_body(tags, False, wait, tables)
        return core.invalidation_from_wire(await self._post(core.INVALIDATE_PATH, body))

    async def invalidate_all(self, wait: float | None = 5.0) -> InvalidationResult:
        """Purge every cached answer of this API key's tenant in every region."""
        body = core.invalidate_body(None, True, wait)
        return core.invalidation_from_wire(await self._post(core.INVALIDATE_PATH, body))

    def stream(
        self,
        tables: Sequence[str],
        *,
        ops: Sequence[str] | None = None,
        cursor: str | None = None,
        backoff: Backoff = sse.DEFAULT_BACKOFF,
        idle_timeout: float = 45.0,
    ) -> AsyncGenerator[ChangeEvent, None]:
        """Committed row changes of ``tables`` (``schema.name``), in commit order, for ever.

        ``async for event in db.stream(["public.orders"], ops=["insert"]): ...``

        Without ``cursor`` the stream starts with changes committed after it connects;
        with one (an earlier ``event.cursor``) it resumes right after that event. A
        dropped connection, a node restart or ``subscriber_too_slow`` reconnects with the
        last cursor after ``backoff``, so nothing is lost and nothing is repeated. Raised,
        never retried: ``BadRequest`` (unknown table), ``Unauthorized``,
        ``CaptureUnavailable`` (streams off for the tenant) and ``StreamGap`` (the cursor
        is older than the node's retained history). No bytes for ``idle_timeout``
        seconds (keepalives come every 15) counts as a dropped connection. Wrap the
        iterator in ``contextlib.aclosing`` to close the connection as soon as you stop.
        """
        path = sse.stream_path(tables, ops, idle_timeout)
        return self._stream(self.url + path, cursor, backoff, idle_timeout)

    async def _stream(
        self, url: str, cursor: str | None, backoff: Backoff, idle_timeout: float
    ) -> AsyncGenerator[ChangeEvent, None]:
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self._connect_timeout, sock_read=idle_timeout
        )
        sub = sse.Subscription(url, cursor, backoff)
        while True:
            problem: sse.Resume | ValueError | CacheEdgeError
            try:
                headers = sub.headers(self._api_key)
                async with self._get_session().get(url, headers=headers, timeout=timeout) as resp:
                    content_type = resp.headers.get("Content-Type")
                    if not sub.is_event_stream(resp.status, content_type):
                        raw = await resp.content.read(sse.MAX_ERROR_BODY)
                        retry_after = resp.headers.get("Retry-After")
                        sub.refused(resp.status, content_type, raw, retry_after)
                    sub.start()
                    async for chunk in resp.content.iter_any():
                        for change in sub.feed(chunk):
                            yield change
                problem = sub.ended()
            except (sse.Resume, ValueError, CacheEdgeError) as exc:
                problem = exc
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = core.network_error(url, exc, idle_timeout)
            await asyncio.sleep(sub.next_delay(problem))
