"""Prometheus metrics of one origin app, in its own registry; labels never carry SQL or DSNs."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from origin.pool import PoolStats

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

    def __init__(self, stats: Callable[[], Iterable[PoolStats]]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        families = {
            field: GaugeMetricFamily(f"{_PREFIX}_pool_{field}", doc, labels=["tenant"])
            for field, doc in self._GAUGES
        }
        for stat in self._stats():
            for field, family in families.items():
                family.add_metric([stat.tenant], float(getattr(stat, field)))
        return list(families.values())


class OriginMetrics:
    def __init__(self, pool_stats: Callable[[], Iterable[PoolStats]]) -> None:
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
        self.registry.register(_PoolCollector(pool_stats))

    def observe(self, tenant: str, kind: str, outcome: str, seconds: float) -> None:
        self.queries.labels(tenant, kind, outcome).inc()
        self.latency.labels(tenant, kind).observe(seconds)

    def count_coalesced(self, tenant: str) -> None:
        self.coalesced.labels(tenant).inc()

    def count_nondeterministic(self, tenant: str) -> None:
        self.nondeterministic.labels(tenant).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
