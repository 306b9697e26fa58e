"""Change streams at a node: one upstream feed per tenant, fanned out to local subscribers.

However many clients subscribe, a node process keeps one long-poll per tenant to the
origin's change history (and none without subscribers). Each subscriber has a bounded
queue: one that cannot keep up is closed with ``subscriber_too_slow`` instead of slowing
the feed or growing memory. A subscriber that starts from a cursor first catches up from
the origin's history (filtered to its tables), holding back live events meanwhile, then
joins the live feed; cursors de-duplicate the seam (docs/change-streams.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from cache_edge.common.errors import (
    CacheEdgeError,
    CaptureUnavailable,
    StreamGap,
    SubscriberTooSlow,
)
from cache_edge.common.wire import json_dumps
from cache_edge.node.origin_client import OriginClient
from cache_edge.server.logs import get_logger

__all__ = ["Event", "StreamHub", "Subscription"]

log = get_logger(__name__)


class Event:
    """One change event as the origin sent it, with its JSON encoded once for every
    subscriber of the process (a burst to many subscribers encodes each event once)."""

    __slots__ = ("_json", "body", "cursor", "op", "table")

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.cursor: str = body["cursor"]
        self.table: str = body["table"]
        self.op: str = body["op"]
        self._json: bytes | None = None

    @property
    def json(self) -> bytes:
        if self._json is None:
            self._json = json_dumps(self.body)
        return self._json


class _Ended(CacheEdgeError):
    """Marks a stream ended without an error (never sent to a client)."""


_ENDED = _Ended("stream ended")
_LONG_POLL = 10.0
_RETRY = 1.0
_SETTLE = 0.5  # seconds the feed waits at most for lagging subscribers after a page


@dataclass(eq=False)
class Subscription:
    tenant: str
    tables: frozenset[str]
    ops: frozenset[str] | None
    buffer: int
    start: str  # events at or before this cursor are never delivered
    _queue: asyncio.Queue[Event | CacheEdgeError] = field(init=False)
    _last: str = field(init=False)
    _held: list[Event] | None = field(init=False, default_factory=list)  # live, while catching up
    closed: CacheEdgeError | None = field(init=False, default=None)
    closed_event: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    _taken: asyncio.Event = field(init=False, default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._queue = asyncio.Queue()
        self._last = self.start

    def wants(self, event: Event) -> bool:
        return event.table in self.tables and (self.ops is None or event.op in self.ops)

    def offer(self, event: Event) -> None:
        """A live event from the feed (any table)."""
        if self.closed is not None or not self.wants(event):
            return
        if self._held is not None:
            self._held.append(event)
            if len(self._held) > self.buffer:
                self.close(SubscriberTooSlow(self._too_slow()))
            return
        self.deliver(event)

    def deliver(self, event: Event) -> None:
        if event.cursor <= self._last:
            return  # already delivered (the catch-up/live seam, or an at-least-once repeat)
        if self._queue.qsize() >= self.buffer:
            self.close(SubscriberTooSlow(self._too_slow()))
            return
        self._last = event.cursor
        self._queue.put_nowait(event)

    def _too_slow(self) -> str:
        return (
            f"this subscriber fell {self.buffer} events behind and was disconnected; "
            f"reconnect with Last-Event-ID: {self._last} to resume without loss"
        )

    def caught_up(self) -> None:
        held, self._held = self._held or [], None
        for event in held:
            self.deliver(event)

    def end(self) -> None:
        """End the stream without an error (shutdown): the client just reconnects."""
        self.close(_ENDED)

    def close(self, reason: CacheEdgeError) -> None:
        if self.closed is None:
            self.closed = reason
            self.closed_event.set()
            # Drop what is queued: the client resumes from its last cursor anyway.
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(reason)

    async def next(self, timeout: float) -> list[Event] | CacheEdgeError | None:
        """The events queued now (at least one), the reason the stream ends, or None after
        ``timeout`` idle. Taking all at once lets the writer send them in one write."""
        try:
            first = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None
        if isinstance(first, CacheEdgeError):
            return first
        batch = [first]
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, CacheEdgeError):
                self._queue.put_nowait(item)  # after these events
                break
            batch.append(item)
        self._taken.set()
        return batch

    async def room(self, limit: int | None = None, timeout: float = 1.0) -> bool:
        """Wait until at most ``limit`` (default: a full buffer less one) events are queued,
        the subscription closed, or ``timeout`` passed; True if there is room."""
        limit = self.buffer - 1 if limit is None else limit
        deadline = asyncio.get_running_loop().time() + timeout
        while self._queue.qsize() > limit and self.closed is None:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            self._taken.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._taken.wait(), remaining)
        return True

    @property
    def ended_cleanly(self) -> bool:
        return self.closed is _ENDED

    @property
    def backlog(self) -> int:
        return self._queue.qsize()


class _Feed:
    """One tenant's upstream: long-polls the origin, keeps a ring of recent events."""

    def __init__(self, tenant: str, origin: OriginClient, ring: int, page: int) -> None:
        self.tenant = tenant
        self._origin = origin
        # At most half a subscriber's buffer per poll: a subscriber that keeps up drains a
        # page before the next arrives; only one that does not can overflow.
        self._page = page
        self.subscribers: set[Subscription] = set()
        self.ring: deque[Event] = deque(maxlen=ring)
        self.cursor: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.events = 0

    async def run(self) -> None:
        while self.subscribers:
            try:
                if self.cursor is None:
                    self.cursor = (await self._origin.poll_changes(self.tenant, None))["cursor"]
                answer = await self._origin.poll_changes(
                    self.tenant, self.cursor, wait=_LONG_POLL, limit=self._page
                )
            except asyncio.CancelledError:
                raise
            except (StreamGap, CaptureUnavailable) as exc:
                # History was lost (or the capture is gone): nobody may continue silently.
                for sub in list(self.subscribers):
                    sub.close(exc)
                self.subscribers.clear()
                self.cursor = None
                return
            except Exception as exc:
                log.warning("stream_feed_retry", tenant=self.tenant, error=f"{exc!r}"[:200])
                await asyncio.sleep(_RETRY)
                continue
            for body in answer["events"]:
                event = Event(body)
                self.ring.append(event)
                self.events += 1
                for sub in list(self.subscribers):
                    sub.offer(event)
            self.cursor = answer["cursor"]
            if answer["events"]:
                await self._settle()

    async def _settle(self) -> None:
        """Give subscribers a moment to drain before the next page, so a burst does not cut
        off clients that keep up; one that is still behind after it is slow, and the next
        pages overflow its buffer. Bounded: a stuck client delays the feed once, briefly."""
        lagging = [s for s in self.subscribers if s.backlog > self._page]
        if lagging:
            await asyncio.gather(*(s.room(self._page, _SETTLE) for s in lagging))

    def history_after(self, cursor: str) -> list[Event] | None:
        """Events after ``cursor`` from the ring, or None if the ring does not reach back."""
        if not self.ring or self.ring[0].cursor > cursor:
            return None
        return [e for e in self.ring if e.cursor > cursor]


