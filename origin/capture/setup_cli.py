"""``cache-edge origin setup-auto-invalidation`` / ``remove-auto-invalidation``."""

from __future__ import annotations

import argparse
import asyncio
import sys

import asyncpg

from cache_edge.common.errors import CaptureUnavailable
from cache_edge.server.config import Settings
from origin.capture.setup import remove, setup
from origin.core.databases import database_key

__all__ = ["run_setup_command"]


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    tenant = settings.tenant(args.tenant)
    if tenant is None:
        known = ", ".join(t.id for t in settings.tenants) or "none"
        print(
            f"cache-edge: no tenant {args.tenant!r} in the config (known: {known})", file=sys.stderr
        )
        return 2
    # Setup needs a superuser; the tenant's own DSN may be a less privileged role.
    dsn = args.admin_database_url or tenant.database_url
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"cache-edge: cannot connect to {tenant.safe_dsn}: {exc}", file=sys.stderr)
        return 1
    try:
        if args.action == "remove-auto-invalidation":
            # One slot serves every tenant of a database: keep it while others read it.
            users = [
                t.id
                for t in settings.tenants
                if t.id != tenant.id
                and t.captured
                and database_key(t.database_url) == database_key(tenant.database_url)
            ]
            slot = await remove(conn, tenant.id, still_used_by=bool(users))
            if users:
                print(
                    f"automatic invalidation of tenant {tenant.id!r} removed; the database's "
                    f"slot {slot} stays: tenants {', '.join(users)} of the same database use it"
                )
            else:
                print(
                    f"removed automatic invalidation of tenant {tenant.id!r} (slot {slot} dropped)"
                )
            if tenant.auto_invalidation:
                print("now set auto_invalidation = false for it in the config and reload")
            return 0
        report = await setup(conn, tenant.id)
    except CaptureUnavailable as exc:
        print(f"cache-edge: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await conn.close()
    state = "created" if report.created_slot else "already present"
    print(f"automatic invalidation is set up for tenant {tenant.id!r}")
    print(f"  publication cache_edge, DDL log and event triggers: ok; slot {report.slot}: {state}")
    print(f"  max_slot_wal_keep_size = {report.max_slot_wal_keep_size}")
    for line in report.advice:
        print(f"  advice: {line}")
    if not tenant.auto_invalidation:
        print("now set auto_invalidation = true for this tenant in the config and restart origins")
    return 0


def run_setup_command(settings: Settings, args: argparse.Namespace) -> int:
    if not args.tenant:
        print(f"cache-edge: {args.action} needs --tenant ID", file=sys.stderr)
        return 2
    return asyncio.run(_run(settings, args))
