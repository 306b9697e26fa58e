"""LISTEN on a tenant database channel for as long as the origin runs, reconnecting.

Replicas of the origin wake each other's long-polls this way. Correctness never depends
on it (every waiter re-checks the database on a short timer); it only makes things fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable

import asyncpg

from cache_edge.server.logs import get_logger

__all__ = ["listen_forever"]

log = get_logger("origin.core.listener")


async def listen_forever(dsn: str, channel: str, on_notify: Callable[[], None]) -> None:
    """Call ``on_notify`` on every NOTIFY on ``channel``, and once after each (re)connect
    (anything may have been missed while disconnected)."""
    while True:
        conn: asyncpg.Connection | None = None
        try:
            conn = await asyncpg.connect(dsn, timeout=5)
            lost = asyncio.Event()
            conn.add_termination_listener(functools.partial(_set_event, lost))
            await conn.add_listener(channel, lambda *_a: on_notify())
            on_notify()
            await lost.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("listener_retry", channel=channel, error=type(exc).__name__)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2)
        await asyncio.sleep(1.0)


def _set_event(event: asyncio.Event, *_args: object) -> None:
    event.set()
