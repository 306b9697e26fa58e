"""Which tenants share a database (and so one WAL capture), and which slots nobody reads."""

from __future__ import annotations

from cache_edge.server.config import TenantConfig
from origin.capture.setup import legacy_slot_name, slot_name
from origin.capture.slots import orphans
from origin.core.databases import by_database, database_key


def tenant(tid: str, url: str, captured: bool = False) -> TenantConfig:
    return TenantConfig(tid, (), url, auto_invalidation=captured)


def test_the_same_database_spelled_differently_is_one_key() -> None:
    a = database_key("postgresql://app_a:secret@DB.example:5432/shop")
    b = database_key("postgres://app_b@db.example/shop?sslmode=require")
    assert a == b == "db.example:5432/shop"
    assert database_key("postgresql://u@db.example:5433/shop") != a
    assert database_key("postgresql://u@db.example/other") != a
    assert database_key("postgresql:///shop?host=/run/postgresql") == "/run/postgresql:5432/shop"


def test_tenants_are_grouped_by_database_in_config_order() -> None:
    a = tenant("a", "postgresql://x@h/one")
    b = tenant("b", "postgresql://y@h/two")
    c = tenant("c", "postgresql://z:pw@h:5432/one")
    assert by_database([a, b, c]) == [(a, c), (b,)]


def test_orphan_slots_are_those_no_configured_tenant_reads() -> None:
    db = "shop"
    mine = slot_name(db)
    old_a = legacy_slot_name("a", db)  # replaced by the capture when it starts
    gone = legacy_slot_name("removed", db)
    slots = [mine, old_a, gone, "cache_edge_other"]
    opted_in = [
        tenant("a", "postgresql://h/shop", captured=True),
        tenant("b", "postgresql://h/shop"),
    ]
    assert orphans(slots, db, opted_in) == [gone, "cache_edge_other"]
    # Nobody of this database opted in: even the database's own slot keeps WAL for nobody.
    assert orphans(slots, db, [tenant("b", "postgresql://h/shop")]) == slots
