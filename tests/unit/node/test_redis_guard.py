"""Redis failures are mapped in one place (RedisGuard), and only Redis failures are.

A Redis that is down, slow or refusing becomes TierUnavailable and opens the breaker; a
bug of ours (a TypeError) is no Redis failure: it surfaces as ``internal`` with its
traceback in the log and leaves the breaker closed. No Redis server is needed: the
client's commands are replaced where the tier calls them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, SlotNotCoveredError
from redis.exceptions import TimeoutError as RedisTimeoutError
from structlog.testing import capture_logs

from cache_edge.common.errors import RedisUnavailable
from cache_edge.node import app as node_app
from cache_edge.node.auth import Principal
from cache_edge.node.ratelimit import RateLimiter
from cache_edge.node.read_path import QueryCache
from cache_edge.node.tiers.cluster import ConnectionGlitch, NodeUnavailable, cluster_glitches
from cache_edge.node.tiers.redis import RedisGuard, RedisTier, TierUnavailable
from cache_edge.server.config import RateLimit, parse_settings
from tests.conftest import API_KEY_A, make_settings_doc

NOWHERE = "redis://127.0.0.1:1/0"  # never connected to: every command is replaced


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def raising(exc: BaseException) -> Any:
    calls: list[object] = []

    async def command(*args: object, **kwargs: object) -> Any:
        calls.append(args)
        raise exc

    command.calls = calls  # type: ignore[attr-defined]
    return command


def tier_with(exc: BaseException) -> RedisTier:
    tier = RedisTier(NOWHERE, timeout=0.2, max_connections=2, retry_after=5.0)
    tier._redis.mget = raising(exc)
    return tier


@pytest.mark.parametrize(
    "failure",
    [
        RedisConnectionError("refused"),
        RedisTimeoutError("slow"),
        ConnectionResetError("reset by peer"),
        TimeoutError(),  # asyncio's
        ConnectionGlitch("handler is closed"),
    ],
)
async def test_a_redis_failure_is_tier_unavailable_and_opens_the_breaker(
    failure: BaseException,
) -> None:
    tier = tier_with(failure)
    with pytest.raises(TierUnavailable) as info:
        await tier.lookup("acme", "sig", ("t1",))
    assert isinstance(info.value, RedisUnavailable) and info.value.code == "redis_unavailable"
    assert info.value.__cause__ is failure and not info.value.refused
    assert not tier.available and tier.failures == 1
    with pytest.raises(TierUnavailable) as refused:
        await tier.lookup("acme", "sig", ("t1",))  # skipped: the breaker is open
    assert refused.value.refused and len(tier._redis.mget.calls) == 1
    await tier.close()


@pytest.mark.parametrize("bug", [TypeError("unhashable type: 'list'"), KeyError("k")])
async def test_a_programming_error_is_not_a_redis_failure(bug: BaseException) -> None:
    tier = tier_with(bug)
    with pytest.raises(type(bug)):
        await tier.lookup("acme", "sig", ("t1",))
    assert tier.available and tier.failures == 0
    await tier.close()


def test_scopes_decide_what_a_failure_opens() -> None:
    clock = Clock()
    guard = RedisGuard(1.0, clock=clock)
    with pytest.raises(TierUnavailable), guard.probe:
        raise RedisConnectionError("a probe failed")
    assert guard.available and guard.failures == 0  # a probe opens nothing
    with pytest.raises(TierUnavailable), guard.upkeep:
        raise RedisConnectionError("the applier's write failed")
    assert not guard.available and guard.failures == 1
    with guard.upkeep:
        pass  # upkeep still tries while the breaker is open
    with pytest.raises(TierUnavailable), guard.request:
        pass  # a request does not
    clock.now += 1.0
    with guard.request:
        pass


def test_on_a_cluster_one_nodes_failure_leaves_the_others_alone() -> None:
    guard = RedisGuard(1.0, scoped=True, clock=Clock())
    with pytest.raises(TierUnavailable) as refused, guard.request:
        raise NodeUnavailable("10.0.0.1:7000", None)  # that node's own breaker refused
    assert refused.value.refused and guard.failures == 0 and guard.available
    with pytest.raises(TierUnavailable), guard.request:
        raise NodeUnavailable("10.0.0.1:7000", RedisConnectionError("down"))
    assert guard.failures == 1 and guard.available  # the node's breaker, not the tier's
    with pytest.raises(TierUnavailable), guard.upkeep:
        raise ConnectionGlitch("in a pipeline")
    assert guard.failures == 2 and guard.available
    with pytest.raises(TierUnavailable), guard.request:
        raise SlotNotCoveredError("slot 7 is not in the cluster's slot map")
    assert not guard.available  # the cluster as a whole cannot route


def test_the_cluster_clients_glitches_are_mapped_where_they_arise() -> None:
    with pytest.raises(SlotNotCoveredError), cluster_glitches():
        {}[1234]
    with pytest.raises(ConnectionGlitch), cluster_glitches():
        None.writelines  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(ConnectionGlitch), cluster_glitches():
        raise RuntimeError("unable to perform operation on TCPTransport; the handler is closed")
    with pytest.raises(ValueError), cluster_glitches():
        raise ValueError("a bug stays a bug")
    assert issubclass(ConnectionGlitch, RedisError)


async def test_the_rate_limiter_uses_the_same_guard() -> None:
    clock = Clock()
    limiter = RateLimiter(NOWHERE, timeout=0.2, retry_after=1.0, clock=clock)
    limiter._take = raising(RedisConnectionError("refused"))
    who, limit = Principal("acme", "k1"), RateLimit(rate=10.0, burst=5)
    with capture_logs() as logs:
        await limiter.check(who, limit)  # local bucket
        await limiter.check(who, limit)  # still local: Redis is skipped, not tried
    assert limiter.fallbacks == 2 and len(limiter._take.calls) == 1
    assert [e["event"] for e in logs] == ["rate_limit_redis_unavailable"]
    clock.now += 1.0
    limiter._take = raising(TypeError("a bug"))
    with pytest.raises(TypeError):
        await limiter.check(who, limit)
    await limiter.close()


# ------------------------------------------------------------- through the node


class NoOrigin:
    async def query(self, *args: object, **kwargs: object) -> Any:
        raise AssertionError("a request that fails on Redis never reaches the origin")


@pytest.fixture
async def node(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[TestClient[Any, Any], Any]]:
    """The real node app and handlers; its resources are a tier that reaches no Redis and
    an origin that must not be called (rate limits are off: the limiter never runs)."""
    settings = parse_settings(
        make_settings_doc("postgresql://x@127.0.0.1:1/a", "postgresql://x@127.0.0.1:1/b")
    )

    async def resources(app: web.Application) -> AsyncIterator[None]:
        tier = RedisTier(NOWHERE, timeout=0.2, max_connections=2, retry_after=5.0)
        limiter = RateLimiter(NOWHERE, timeout=0.2, retry_after=5.0)
        app[node_app.TIER] = tier
        app[node_app.LIMITER] = limiter
        app[node_app.CACHE] = QueryCache(settings.node, tier, NoOrigin())
        yield
        await asyncio.gather(tier.close(), limiter.close())

    monkeypatch.setattr(node_app, "_resources", resources)
    app = node_app.create_node_app(settings)
    async with TestClient(TestServer(app)) as client:
        yield client, app


async def test_a_tier_bug_is_a_500_internal_with_its_traceback_and_no_open_breaker(
    node: tuple[TestClient[Any, Any], Any],
) -> None:
    client, app = node
    tier = app[node_app.TIER]
    tier._redis.evalsha = raising(TypeError("unhashable type: 'list'"))
    body = {"sql": "SELECT 1", "cacheStrategy": {"ttl": 60}}
    with capture_logs() as logs:
        resp = await client.post(
            "/v1/query",
            json=body,
            headers={"Authorization": f"Bearer {API_KEY_A}", "X-Request-Id": "rid-1"},
        )
    assert resp.status == 500
    error = (await resp.json())["error"]
    assert error == {
        "code": "internal",
        "message": "internal error; see the node's log",
        "requestId": "rid-1",
    }
    assert "unhashable" not in await resp.text()  # details only in the log
    [logged] = [e for e in logs if e["event"] == "internal_error"]
    assert logged["request_id"] == "rid-1" and logged["log_level"] == "error"
    assert isinstance(logged["exc_info"], TypeError)
    assert logged["exc_info"].__traceback__ is not None  # rendered as "exception" in JSON logs
    assert not [e for e in logs if e["event"] == "cache_tier_unavailable"]
    assert tier.available and tier.failures == 0  # Redis is not to blame
    metrics = generate_latest(app[node_app.METRICS].registry).decode()
    assert 'cache_edge_node_errors_total{code="internal"} 1.0' in metrics
    assert "cache_edge_node_redis_errors_total 0.0" in metrics
