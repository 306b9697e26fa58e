"""The SDK loads and works without the server stack (a serverless function's cold start)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

import cache_edge.client
from cache_edge.devtools.harness import free_port
from tests.unit.client.fake_node import API_KEY, Seen, running_fake_node

SERVER_ONLY = ["asyncpg", "redis", "prometheus_client", "structlog", "uvloop"]

# Setting sys.modules[name] = None makes any `import name` raise ImportError, as if the
# package were not installed at all.
BLOCK = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in SERVER_ONLY)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[str, Seen]]:
    with running_fake_node() as running:
        yield running


def test_blocking_the_server_modules_really_blocks_them() -> None:
    done = run_python("import asyncpg")
    assert done.returncode != 0 and "ModuleNotFoundError: import of asyncpg halted" in done.stderr


def test_sdk_imports_and_queries_without_server_dependencies(node: tuple[str, Seen]) -> None:
    url, _ = node
    done = run_python(
        f"""
        import asyncio
        from decimal import Decimal
        import cache_edge.client as sdk

        with sdk.Client({url!r}, {API_KEY!r}) as db:
            assert db.fetchval("echo", Decimal("1.50")) == Decimal("1.50")

        async def main():
            async with sdk.AsyncClient({url!r}, {API_KEY!r}) as db:
                rows = await db.fetch("echo", 1, "x", cache=sdk.CacheStrategy(ttl=5))
                return rows[0]["c1"], rows.info.cache_status

        assert asyncio.run(main()) == ("x", "miss")
        loaded = sorted(m for m in {SERVER_ONLY!r} if sys.modules.get(m) is not None)
        print("loaded:", loaded)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "loaded: []" in done.stdout


def test_blocking_client_does_not_import_aiohttp() -> None:
    # The whole blocking stream path runs (connect, fail, back off, give up) before the check.
    done = run_python(
        f"""
        import cache_edge.client
        from cache_edge.common.errors import OriginUnavailable

        db = cache_edge.client.Client("http://127.0.0.1:{free_port()}", "k")
        backoff = cache_edge.client.Backoff(initial=0.01, maximum=0.02, give_up_after=0.05)
        try:
            next(db.stream(["public.t"], backoff=backoff))
        except OriginUnavailable as exc:
            assert "cannot reach" in exc.message, exc
        else:
            raise AssertionError("a stream from no node yielded an event")
        print("aiohttp" in sys.modules)
        cache_edge.client.AsyncClient
        print("aiohttp" in sys.modules)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]


def test_public_names() -> None:
    assert sorted(cache_edge.client.__all__) == [
        "AsyncClient",
        "Backoff",
        "CacheEdgeError",
        "CacheStrategy",
        "ChangeEvent",
        "Client",
        "Column",
        "Info",
        "InvalidationResult",
        "OriginUnavailable",
        "QueryError",
        "Result",
        "Row",
        "Rows",
        "Statement",
    ]
    for name in cache_edge.client.__all__:
        assert getattr(cache_edge.client, name) is not None
    with pytest.raises(AttributeError):
        _ = cache_edge.client.Nope
