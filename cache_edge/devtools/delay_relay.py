"""A TCP relay that forwards bytes both ways, delaying each chunk by a fixed one-way delay.

Put between a node and the origin, it makes one machine feel like regions far apart:
every round trip costs twice the delay, and a new connection one extra round trip
(the TCP handshake a real WAN would charge). Chunks are delayed, not serialized, so a
stream keeps its throughput, as on a long fat pipe.
"""

from __future__ import annotations

import asyncio

__all__ = ["DelayRelay"]

_CHUNK = 65_536
_QUEUED_CHUNKS = 256  # backpressure: a slow reader stops the relay reading from its peer


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy ``reader`` to ``writer``, each chunk delivered ``delay`` seconds after it arrived."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUED_CHUNKS)

    async def deliver() -> None:
        while True:
            due, chunk = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not chunk:  # the peer finished sending: pass the half-close on
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()

    async def receive() -> None:
        while True:
            chunk = await reader.read(_CHUNK)
            await queue.put((loop.time() + delay, chunk))
            if not chunk:
                return

    # Two tasks, so a failed write (the peer reset) cannot leave the reader blocked on a full queue.
    tasks = [asyncio.create_task(receive()), asyncio.create_task(deliver())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class DelayRelay:
    """Listen on ``listen_host:listen_port`` and relay every connection to the target."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        delay: float,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        if delay < 0:
            raise ValueError("delay must be >= 0")
        self.target = (target_host, target_port)
        self.delay = delay
        self._listen = (listen_host, listen_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "relay not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> DelayRelay:
        self._server = await asyncio.start_server(self._handle, *self._listen)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            # Open connections would otherwise outlive the relay (keep-alive never ends).
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self._writers.add(client_w)
        upstream_w: asyncio.StreamWriter | None = None
        try:
            # The handshake of a real WAN connection costs one round trip before any byte.
            await asyncio.sleep(2 * self.delay)
            upstream_r, upstream_w = await asyncio.open_connection(*self.target)
            self._writers.add(upstream_w)
            pipes = [
                asyncio.create_task(_pipe(client_r, upstream_w, self.delay)),
                asyncio.create_task(_pipe(upstream_r, client_w, self.delay)),
            ]
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for task in pipes:
                    task.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
        except OSError:
            pass  # the target is down or a side reset: dropping the client tells it so
        finally:
            for writer in (client_w, upstream_w):
                if writer is not None:
                    self._writers.discard(writer)
                    writer.close()
