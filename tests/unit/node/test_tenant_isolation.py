"""Every key that separates cached state names the tenant: entries, locks, flights, fingerprints."""

from __future__ import annotations

import pytest

from cache_edge.common.keys import cache_key, query_fingerprint
from cache_edge.node.auth import ApiKeys
from cache_edge.node.tiers.redis import RedisTier
from cache_edge.server.config import TenantConfig
from tests.conftest import sha

pytestmark = pytest.mark.security


def test_cache_keys_and_fingerprints_include_the_tenant() -> None:
    args = ("SELECT $1", [1], 60, 0, ["t"])
    assert cache_key("acme", *args) != cache_key("globex", *args)
    assert query_fingerprint("acme", "SELECT 1", []) != query_fingerprint("globex", "SELECT 1", [])


async def test_entry_and_lock_keys_include_the_tenant() -> None:
    tier = RedisTier("redis://127.0.0.1:1/0", timeout=0.1, max_connections=1, retry_after=1.0)
    try:
        sig = "ab" * 16
        assert tier.entry_key("acme", sig) != tier.entry_key("globex", sig)
        assert tier.lock_key("acme", sig) != tier.lock_key("globex", sig)
        assert "acme" in tier.lock_key("acme", sig)
    finally:
        await tier.close()


def test_a_key_maps_to_its_tenant_only_and_a_reload_revokes() -> None:
    keys = ApiKeys(
        [
            TenantConfig("acme", (sha("ka"),), "postgresql://h/a"),
            TenantConfig("globex", (sha("kb"),), "postgresql://h/b"),
        ]
    )
    a, b = keys.authenticate("Bearer ka"), keys.authenticate("Bearer kb")
    assert (a.tenant, b.tenant) == ("acme", "globex")
    assert a.key_id == sha("ka")[:16] and a.key_id != b.key_id
    keys.replace([TenantConfig("acme", (sha("ka2"),), "postgresql://h/a")])
    assert keys.authenticate("Bearer ka2").tenant == "acme"
    for gone in ("Bearer ka", "Bearer kb"):
        try:
            keys.authenticate(gone)
        except Exception as exc:  # Unauthorized, with the same message as any unknown key
            assert str(exc) == "invalid API key"
        else:
            raise AssertionError(f"{gone} still works")
