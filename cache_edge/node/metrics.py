"""Prometheus metrics of a regional node, in a registry owned by one app."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["NodeMetrics"]


class NodeMetrics:
    def __init__(self, region: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"region": region}
        self.requests = Counter(
            "cache_edge_node_requests",
            "Queries answered, by cache status",
            ["cache_status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "cache_edge_node_errors", "Error answers by code", ["code"], registry=self.registry
        )
        self.latency = Histogram(
            "cache_edge_node_request_seconds",
            "Request latency by cache status",
            ["cache_status"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=self.registry,
        )
        self.redis_errors = Counter(
            "cache_edge_node_redis_errors",
            "Requests that bypassed Redis because it failed",
            registry=self.registry,
        )
        self.origin_calls = Gauge(
            "cache_edge_node_origin_calls",
            "Queries this process sent to the origin",
            registry=self.registry,
        )
        self.coalesced = Gauge(
            "cache_edge_node_coalesced",
            "Misses answered by another fetch (scope=process|region)",
            ["scope"],
            registry=self.registry,
        )
        self.resyncs = Gauge(
            "cache_edge_node_invalidation_resyncs",
            "Times this process's applier found the region's purge state lost (flush, "
            "eviction, failover), trimmed past, or from another purge log, and resynced",
            registry=self.registry,
        )
        self.unchecked = Gauge(
            "cache_edge_node_unchecked_fetches",
            "Fetched rows the region could not check against its purge state, so not "
            "stored (reason=no_sync_lease) or fetched again for a later request "
            "(reason=late_joiner)",
            ["reason"],
            registry=self.registry,
        )
        self.refreshes = Gauge(
            "cache_edge_node_swr_refreshes", "Background refreshes started", registry=self.registry
        )
        self.memory_hits = Gauge(
            "cache_edge_node_memory_hits",
            "Hits answered from the in-process hot tier (no Redis round trip)",
            registry=self.registry,
        )
        self.memory_bytes = Gauge(
            "cache_edge_node_memory_bytes", "Bytes held by the hot tier", registry=self.registry
        )
        self.memory_entries = Gauge(
            "cache_edge_node_memory_entries", "Entries in the hot tier", registry=self.registry
        )
        self.stream_subscribers = Gauge(
            "cache_edge_node_stream_subscribers",
            "Open change-stream subscriptions of this process",
            ["tenant"],
            registry=self.registry,
        )
        self.stream_events = Gauge(
            "cache_edge_node_stream_events_received",
            "Change events this process received from the origin (one feed per tenant)",
            ["tenant"],
            registry=self.registry,
        )
        self.stream_dropped = Gauge(
            "cache_edge_node_stream_subscribers_dropped",
            "Subscribers cut off for falling behind (subscriber_too_slow)",
            registry=self.registry,
        )
        # The PostgreSQL door (cache_edge.node.pgdoor), read from its counters at scrape time.
        self.pg_connections = Gauge(
            "cache_edge_node_pg_connections",
            "Open PostgreSQL-door client connections",
            registry=self.registry,
        )
        self.pg_accepted = Gauge(
            "cache_edge_node_pg_connections_accepted",
            "PostgreSQL-door connections accepted since start",
            registry=self.registry,
        )
        self.pg_logins_failed = Gauge(
            "cache_edge_node_pg_logins_failed",
            "PostgreSQL-door logins refused (wrong key or tenant) since start",
            registry=self.registry,
        )
        self.pg_cancels = Gauge(
            "cache_edge_node_pg_cancels",
            "CancelRequests forwarded to the origin since start",
            registry=self.registry,
        )
        self.pg_link_up = Gauge(
            "cache_edge_node_pg_link_up",
            "1 while this process's link to the origin for PostgreSQL-door sessions is open",
            registry=self.registry,
        )
        self.door_answers = Counter(
            "cache_edge_node_door_answers",
            "Statements answered through a door, by door (postgres|sql), tenant and cache "
            "status (none|miss|ttl|swr|stale)",
            ["door", "tenant", "status"],
            registry=self.registry,
        )
        self._door_children: dict[tuple[str, str, str], Any] = {}
        self.pg_unmodelled = Counter(
            "cache_edge_node_pg_unmodelled_sessions",
            "Hinted PostgreSQL-door reads run uncached because their session changed a "
            "setting the node cannot read (so the cache key could not include it)",
            ["tenant"],
            registry=self.registry,
        )
        self.info = Gauge(
            "cache_edge_node_info", "Node identity", ["region"], registry=self.registry
        )
        self.info.labels(**labels).set(1)
        # labels() costs a lock and a dict lookup per call: bind each status once.
        self._answered: dict[str, tuple[Any, Any]] = {}

    def answered(self, status: str, seconds: float) -> None:
        """Count one answer with its cache status and latency (the hit path's metrics)."""
        children = self._answered.get(status)
        if children is None:
            children = (self.requests.labels(status), self.latency.labels(status))
            self._answered[status] = children
        children[0].inc()
        children[1].observe(seconds)

    def door_answer(self, door: str, tenant: str, status: str) -> None:
        """Count one door answer. The labelled child is looked up once per label set:
        ``labels()`` takes a lock and builds a key each time, a few percent of a hit."""
        key = (door, tenant, status)
        child = self._door_children.get(key)
        if child is None:
            child = self._door_children[key] = self.door_answers.labels(door, tenant, status)
        child.inc()
