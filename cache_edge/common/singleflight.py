"""Package singleflight provides duplicate call suppression within one process.

Callers of :meth:`Group.do` with the same key while a call is in flight share
its result. The shared call runs as its own task, so a caller that is cancelled
(its client went away) never cancels the work the other callers wait for.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["Group"]

T = TypeVar("T")


class Group(Generic[T]):
    def __init__(self) -> None:
        self._calls: dict[Hashable, asyncio.Task[T]] = {}
        self.deduplicated = 0  # calls that joined an existing flight

    def in_flight(self) -> int:
        return len(self._calls)

    def running(self, key: Hashable) -> bool:
        return key in self._calls

    async def do(self, key: Hashable, fn: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Run ``fn`` once per key at a time; return (result, shared) where ``shared``
        is True for callers that joined a flight started by someone else."""
        task = self._calls.get(key)
        if task is not None and task.done():
            # Finished, but its _forget callback has not run yet: awaiting it would not
            # yield, so a caller that must not take its result would spin (issue 13 M).
            task = None
        shared = task is not None
        if task is None:
            task = asyncio.ensure_future(fn())
            self._calls[key] = task
            task.add_done_callback(functools.partial(self._forget, key))
        else:
            self.deduplicated += 1
        return await asyncio.shield(task), shared

    def _forget(self, key: Hashable, task: asyncio.Task[T]) -> None:
        if self._calls.get(key) is task:
            del self._calls[key]
        if not task.cancelled():
            task.exception()  # mark retrieved: a failure nobody awaited is not "never retrieved"
