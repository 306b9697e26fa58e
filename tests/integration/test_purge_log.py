"""The purge log at the origin, against real PostgreSQL: per tenant on a shared database,
migrated in place from older versions, and with an identity (its epoch) that regions'
acknowledgements must match.

Both tenants point at one database (the shared-database settings variant); the origin runs
in process and is spoken to as a regional node would (signed HTTP).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from cache_edge.server.config import parse_settings
from tests.conftest import PG_ADMIN_DSN, dsn_for, make_shared_settings_doc
from tests.integration.origin_helpers import OriginClient, running_origin

DB = "cache_edge_purge_log"

# What versions before per-tenant logs created (and left in every tenant's database).
LEGACY_SCHEMA = """
CREATE SCHEMA cache_edge;
CREATE TABLE cache_edge.invalidations (
    seq        bigint PRIMARY KEY,
    id         uuid NOT NULL UNIQUE,
    tags       text[] NOT NULL,
    purge_all  boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE cache_edge.region_progress (
    region      text PRIMARY KEY,
    applied_seq bigint NOT NULL,
    seen_at     timestamptz NOT NULL
);
ALTER TABLE cache_edge.region_progress ADD COLUMN IF NOT EXISTS live_until timestamptz;
"""


async def recreate_database(name: str = DB) -> None:
    """Drop the database (as an operator restoring a backup or starting over would) and
    create it empty."""
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


async def sql(statement: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn_for(DB))
    try:
        return await conn.fetch(statement, *args)
    finally:
        await conn.close()


@pytest.fixture
async def tenants(
    pg_databases: tuple[str, str],
) -> AsyncIterator[tuple[OriginClient, OriginClient]]:
    """(acme, globex): two tenants of one origin, both on the same fresh database."""
    await recreate_database()
    async with origin_clients() as clients:
        yield clients


@asynccontextmanager
async def origin_clients() -> AsyncIterator[tuple[OriginClient, OriginClient]]:
    """An origin serving both tenants of the shared database: (acme's client, globex's)."""
    async with running_origin(parse_settings(make_shared_settings_doc(dsn_for(DB)))) as a:
        yield a, OriginClient(a.session, a.base_url, tenant="globex")


async def purge(client: OriginClient, **body: Any) -> dict[str, Any]:
    reply = await client.post("/v1/invalidations", {"wait": 0, **body})
    assert reply.status == 200, reply.body
    answer: dict[str, Any] = reply.body
    return answer


async def poll(
    client: OriginClient, region: str, after: int, *, epoch: str | None = None, wait: float = 0
) -> dict[str, Any]:
    body: dict[str, Any] = {"region": region, "after": after, "wait": wait, "lease": 60}
    if epoch is not None:
        body["epoch"] = epoch
    reply = await client.post("/v1/invalidations/poll", body)
    assert reply.status == 200, reply.body
    answer: dict[str, Any] = reply.body
    return answer


async def regions(client: OriginClient, inv_id: str) -> tuple[list[str], list[str]]:
    reply = await client.post("/v1/invalidations/status", {"id": inv_id})
    assert reply.status == 200, reply.body
    return reply.body["appliedRegions"], reply.body["pendingRegions"]


async def test_tenants_on_one_database_number_and_acknowledge_their_own_purges(
    tenants: tuple[OriginClient, OriginClient],
) -> None:
    acme, globex = tenants
    a1 = await purge(acme, tags=["t"])
    a2 = await purge(acme, all=True)
    b1 = await purge(globex, tags=["t"])
    # Sequences count per tenant, from 1, without gaps: a region's gap detection needs it.
    assert [a1["seq"], a2["seq"], b1["seq"]] == [1, 2, 1]
    seen_b = await poll(globex, "region-x", 0)
    assert seen_b["latest"] == 1
    assert seen_b["items"] == [{"seq": 1, "id": b1["invalidationId"], "tags": ["t"], "all": False}]
    seen_a = await poll(acme, "region-y", 0)
    assert [i["id"] for i in seen_a["items"]] == [a1["invalidationId"], a2["invalidationId"]]
    # region-x acknowledged globex's purge: that says nothing about acme's.
    await poll(globex, "region-x", 1, epoch=seen_b["epoch"])
    assert await regions(globex, b1["invalidationId"]) == (["region-x"], [])
    applied, pending = await regions(acme, a1["invalidationId"])
    assert "region-x" not in applied + pending, (applied, pending)
    # ... and a tenant cannot look at another's purges.
    other = await globex.post("/v1/invalidations/status", {"id": a1["invalidationId"]})
    assert other.status == 404, other.body
    stored = await sql("SELECT tenant, array_agg(seq ORDER BY seq) AS seqs "
                       "FROM cache_edge.invalidations GROUP BY tenant ORDER BY tenant")  # fmt: skip
    assert [(r["tenant"], r["seqs"]) for r in stored] == [("acme", [1, 2]), ("globex", [1])]


async def test_a_log_from_an_older_version_is_migrated_in_place(
    pg_databases: tuple[str, str],
) -> None:
    await recreate_database()
    legacy = [str(uuid.uuid4()) for _ in range(3)]
    conn = await asyncpg.connect(dsn_for(DB))
    try:
        await conn.execute(LEGACY_SCHEMA)
        for seq, inv_id in enumerate(legacy, start=1):
            await conn.execute(
                "INSERT INTO cache_edge.invalidations (seq, id, tags, purge_all) "
                "VALUES ($1, $2, $3, false)",
                seq,
                uuid.UUID(inv_id),
                [f"old{seq}"],
            )
        await conn.execute(
            "INSERT INTO cache_edge.region_progress VALUES ('region-old', 3, now(), "
            "now() + interval '1 hour')"
        )
    finally:
        await conn.close()
    async with origin_clients() as (acme, globex):
        # The old purges belong to every tenant of the database; each log goes on after them.
        a4 = await purge(acme, tags=["new"])
        b4 = await purge(globex, tags=["new"])
        assert (a4["seq"], b4["seq"]) == (4, 4)
        for client, own in ((acme, a4), (globex, b4)):
            seen = await poll(client, "region-new", 0)
            assert [i["seq"] for i in seen["items"]] == [1, 2, 3, 4]
            assert [i["id"] for i in seen["items"]] == [*legacy, own["invalidationId"]]
            assert (seen["oldest"], seen["latest"]) == (1, 4)
            # The old acknowledgement cannot say which tenant it was for: it is not kept.
            applied, pending = await regions(client, legacy[1])
            assert "region-old" not in applied + pending
        # A second start finds the schema migrated and changes nothing.
    async with origin_clients() as (acme, _globex):
        assert (await purge(acme, tags=["again"]))["seq"] == 5


async def test_polls_carry_the_epoch_and_acknowledge_only_against_it(
    tenants: tuple[OriginClient, OriginClient],
) -> None:
    acme, _globex = tenants
    first = await purge(acme, tags=["t"])
    epoch = first["epoch"]
    assert isinstance(epoch, str) and epoch
    seen = await poll(acme, "fresh", -1)
    assert (seen["epoch"], seen["latest"], seen["items"]) == (epoch, 1, [])
    # State from another log: answered, but never recorded as progress of this one.
    other = await poll(acme, "other-log", 1, epoch="0123abcd.1")
    assert (other["epoch"], other["latest"]) == (epoch, 1)
    # Applied more purges than this log has (a database restored to before them): the same.
    started = time.monotonic()
    ahead = await poll(acme, "ahead", 5, epoch=epoch, wait=5)
    assert time.monotonic() - started < 2, "a region ahead of the log must hear so at once"
    assert (ahead["latest"], ahead["items"]) == (1, [])
    await poll(acme, "this-log", 1, epoch=epoch)
    await poll(acme, "no-epoch", 1)  # a node from before epochs, within the log's bounds
    applied, pending = await regions(acme, first["invalidationId"])
    assert (applied, pending) == (["no-epoch", "this-log"], [])


async def test_the_epoch_survives_restarts_and_a_new_database_has_another(
    pg_databases: tuple[str, str],
) -> None:
    await recreate_database()
    async with origin_clients() as (acme, _globex):
        for _ in range(5):
            done = await purge(acme, tags=["t"])
        epoch = done["epoch"]
        assert done["seq"] == 5
        await poll(acme, "region-a", 5, epoch=epoch)
    async with origin_clients() as (acme, _globex):
        assert (await poll(acme, "region-a", 5, epoch=epoch))["epoch"] == epoch
    # The database is dropped and created again (or restored, or replaced): its log starts
    # over, under another epoch, and the region's old progress counts for nothing here.
    await recreate_database()
    async with origin_clients() as (acme, _globex):
        seen = await poll(acme, "region-a", 5, epoch=epoch)
        assert seen["epoch"] != epoch and (seen["latest"], seen["oldest"]) == (0, 0)
        again = await purge(acme, tags=["t"])
        assert again["seq"] == 1 and again["epoch"] == seen["epoch"]
        await poll(acme, "region-a", 5, epoch=epoch)
        assert await regions(acme, again["invalidationId"]) == ([], [])
        watermark = (await acme.query("SELECT 1")).body["watermark"]
        assert watermark == 1
