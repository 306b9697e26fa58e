"""Stopping background tasks for sure.

``task.cancel()`` asks once; a library can swallow that request (redis-py's connection
timeouts have turned a cancellation into a timeout error, which a retry loop then handled
and went on). A graceful shutdown must not hang on that, so the request is repeated until
the task ends or the deadline passes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["stop_tasks"]


async def stop_tasks(tasks: Iterable[asyncio.Task[Any] | None], timeout: float = 5.0) -> None:
    pending = {t for t in tasks if t is not None and not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=min(0.5, deadline - loop.time()))
    for task in pending:  # still running: leave it to the loop's shutdown, never hang here
        task.cancel()
