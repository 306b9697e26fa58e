"""Package deadlines bounds many concurrent waits of the same length with one periodic sweep.

``asyncio.timeout`` arms a timer per wait; at thousands of calls a second that is a
measurable share of a node's CPU (a tenth of it in the storm benchmark's profile). Here
every wait has the same length, so deadlines arrive in the order the waits began: a
sweep every ``tick`` seconds cancels the overdue tasks at the front of that order and
stops at the first one that is not due. A deadline is met within ``tick`` seconds.

    task = deadlines.enter()
    try:
        await work()
    except asyncio.CancelledError:
        if deadlines.expired(task):
            raise TimeoutError from None  # ours, not someone else's cancellation
        raise
    finally:
        deadlines.leave(task)
"""

from __future__ import annotations

import asyncio

__all__ = ["Deadlines"]


class Deadlines:
    def __init__(self, seconds: float, tick: float = 0.1) -> None:
        if seconds <= 0 or tick <= 0:
            raise ValueError("seconds and tick must be > 0")
        self.seconds = seconds
        self._tick = min(tick, seconds)
        self._due: dict[asyncio.Task[object], float] = {}  # in the order they fall due
        self._expired: set[asyncio.Task[object]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def enter(self) -> asyncio.Task[object]:
        """Start the current task's deadline (``seconds`` from now)."""
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadlines.enter() outside a task")
        loop = asyncio.get_running_loop()
        self._due.pop(task, None)  # a nested enter restarts it at the back of the order
        self._due[task] = loop.time() + self.seconds
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = loop.create_task(self._sweep(), name="deadlines")
        return task

    def leave(self, task: asyncio.Task[object]) -> None:
        self._due.pop(task, None)
        self._expired.discard(task)

    def expired(self, task: asyncio.Task[object]) -> bool:
        """Whether the task's cancellation was its deadline's alone (then undone)."""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        return task.uncancel() == 0

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while self._due:
            await asyncio.sleep(self._tick)
            now = loop.time()
            while self._due:
                task, due = next(iter(self._due.items()))
                if due > now:
                    break
                del self._due[task]
                if not task.done():
                    self._expired.add(task)
                    task.cancel()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
