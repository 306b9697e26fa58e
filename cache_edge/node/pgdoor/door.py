"""The PostgreSQL door's listener: accepts connections, runs their startup and login at the
node, and hands each authenticated session to the origin link.

A client's connect costs no origin round trip once the node has seen the same tenant and
startup settings before: the ParameterStatus PostgreSQL would send is cached per tenant
and settings (the first time, the origin applies the settings on a pooled connection and
reports them, which also rejects an invalid setting as PostgreSQL would at startup).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import secrets
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cache_edge.node.auth import ApiKeys
from cache_edge.node.pgdoor.hints import HintError, SessionHints
from cache_edge.node.pgdoor.link import LinkDown, OriginLink
from cache_edge.node.pgdoor.login import authenticate
from cache_edge.node.pgdoor.session import ClientSession, DoorCache
from cache_edge.node.pgdoor.startup import Cancel, ClientStream, Refused, negotiate
from cache_edge.pgwire.messages import (
    auth_ok,
    backend_key_data,
    error_response,
    parameter_status,
    ready_for_query,
)
from cache_edge.server.config import Settings
from cache_edge.server.logs import get_logger

__all__ = ["DoorStats", "PgDoor"]

log = get_logger("cache_edge.node.pgdoor")

_DESCRIBED_MAX = 1024


@dataclass(slots=True)
class DoorStats:
    connections: int = 0  # open client connections
    accepted: int = 0
    logins_failed: int = 0
    cancels: int = 0


class PgDoor:
    def __init__(
        self,
        settings: Callable[[], Settings],
        keys: ApiKeys,
        link: OriginLink,
        tls: ssl.SSLContext | None,
        cache: DoorCache | None = None,
    ) -> None:
        self._settings = settings
        self._keys = keys
        self._link = link
        self._cache = cache
        self._tls = tls
        self._server: asyncio.Server | None = None
        self._described: OrderedDict[tuple[str, tuple[tuple[str, str], ...]], list[list[str]]] = (
            OrderedDict()
        )
        self._clients: set[asyncio.Task[None]] = set()
        self.stats = DoorStats()

    @property
    def link_up(self) -> bool:
        return self._link.connected

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def start(self, host: str, port: int, reuse_port: bool, backlog: int) -> None:
        self._server = await asyncio.start_server(
            self._accept, host, port, reuse_port=reuse_port or None, backlog=backlog
        )
        log.info("pg_listening", listen=f"{host}:{port}", tls=self._tls is not None)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        await self._link.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        self.stats.connections += 1
        self.stats.accepted += 1
        try:
            await self._serve(ClientStream(reader, writer))
        finally:
            self.stats.connections -= 1
            self._clients.discard(task)
            writer.close()

    async def _serve(self, stream: ClientStream) -> None:
        settings = self._settings()
        node = settings.node
        sock = stream.writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.monotonic()
        tenant_id = ""
        session: ClientSession | None = None
        try:
            async with asyncio.timeout(node.pg_startup_timeout):
                first = await negotiate(stream, self._tls)
                if isinstance(first, Cancel):
                    self.stats.cancels += 1
                    await self._link.cancel(first.pid, first.secret)
                    return
                tenant = settings.tenant(first.user)
                try:
                    # Every node of the fleet derives the same decoy salts (see pgwire.scram).
                    decoy = hashlib.sha256(b"scram-decoy\0" + settings.node_secret.encode())
                    tenant = await authenticate(
                        stream, first, tenant, self._keys, _loopback(stream), decoy.digest()
                    )
                except Refused:
                    self.stats.logins_failed += 1
                    raise
                tenant_id = tenant.id
                if first.database != tenant.database_name:
                    raise Refused(
                        error_response(
                            "3D000", f'database "{first.database}" does not exist', "FATAL"
                        )
                    )
                hints = _startup_hints(first.settings)
                key = (secrets.randbits(31) or 1, secrets.randbits(32))
                session = ClientSession(
                    stream,
                    self._link,
                    node.pg_max_message_bytes,
                    node.pg_startup_timeout,
                    self._cache,
                )
                session.hints = hints
                cache_key = (tenant.id, tuple(sorted(first.settings.items())))
                status = self._described.get(cache_key)
                answer = await session.open(tenant.id, first.settings, key, status is None)
                if status is None:
                    if "error" in answer:
                        raise Refused(answer["error"])
                    status = [list(p) for p in answer["status"]]
                    self._described[cache_key] = status
                    if len(self._described) > _DESCRIBED_MAX:
                        self._described.popitem(last=False)
            hello = auth_ok() + b"".join(parameter_status(n, v) for n, v in status)
            stream.writer.write(hello + backend_key_data(*key) + ready_for_query(b"I"))
            log.info(
                "pg_connection",
                tenant=tenant_id,
                application=first.application_name,
                tls=stream.tls,
                setup_ms=round((time.monotonic() - started) * 1000, 2),
            )
            await session.relay()
        except Refused as refused:
            if refused.response:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    stream.writer.write(refused.response)
        except LinkDown as exc:
            with contextlib.suppress(ConnectionError, RuntimeError):
                stream.writer.write(error_response("08006", str(exc), "FATAL"))
        except (TimeoutError, ConnectionError, OSError, ssl.SSLError):
            pass
        finally:
            if session is not None:
                session.end()
            with contextlib.suppress(ConnectionError, RuntimeError, OSError):
                await asyncio.wait_for(stream.writer.drain(), 1.0)


def _startup_hints(settings: dict[str, str]) -> SessionHints:
    """``options=-c cache_edge.ttl=60``: the session's cache defaults, as ``SET`` makes
    them. Taken out of ``settings``: the node owns them, the database never sees them. An
    invalid one refuses the connection, as PostgreSQL refuses a bad startup setting."""
    hints = SessionHints()
    for name in [n for n in settings if n.lower().startswith("cache_edge.")]:
        value = settings.pop(name)
        try:
            hints.set(name.lower()[len("cache_edge.") :], value)
        except HintError as exc:
            state = "42704" if "unrecognized" in str(exc) else "22023"
            raise Refused(error_response(state, str(exc), "FATAL")) from None
    return hints


def _loopback(stream: ClientStream) -> bool:
    peer = stream.writer.get_extra_info("peername")
    if not isinstance(peer, tuple):
        return True  # a Unix socket: only local processes can reach it
    try:
        return ipaddress.ip_address(peer[0]).is_loopback
    except ValueError:
        return False
