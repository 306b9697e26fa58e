"""Settings.tenant(): a dict built once per Settings, that follows every replace() and reload."""

from __future__ import annotations

import dataclasses
import pickle

from cache_edge.server.config import RateLimit, Settings, TenantConfig, parse_settings
from cache_edge.server.live_settings import merge_reloadable

SECRET = "a-node-secret-of-enough-length"


def tenant(i: int, rate_limit: RateLimit | None = None) -> TenantConfig:
    return TenantConfig(f"t{i}", (f"{i:064x}",), f"postgresql://h/db{i}", rate_limit=rate_limit)


def settings(n: int) -> Settings:
    return Settings(node_secret=SECRET, tenants=tuple(tenant(i) for i in range(n)))


def test_each_tenant_is_found_and_an_unknown_id_is_none() -> None:
    s = settings(1000)
    for i in (0, 1, 500, 999):
        found = s.tenant(f"t{i}")
        assert found is s.tenants[i]
    for unknown in ("t1000", "", "T1", "t01", " t1"):
        assert s.tenant(unknown) is None
    assert Settings(node_secret=SECRET).tenant("t0") is None


def test_the_index_follows_replace_and_parse() -> None:
    s = settings(3)
    fewer = dataclasses.replace(s, tenants=s.tenants[:1])
    assert fewer.tenant("t0") is not None and fewer.tenant("t2") is None
    more = dataclasses.replace(s, tenants=(*s.tenants, tenant(7)))
    assert more.tenant("t7") == tenant(7)
    assert s.tenant("t7") is None  # the original is untouched
    parsed = parse_settings(
        {
            "node_secret": SECRET,
            "tenants": [{"id": "acme", "database_url": "postgresql://h/a"}],
        }
    )
    assert parsed.tenant("acme") is parsed.tenants[0]


def test_of_two_tenants_with_one_id_the_first_wins() -> None:
    # Only Settings built in code can have them (parse_settings refuses duplicates);
    # the linear scan this index replaced returned the first.
    first, second = tenant(1), dataclasses.replace(tenant(2), id="t1")
    s = Settings(node_secret=SECRET, tenants=(first, second))
    assert s.tenant("t1") is first


def test_rate_limit_for_uses_the_tenant_or_the_default() -> None:
    s = Settings(
        node_secret=SECRET,
        tenants=(tenant(0, rate_limit=RateLimit(2.0, 4)), tenant(1)),
        rate_limit=RateLimit(100.0, 200),
    )
    assert s.rate_limit_for("t0") == RateLimit(2.0, 4)
    assert s.rate_limit_for("t1") == RateLimit(100.0, 200)
    assert s.rate_limit_for("nobody") == RateLimit(100.0, 200)


def test_the_index_is_not_part_of_equality_repr_or_hash_and_survives_pickle() -> None:
    a, b = settings(5), settings(5)
    assert a == b and hash(a) == hash(b)
    assert "_by_id" not in repr(a)
    copy = pickle.loads(pickle.dumps(a))
    assert copy == a and copy.tenant("t4") == a.tenant("t4")


def test_a_reload_is_looked_up_in_the_merged_settings() -> None:
    running = settings(1000)
    changed = [
        dataclasses.replace(running.tenants[0], rate_limit=RateLimit(1.0, 1)),
        *running.tenants[1:999],  # t999 removed
        tenant(5000),  # added: waits for a restart
    ]
    loaded = dataclasses.replace(running, tenants=tuple(changed))
    effective, restart = merge_reloadable(running, loaded)
    assert effective.rate_limit_for("t0") == RateLimit(1.0, 1)
    removed = effective.tenant("t999")
    assert removed is not None and removed.api_keys_sha256 == ()  # revoked at once
    assert effective.tenant("t5000") is None
    # Unchanged tenants are kept as they were (no copy per tenant on every reload).
    assert all(effective.tenants[i] is running.tenants[i] for i in range(1, 999))
    assert sorted(restart) == [
        "tenants[t5000] (added)",
        "tenants[t999] (removed; its API keys are revoked now)",
    ]
