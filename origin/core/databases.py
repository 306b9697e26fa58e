"""Which configured tenants share one PostgreSQL database, and so one WAL capture.

Two tenants are on the same database when their ``database_url`` names the same host,
port and database (user, password and options may differ). A database's replication
slot, its capture and the advisory lock that elects its reader belong to the database,
not to a tenant: one slot serves every tenant of the database that opted in.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qs, unquote, urlsplit

from cache_edge.server.config import TenantConfig

__all__ = ["by_database", "database_key"]


def database_key(dsn: str) -> str:
    """``host:port/database`` of a PostgreSQL URL, spelled one way."""
    parts = urlsplit(dsn)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    host = (query.get("host") or parts.hostname or "localhost").lower()
    try:
        port = int(query.get("port") or parts.port or 5432)
    except ValueError:
        port = 5432
    database = (
        unquote(parts.path.lstrip("/")) or query.get("dbname") or unquote(parts.username or "")
    )
    return f"{host}:{port}/{database}"


def by_database(tenants: Iterable[TenantConfig]) -> list[tuple[TenantConfig, ...]]:
    """Tenants grouped by database, in configuration order (the first one's URL connects)."""
    groups: dict[str, list[TenantConfig]] = {}
    for tenant in tenants:
        groups.setdefault(database_key(tenant.database_url), []).append(tenant)
    return [tuple(group) for group in groups.values()]
