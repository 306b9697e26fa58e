"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from cache_edge.devtools.services import (
    Service,
    _start_and_wait,
    _start_private_postgres,
    pg_reachable,
)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session, as an application would hold one."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


@pytest.fixture
async def own_postgres(tmp_path: Path) -> AsyncIterator[Service]:
    """A PostgreSQL this test may restart: never the machine's (or another test's) server."""
    service = await _start_private_postgres(tmp_path, tmp_path / "logs")
    try:
        yield service
    finally:
        assert service.child is not None
        await service.child.stop()


async def restart_postgres(service: Service) -> None:
    """Stop and start a private PostgreSQL, keeping its data (deleted at the final stop)."""
    child = service.child
    assert child is not None
    cleanup, child.cleanup = child.cleanup, None
    await child.stop()
    child.cleanup = cleanup
    await _start_and_wait(child, pg_reachable, service.url, 30.0)
