"""A Redis Cluster client whose circuit breaker opens per cluster node, not per cluster.

One master down must not send hits whose keys live on healthy masters to the origin.
redis-py routes every command to the node that owns its key's slot, in one step
(``RedisCluster._execute_command(node, ...)``); this client wraps that step:

1. a command for a node whose breaker is open fails at once with NodeUnavailable;
2. a connection error on a node is retried once on a fresh connection (redis-py has
   just dropped the node's idle connections), so a node that restarted costs nothing
   while one that is down opens its breaker after the second try;
3. a timeout opens the node's breaker at once (retrying a slow node doubles the wait);
4. the breaker stays open ``retry_after`` seconds; the other nodes keep serving.

Pipelines (the applier writing every shard) do not pass through that step and are not
held back by a breaker: each node runs its part, so shards on healthy masters keep
their purge state and sync leases current while one master is down. redis-py's own
cluster-level retries are off: on a connection error they re-ran a pipeline after
closing every connection of the client (``aclose()``), so one dead master broke the
commands in flight on the healthy ones.

A failover gives the slots to another node (another name, its own breaker): redis-py
refreshes its slot map on the command after a failure, so the new master answers from
then on.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from redis.asyncio.cluster import ClusterNode, ClusterPipeline, ClusterPubSub, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ConnectionError,
    MaxConnectionsError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TimeoutError,
)

__all__ = [
    "NODE_ERRORS",
    "ConnectionGlitch",
    "NodeBreakers",
    "NodeUnavailable",
    "ScopedCluster",
    "cluster_glitches",
]


class ConnectionGlitch(RedisError):
    """A connection of the cluster client was closed under a command (see cluster_glitches)."""


@contextlib.contextmanager
def cluster_glitches() -> Iterator[None]:
    """redis-py's cluster client fails with plain Python errors while its topology is being
    (re)built. They mean "this part of the cluster cannot be used right now", not a bug of
    ours, so they are mapped here, around the client's entry points, and nowhere else:

    - ``AttributeError`` ("'NoneType' object has no attribute 'writelines'") and
      ``RuntimeError`` ("unable to perform operation on TCPTransport ... handler is
      closed"): a connection closed under a command during a topology refresh;
    - ``KeyError``: a slot missing from the slot map, before the client is set up (the
      purge feed's first subscription did that) or after a refresh that found the slot
      uncovered: ``NodesManager.get_node_from_slot`` turns only IndexError/TypeError into
      the SlotNotCoveredError it means.
    """
    try:
        yield
    except KeyError as exc:
        raise SlotNotCoveredError(f"slot {exc} is not in the cluster's slot map") from exc
    except (AttributeError, RuntimeError) as exc:
        raise ConnectionGlitch(f"connection closed under a command: {exc}") from exc


# What a node's failure looks like from here: that node's connection failed, not the cluster.
NODE_ERRORS = (ConnectionError, TimeoutError, OSError, ConnectionGlitch)


class NodeUnavailable(RedisError):
    """One cluster node failed or its breaker is open; other nodes may still answer."""

    def __init__(self, node: str, cause: BaseException | None) -> None:
        what = f"{type(cause).__name__}: {cause}" if cause else "recent failure"
        super().__init__(f"redis cluster node {node} unavailable ({what})")
        self.node = node
        self.cause = cause  # None: refused by an open breaker, no new failure


class NodeBreakers:
    """When each cluster node (``host:port``) may be tried again."""

    def __init__(self, retry_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._retry_after = retry_after
        self._clock = clock
        self._open_until: dict[str, float] = {}

    def check(self, node: str) -> None:
        until = self._open_until.get(node)
        if until is None:
            return
        if self._clock() < until:
            raise NodeUnavailable(node, None)
        del self._open_until[node]

    def trip(self, node: str, cause: BaseException) -> NodeUnavailable:
        self._open_until[node] = self._clock() + self._retry_after
        return NodeUnavailable(node, cause)

    def open_nodes(self) -> list[str]:
        now = self._clock()
        return sorted(n for n, until in self._open_until.items() if now < until)


class ScopedCluster(RedisCluster):
    """redis-py's RedisCluster with a circuit breaker per node (see the module docstring)."""

    def __init__(self, *args: Any, retry_after: float = 1.0, **kwargs: Any) -> None:
        kwargs.setdefault("retry", Retry(NoBackoff(), 0))
        super().__init__(*args, **kwargs)
        self.breakers = NodeBreakers(retry_after)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        with cluster_glitches():  # routing: setting up, the slot map
            return await super().execute_command(*args, **kwargs)

    async def _execute_command(self, target_node: ClusterNode, *args: Any, **kwargs: Any) -> Any:
        name = target_node.name
        self.breakers.check(name)
        try:
            with cluster_glitches():
                return await super()._execute_command(target_node, *args, **kwargs)
        except MaxConnectionsError:
            raise  # this process's pool for the node is full: the node is fine
        except ConnectionError:
            pass  # maybe a connection the node closed (restart): one fresh try below
        except NODE_ERRORS as exc:
            raise self.breakers.trip(name, exc) from exc
        try:
            with cluster_glitches():
                return await super()._execute_command(target_node, *args, **kwargs)
        except MaxConnectionsError:
            raise
        except NODE_ERRORS as exc:
            raise self.breakers.trip(name, exc) from exc

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return _ScopedPipeline(self, transaction)  # type: ignore[abstract]  # as redis-py does

    def pubsub(
        self,
        node: ClusterNode | None = None,
        host: str | None = None,
        port: int | None = None,
        **kwargs: Any,
    ) -> ClusterPubSub:
        return _ScopedPubSub(self, node=node, host=host, port=port, **kwargs)


class _ScopedPipeline(ClusterPipeline):
    """A cluster pipeline whose glitches are mapped (its commands skip _execute_command)."""

    async def initialize(self) -> ClusterPipeline:
        with cluster_glitches():
            return await super().initialize()

    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        with cluster_glitches():
            return await super().execute(raise_on_error, allow_redirections)


class _ScopedPubSub(ClusterPubSub):
    """Cluster pub/sub whose glitches are mapped (it picks its node from the slot map)."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        with cluster_glitches():
            return await super().execute_command(*args, **kwargs)