class StreamHub:
    def __init__(self, origin: OriginClient, *, buffer: int, ring: int) -> None:
        self._origin = origin
        self._buffer = buffer
        self._ring = ring
        self._feeds: dict[str, _Feed] = {}
        self._received: dict[str, int] = {}  # events received per tenant, feeds come and go
        self.dropped = 0  # subscribers cut off as too slow

    def stats(self) -> dict[str, tuple[int, int]]:
        """tenant -> (subscribers now, events received so far) of this process."""
        out = {t: (0, n) for t, n in self._received.items()}
        for t, f in self._feeds.items():
            out[t] = (len(f.subscribers), self._received.get(t, 0) + f.events)
        return out

    @contextlib.asynccontextmanager
    async def subscribe(
        self,
        tenant: str,
        tables: list[str],
        ops: list[str] | None,
        cursor: str | None,
    ) -> AsyncIterator[Subscription]:
        """Validate with the origin (tables exist, streams enabled, cursor retained), then
        hold a subscription for the life of the context."""
        probe = await self._origin.poll_changes(tenant, None, tables=tables)
        if cursor is not None:
            # Raises stream_gap now, as an HTTP error, if the cursor is past retention.
            await self._origin.poll_changes(tenant, cursor, tables=tables[:1], wait=0, limit=1)
        sub = Subscription(
            tenant,
            frozenset(tables),
            frozenset(ops) if ops else None,
            self._buffer,
            cursor if cursor is not None else probe["cursor"],
        )
        feed = self._feeds.get(tenant)
        if feed is None:
            page = max(1, min(1000, self._buffer // 2))
            feed = self._feeds[tenant] = _Feed(tenant, self._origin, self._ring, page)
        feed.subscribers.add(sub)
        if feed.task is None or feed.task.done():
            feed.task = asyncio.create_task(feed.run())
        catch_up = asyncio.create_task(self._catch_up(feed, sub, tables, ops))
        try:
            yield sub
        finally:
            catch_up.cancel()
            feed.subscribers.discard(sub)
            if isinstance(sub.closed, SubscriberTooSlow):
                self.dropped += 1
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await catch_up
            if not feed.subscribers and feed.task is not None:
                feed.task.cancel()
                self._received[tenant] = self._received.get(tenant, 0) + feed.events
                self._feeds.pop(tenant, None)

    async def _catch_up(
        self, feed: _Feed, sub: Subscription, tables: list[str], ops: list[str] | None
    ) -> None:
        """Deliver what was committed after the subscription's start and before the live
        feed's events reach it, then release the held live events."""
        position = sub.start
        try:
            while sub.closed is None:
                recent = feed.history_after(position)
                if recent is not None and (not recent or recent[-1].cursor == feed.cursor):
                    for event in recent:
                        if sub.wants(event):
                            sub.deliver(event)
                    break
                answer = await self._origin.poll_changes(
                    sub.tenant, position, tables=tables, ops=ops, wait=0, limit=1000
                )
                for body in answer["events"]:
                    # Pulled history waits for the client, never overflows its buffer.
                    while not await sub.room():
                        pass
                    sub.deliver(Event(body))
                if not answer["events"]:
                    break
                position = answer["cursor"]
        except CacheEdgeError as exc:
            sub.close(exc)
            return
        sub.caught_up()

    async def close(self) -> None:
        """End every stream (node shutdown): clients reconnect elsewhere with their cursor."""
        for feed in list(self._feeds.values()):
            for sub in list(feed.subscribers):
                sub.end()
            if feed.task is not None:
                feed.task.cancel()
        self._feeds.clear()
