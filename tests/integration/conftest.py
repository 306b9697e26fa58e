"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from cache_edge.devtools.harness import Child, Children, free_port, wait_port
from cache_edge.devtools.services import (
    Service,
    _start_and_wait,
    _start_private_postgres,
    pg_reachable,
    redis_child,
)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session, as an application would hold one."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[int], str]]:
    """A redis-server of the test module's own; ``own_redis(n)`` is the URL of its
    database n. Test processes running at the same time lease the same databases of the
    shared Redis (and flush them, and keep purge state there for the same tenant ids)."""
    from tests.integration.door_helpers import redis_server

    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
async def own_postgres(tmp_path: Path) -> AsyncIterator[Service]:
    """A PostgreSQL this test may restart: never the machine's (or another test's) server."""
    service = await _start_private_postgres(tmp_path, tmp_path / "logs")
    try:
        yield service
    finally:
        assert service.child is not None
        await service.child.astop()


async def restart_postgres(service: Service) -> None:
    """Stop and start a private PostgreSQL, keeping its data (deleted at the final stop)."""
    child = service.child
    assert child is not None
    cleanup, child.cleanup = child.cleanup, None
    await child.astop()
    child.cleanup = cleanup
    await _start_and_wait(child, pg_reachable, service.url, 30.0)


@dataclass
class PrivateRedis:
    """A redis-server of one test's own, which it may stop, kill and start again."""

    child: Child
    port: int
    url: str

    def start(self) -> PrivateRedis:
        self.child.start()
        wait_port(self.port, self.child, 10.0)
        return self

    def stop(self, sig: int | None = None) -> None:
        self.child.stop(sig=sig)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[..., PrivateRedis]]:
    """``private_redis(*options, started=True, scheme="redis")``: a redis-server on a free
    port (``options`` are added to its command line; ``{port}`` in them is its port),
    stopped after the test."""
    children = Children()

    def make(*options: str, started: bool = True, scheme: str = "redis") -> PrivateRedis:
        port = free_port()
        n = sum(1 for _ in children)
        opts = [o.format(port=port) for o in options]
        child = children.add(
            redis_child(port, tmp_path / f"redis-{n}", tmp_path / f"redis-{n}.log", *opts)
        )
        server = PrivateRedis(child, port, f"{scheme}://127.0.0.1:{port}/0")
        return server.start() if started else server

    try:
        yield make
    finally:
        children.stop_all()
