"""A "something changed" signal for long-polls and waiters, without lost wake-ups.

A waiter takes the current event *before* it reads the state it waits on; ``fire`` sets
that event and replaces it, so a change that lands after the read always wakes the
waiter, and one that landed before it is seen by the read.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["ChangeSignal"]


class ChangeSignal:
    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.closed = False  # the origin is stopping: waits end at once

    def take(self) -> asyncio.Event:
        return self._event

    def fire(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    def close(self) -> None:
        self.closed = True
        self.fire()

    @staticmethod
    async def wait(taken: asyncio.Event, timeout: float) -> None:
        """Until ``taken`` fires or ``timeout`` seconds pass (callers re-check either way)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(taken.wait(), timeout=max(0.0, timeout))
