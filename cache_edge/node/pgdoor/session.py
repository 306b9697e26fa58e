"""An authenticated client connection of the PostgreSQL door, relayed to the origin.

The node checks the framing (lengths, known message types) and forwards whole messages:
everything a client sent in one write travels as one link frame, so Parse/Bind/Execute/
Sync cost one round trip to the origin. PostgreSQL's answers come back as they arrive.
A client that stops mid-message for ``pg_startup_timeout`` seconds is dropped.
"""

from __future__ import annotations

import asyncio
from typing import Any

from cache_edge.node.pgdoor.link import LinkDown, OriginLink
from cache_edge.node.pgdoor.startup import ClientStream
from cache_edge.pgwire.messages import ProtocolViolation, error_response, split_messages

__all__ = ["ClientSession"]

_FRONTEND = frozenset(b"QPBDEHSCFXdcf")


class ClientSession:
    def __init__(
        self, stream: ClientStream, link: OriginLink, max_message: int, stall_timeout: float
    ) -> None:
        self.stream = stream
        self.link = link
        self.max_message = max_message
        self.stall_timeout = stall_timeout  # node.pg_startup_timeout
        self.sid = 0
        self._closed = False

    async def open(
        self, tenant: str, settings: dict[str, str], key: tuple[int, int], describe: bool
    ) -> Any:
        self.sid, answer = await self.link.open(self, tenant, settings, key, describe)
        return answer or {}

    # LinkSession: called by the link's reader
    def on_data(self, data: bytes) -> None:
        if not self._closed:
            self.stream.writer.write(data)

    def on_close(self, final: bytes) -> None:
        if self._closed:
            return
        self._closed = True
        writer = self.stream.writer
        if final and not writer.is_closing():
            writer.write(final)
        writer.close()

    async def relay(self) -> None:
        stream = self.stream
        while not self._closed:
            if stream.buffer:
                # Mid-message: a client that stalls here is holding memory and a slot.
                async with asyncio.timeout(self.stall_timeout):
                    await stream.fill()
            else:
                await stream.fill()
            try:
                msgs, used = split_messages(stream.buffer, self.max_message)
            except ProtocolViolation as exc:
                self._fatal("08P01", str(exc))
                return
            if not used:
                continue
            del stream.buffer[:used]
            for i, msg in enumerate(msgs):
                kind = msg[0]
                if kind not in _FRONTEND:
                    self._forward(msgs[:i])
                    self._fatal("08P01", f"invalid frontend message type {kind}")
                    return
                if kind == ord("X"):
                    self._forward(msgs[:i])
                    return
            self._forward(msgs)

    def _forward(self, msgs: list[bytes]) -> None:
        if msgs and not self.link.send(self.sid, b"".join(msgs)):
            raise LinkDown("the link to the origin closed")

    def _fatal(self, sqlstate: str, text: str) -> None:
        if not self._closed:
            self.stream.writer.write(error_response(sqlstate, text, "FATAL"))
            self._closed = True

    def end(self) -> None:
        """The client left (or was dropped): end the session at the origin."""
        self._closed = True
        if self.sid:
            self.link.close_session(self.sid)
