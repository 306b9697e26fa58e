"""Package fairshare shares a fixed number of slots fairly among keys (tenants).

Up to ``capacity`` callers hold a slot at once. When callers must wait, a freed
slot goes to the waiting key that holds the fewest slots (the longest waiting
first among equals), so a tenant that floods cannot keep another tenant from
its turn: the newcomer is served at the next release, not after the flood.
No single key may hold more than ``capacity - reserve`` slots, so a newcomer
does not even wait for that release while one key floods with slow calls.
A caller cancelled while waiting leaves the queue; one cancelled just after it
was granted a slot passes the slot on.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Hashable

__all__ = ["FairShare"]


class FairShare:
    def __init__(self, capacity: int, reserve: int | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        # Default: a tenth of the slots stay free for keys other than the busiest.
        self.per_key = capacity - (capacity // 10 if reserve is None else reserve)
        if not 1 <= self.per_key <= capacity:
            raise ValueError("reserve must leave at least one slot per key")
        self._in_use = 0
        self._held: dict[Hashable, int] = {}
        self._waiters: dict[Hashable, deque[tuple[int, asyncio.Future[None]]]] = {}
        self._order = itertools.count()

    def held(self, key: Hashable) -> int:
        return self._held.get(key, 0)

    def waiting(self) -> int:
        return sum(len(q) for q in self._waiters.values())

    def slot(self, key: Hashable) -> _Slot:
        """``async with share.slot(key)``: hold a slot for the block (a class, not a
        generator: it runs for every origin call)."""
        return _Slot(self, key)

    def _take(self, key: Hashable) -> None:
        self._in_use += 1
        self._held[key] = self._held.get(key, 0) + 1

    async def _acquire(self, key: Hashable) -> None:
        if self._in_use < self.capacity and not self._waiters and self.held(key) < self.per_key:
            self._take(key)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (next(self._order), fut)
        self._waiters.setdefault(key, deque()).append(entry)
        self._wake()  # others may be queued only for their own per-key cap: we may go now
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release(key)  # granted, then cancelled before it could run
            else:
                queue = self._waiters.get(key)
                if queue is not None and entry in queue:
                    queue.remove(entry)
                    if not queue:
                        del self._waiters[key]
            raise

    def _release(self, key: Hashable) -> None:
        self._in_use -= 1
        left = self._held[key] - 1
        if left:
            self._held[key] = left
        else:
            del self._held[key]
        self._wake()

    def _wake(self) -> None:
        while self._in_use < self.capacity:
            eligible = [k for k in self._waiters if self.held(k) < self.per_key]
            if not eligible:
                return
            key = min(eligible, key=lambda k: (self.held(k), self._waiters[k][0][0]))
            queue = self._waiters[key]
            _, fut = queue.popleft()
            if not queue:
                del self._waiters[key]
            if fut.done():
                continue  # cancelled while queued
            self._take(key)
            fut.set_result(None)


class _Slot:
    __slots__ = ("_key", "_share")

    def __init__(self, share: FairShare, key: Hashable) -> None:
        self._share = share
        self._key = key

    async def __aenter__(self) -> None:
        await self._share._acquire(self._key)

    async def __aexit__(self, *exc: object) -> None:
        self._share._release(self._key)
