"""Which settings a running server takes from a reloaded config file, and which wait for a restart.

Reloaded without a restart (credentials and limits, which must change quickly, and the
PostgreSQL door's cache rules, which docs/postgres-protocol.md promises are reloaded):

* node secrets (``node_secret``, ``node_secrets``, ``node_secret_file`` and its contents),
* every tenant's ``api_keys_sha256``, ``rate_limit`` and ``max_concurrency``,
* every tenant's ``cache_all_reads`` and ``cache_rules``,
* the global ``[rate_limit]`` and ``origin.max_concurrency``,
* the TLS certificate and key (same paths, new contents; see :mod:`cache_edge.server.tls`).

Everything else needs a restart: listen addresses, TLS file paths, Redis and
origin URLs, tenants' database URLs and pool sizes, timeouts, ``[limits]`` and
logging. A reload that changes such keys applies the reloadable part and names
the rest in its log line (names only, never values: a DSN carries a password).

Tenants follow one rule: a reload may take access away but never grants it to a
tenant the process is not set up for. A tenant removed from the file loses its
API keys at once; a new tenant waits for a restart (it needs a pool at the origin
and a purge applier at the nodes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import Any

from cache_edge.server.config import Settings, TenantConfig

__all__ = ["merge_reloadable"]

_TENANT_RELOADABLE = (
    "api_keys_sha256",
    "rate_limit",
    "max_concurrency",
    "cache_all_reads",
    "cache_rules",
)
_ORIGIN_RELOADABLE = ("max_concurrency",)


def _changed_fields(old: Any, new: Any, where: str, skip: tuple[str, ...] = ()) -> list[str]:
    return [
        f"{where}{f.name}"
        for f in dataclasses.fields(old)
        if f.name not in skip and getattr(old, f.name) != getattr(new, f.name)
    ]


def _merge_tenants(
    running: tuple[TenantConfig, ...], loaded: tuple[TenantConfig, ...]
) -> tuple[tuple[TenantConfig, ...], list[str]]:
    by_id = {t.id: t for t in loaded}
    merged: list[TenantConfig] = []
    restart: list[str] = []
    for old in running:
        new = by_id.pop(old.id, None)
        if new is None:
            # Revocation is always safe to apply now: the tenant keeps no key.
            merged.append(replace(old, api_keys_sha256=()))
            restart.append(f"tenants[{old.id}] (removed; its API keys are revoked now)")
            continue
        if new == old:
            # The common case (a reload changes a few of 10,000 tenants): one comparison
            # instead of a copy and a field-by-field diff.
            merged.append(old)
            continue
        merged.append(replace(old, **{name: getattr(new, name) for name in _TENANT_RELOADABLE}))
        restart += _changed_fields(old, new, f"tenants[{old.id}].", _TENANT_RELOADABLE)
    restart += [f"tenants[{t.id}] (added)" for t in by_id.values()]
    return tuple(merged), restart


def merge_reloadable(running: Settings, loaded: Settings) -> tuple[Settings, list[str]]:
    """The settings to run with now, and the dotted names of changes that need a restart."""
    tenants, restart = _merge_tenants(running.tenants, loaded.tenants)
    restart += _changed_fields(running.origin, loaded.origin, "origin.", _ORIGIN_RELOADABLE)
    restart += _changed_fields(running.node, loaded.node, "node.")
    restart += _changed_fields(running.limits, loaded.limits, "limits.")
    for name in ("log_level", "log_format"):
        if getattr(running, name) != getattr(loaded, name):
            restart.append(name)
    origin = replace(
        running.origin, **{name: getattr(loaded.origin, name) for name in _ORIGIN_RELOADABLE}
    )
    effective = replace(
        running,
        node_secret=loaded.node_secret,
        old_node_secrets=loaded.old_node_secrets,
        node_secret_file=loaded.node_secret_file,
        rate_limit=loaded.rate_limit,
        tenants=tenants,
        origin=origin,
    )
    return effective, restart
