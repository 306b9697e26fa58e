"""The demo database of ``cache-edge dev``: ``cache_edge_demo`` with a seeded ``products`` table."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from cache_edge.devtools.services import ServiceError
from cache_edge.server.config import redact_dsn

__all__ = ["DEMO_DB", "dsn_with_database", "ensure_demo_database"]

DEMO_DB = "cache_edge_demo"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    id         int PRIMARY KEY,
    name       text NOT NULL,
    price      numeric(10, 2) NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
)
"""
# Deterministic, so every developer's demo answers the same queries with the same rows.
_SEED = """
INSERT INTO products (id, name, price, updated_at)
SELECT i,
       (ARRAY['Red','Blue','Green','Small','Large','Vintage','Smart','Quiet'])[1 + i % 8]
         || ' ' ||
       (ARRAY['Mug','Lamp','Chair','Kettle','Desk','Clock','Shelf','Teapot','Stool','Vase'])[
         1 + (i / 8) % 10],
       round((i * 7 % 97 + 1.99)::numeric, 2),
       timestamptz '2024-01-01 00:00:00+00' + i * interval '1 hour'
FROM generate_series(1, 100) AS i
ON CONFLICT (id) DO NOTHING
"""


def dsn_with_database(dsn: str, database: str) -> str:
    """The same server and credentials, another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


async def ensure_demo_database(admin_dsn: str) -> tuple[str, list[str]]:
    """Create (if missing) and seed the demo database; return its DSN and notes for the user."""
    import asyncpg

    try:
        return await _ensure(admin_dsn)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise ServiceError(
            f"could not prepare the demo database on {redact_dsn(admin_dsn)}: {exc}"
        ) from exc


async def _ensure(admin_dsn: str) -> tuple[str, list[str]]:
    import asyncpg

    notes: list[str] = []
    demo_dsn = dsn_with_database(admin_dsn, DEMO_DB)
    conn = await asyncpg.connect(admin_dsn, timeout=5.0)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DEMO_DB)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{DEMO_DB}"')
            except asyncpg.InsufficientPrivilegeError:
                # A managed database without CREATEDB: put the demo table where we are allowed.
                demo_dsn = admin_dsn
                notes.append(f"no permission to create {DEMO_DB}: using the given database")
            except asyncpg.DuplicateDatabaseError:
                pass  # another `cache-edge dev` created it a moment ago
    finally:
        await conn.close()
    conn = await asyncpg.connect(demo_dsn, timeout=5.0)
    try:
        await conn.execute(_SCHEMA)
        await conn.execute(_SEED)
    finally:
        await conn.close()
    return demo_dsn, notes
