"""Prometheus metrics of one origin app, in its own registry; labels never carry SQL or DSNs."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from origin.core.pool import PoolStats

__all__ = ["OriginMetrics"]

_PREFIX = "cache_edge_origin"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _PoolCollector:
    """Reads pool gauges at scrape time, so they are never stale and cost nothing per request."""

    _GAUGES = (
        ("in_use", "Connections lent out right now."),
        ("idle", "Open connections nobody holds."),
        ("waiting", "Requests queued for a connection."),
        ("size", "Open connections."),
        ("max_size", "Configured pool size."),
    )

    def __init__(self, stats: Callable[[], Iterable[PoolStats]], name: str = "pool") -> None:
        self._stats = stats
        self._name = name

    def collect(self) -> Iterable[Metric]:
        families = {
            field: GaugeMetricFamily(f"{_PREFIX}_{self._name}_{field}", doc, labels=["tenant"])
            for field, doc in self._GAUGES
        }
        for stat in self._stats():
            for field, family in families.items():
                family.add_metric([stat.tenant], float(getattr(stat, field)))
        return list(families.values())


class CaptureStatus(Protocol):
    tenant: str
    state: str
    lag_bytes: int
    transactions: int
    resets: int


class _CaptureCollector:
    """WAL capture state per tenant (automatic invalidation), read at scrape time."""

    def __init__(self, captures: Callable[[], Iterable[CaptureStatus]]) -> None:
        self._captures = captures

    def collect(self) -> Iterable[Metric]:
        lag = GaugeMetricFamily(
            f"{_PREFIX}_slot_lag_bytes",
            "WAL retained for the tenant's replication slot and not yet confirmed (only the "
            "replica reading the slot reports it). Alert well below capture_max_lag_mb.",
            labels=["tenant"],
        )
        owner = GaugeMetricFamily(
            f"{_PREFIX}_capture_owner",
            "1 if this replica reads the tenant's slot; 0 standby; -1 not set up or failing.",
            labels=["tenant"],
        )
        txns = CounterMetricFamily(
            f"{_PREFIX}_captured_transactions",
            "Committed transactions that wrote tables, read from the WAL by this replica.",
            labels=["tenant"],
        )
        resets = CounterMetricFamily(
            f"{_PREFIX}_capture_resets",
            "Times the slot was lost, missing or too far behind and the tenant was purged.",
            labels=["tenant"],
        )
        states = {"owner": 1.0, "standby": 0.0, "starting": 0.0}
        for c in self._captures():
            if c.state == "owner":
                lag.add_metric([c.tenant], float(c.lag_bytes))
            owner.add_metric([c.tenant], states.get(c.state, -1.0))
            txns.add_metric([c.tenant], float(c.transactions))
            resets.add_metric([c.tenant], float(c.resets))
        return [lag, owner, txns, resets]


class OriginMetrics:
    def __init__(
        self,
        pool_stats: Callable[[], Iterable[PoolStats]],
        captures: Callable[[], Iterable[CaptureStatus]] = tuple,
    ) -> None:
        self.registry = CollectorRegistry()
        self.queries = Counter(
            f"{_PREFIX}_queries",
            "Queries and transactions by tenant, kind (query|transaction) and outcome.",
            ["tenant", "kind", "outcome"],
            registry=self.registry,
        )
        self.errors = Counter(
            f"{_PREFIX}_errors",
            "Error responses by stable error code.",
            ["code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{_PREFIX}_query_duration_seconds",
            "Time to answer a query or transaction request, queueing for a connection included.",
            ["tenant", "kind"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.coalesced = Counter(
            f"{_PREFIX}_coalesced",
            "Read-only queries answered by joining an identical query already in flight.",
            ["tenant"],
            registry=self.registry,
        )
        self.nondeterministic = Counter(
            f"{_PREFIX}_nondeterministic_queries",
            "Cached queries whose result depends on more than table contents (clock, "
            "randomness, session, volatile functions): reported in info.warnings.",
            ["tenant"],
            registry=self.registry,
        )
        self.capture_lag = Histogram(
            f"{_PREFIX}_capture_lag_seconds",
            "Commit (database clock) to purge recorded (origin clock), automatic invalidation.",
            ["tenant"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_PoolCollector(pool_stats))
        self.registry.register(_CaptureCollector(captures))
        # The PostgreSQL door (origin.wire): its raw pools, leases and what clients saw.
        self.wire_transactions = Counter(
            f"{_PREFIX}_wire_transactions",
            "PostgreSQL-door leases of a database connection (one per transaction pooled).",
            ["tenant"],
            registry=self.registry,
        )
        self.wire_pinned = Counter(
            f"{_PREFIX}_wire_pinned_sessions",
            "PostgreSQL-door sessions pinned to one database connection (temporary tables, "
            "session advisory locks, LISTEN, PREPARE, WITH HOLD cursors).",
            ["tenant"],
            registry=self.registry,
        )
        self.wire_errors = Counter(
            f"{_PREFIX}_wire_errors",
            "ErrorResponses PostgreSQL-door clients received, by SQLSTATE.",
            ["tenant", "sqlstate"],
            registry=self.registry,
        )

    def watch_wire_pools(self, stats: Callable[[], Iterable[PoolStats]]) -> None:
        self.registry.register(_PoolCollector(stats, "wire_pool"))

    def observe(self, tenant: str, kind: str, outcome: str, seconds: float) -> None:
        self.queries.labels(tenant, kind, outcome).inc()
        self.latency.labels(tenant, kind).observe(seconds)

    def count_coalesced(self, tenant: str) -> None:
        self.coalesced.labels(tenant).inc()

    def count_nondeterministic(self, tenant: str) -> None:
        self.nondeterministic.labels(tenant).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
