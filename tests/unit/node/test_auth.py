"""API keys: a lookup by the key's SHA-256, the same answer for every failure, atomic reloads."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cache_edge.common.errors import Unauthorized
from cache_edge.node.auth import ApiKeys, Principal
from cache_edge.server.config import TenantConfig
from tests.conftest import sha


def tenants(n: int, keys_each: int = 2, prefix: str = "k") -> list[TenantConfig]:
    return [
        TenantConfig(
            f"t{i}",
            tuple(sha(f"{prefix}{i}-{j}") for j in range(keys_each)),
            f"postgresql://h/db{i}",
        )
        for i in range(n)
    ]


def refused(keys: ApiKeys, header: str | None) -> str:
    with pytest.raises(Unauthorized) as info:
        keys.authenticate(header)
    return info.value.message


def test_every_key_of_many_tenants_maps_to_its_own_tenant() -> None:
    keys = ApiKeys(tenants(1000))
    assert len(keys) == 2000
    for i in (0, 1, 499, 998, 999):
        for j in (0, 1):
            who = keys.authenticate(f"Bearer k{i}-{j}")
            assert who == Principal(f"t{i}", sha(f"k{i}-{j}")[:16])


def test_two_keys_of_one_tenant_both_work_and_are_told_apart() -> None:
    keys = ApiKeys(tenants(3))
    a, b = keys.authenticate("Bearer k1-0"), keys.authenticate("Bearer k1-1")
    assert a.tenant == b.tenant == "t1"
    assert a.key_id != b.key_id  # separate rate-limit buckets
    assert keys.tenant_for("Bearer k1-1") == "t1"
    # The same key gives the same Principal every time.
    assert keys.authenticate("Bearer k1-0") == a


def test_unknown_keys_get_one_message_that_names_nothing() -> None:
    keys = ApiKeys(tenants(10))
    unknown = {refused(keys, f"Bearer {k}") for k in ("nope", "t1", "k1", "k10-0", "K1-0")}
    assert unknown == {"invalid API key"}
    assert (
        refused(keys, None)
        == refused(keys, "")
        == ("missing API key: send 'Authorization: Bearer <API key>'")
    )
    malformed = {refused(keys, h) for h in ("Basic k1-0", "Bearer ", "Bearer " + "x" * 300)}
    assert malformed == {"malformed Authorization header: expected 'Bearer <API key>'"}
    # A hash (as in the config) is not a key: presenting it does not log in.
    assert refused(keys, "Bearer " + sha("k1-0")) == "invalid API key"


def test_the_scheme_is_case_insensitive_and_the_key_is_trimmed() -> None:
    keys = ApiKeys(tenants(2))
    assert keys.tenant_for("bearer k1-0") == "t1"
    assert keys.tenant_for("BEARER  k1-0 ") == "t1"


def test_an_empty_config_refuses_everyone() -> None:
    keys = ApiKeys([])
    assert len(keys) == 0
    assert refused(keys, "Bearer k0-0") == "invalid API key"


def test_uppercase_hex_in_code_built_configs_still_matches() -> None:
    keys = ApiKeys([TenantConfig("acme", (sha("ka").upper(),), "postgresql://h/a")])
    assert keys.tenant_for("Bearer ka") == "acme"


def test_a_reload_revokes_and_grants_in_one_step() -> None:
    keys = ApiKeys(tenants(3))
    old_header, new_header = "Bearer k0-0", "Bearer new0-0"
    seen_during_rebuild: list[tuple[bool, bool]] = []

    def reloaded() -> Iterator[TenantConfig]:
        # While the new index is being built, requests still see exactly the old keys.
        for tenant in tenants(3, prefix="new"):
            seen_during_rebuild.append(
                (works(keys, old_header), works(keys, new_header)),
            )
            yield tenant

    keys.replace(reloaded())
    assert seen_during_rebuild == [(True, False)] * 3
    assert works(keys, new_header) and not works(keys, old_header)
    assert keys.tenant_for("Bearer new2-1") == "t2"
    assert len(keys) == 6


def test_a_key_moved_to_another_tenant_by_a_reload_follows_it() -> None:
    keys = ApiKeys(tenants(2))
    kept = keys.authenticate("Bearer k0-0")
    moved = [
        TenantConfig("t0", (sha("k0-0"),), "postgresql://h/db0"),
        TenantConfig("t1", (sha("k1-0"), sha("k0-1")), "postgresql://h/db1"),
    ]
    keys.replace(moved)
    assert keys.authenticate("Bearer k0-0") is kept  # unchanged: reused, not rebuilt
    assert keys.authenticate("Bearer k0-1") == Principal("t1", sha("k0-1")[:16])
    assert not works(keys, "Bearer k1-1")


def test_a_reload_that_fails_keeps_the_old_keys() -> None:
    keys = ApiKeys(tenants(2))
    broken = [*tenants(1, prefix="new"), TenantConfig("bad", ("not hex",), "postgresql://h/x")]
    with pytest.raises(ValueError):
        keys.replace(broken)
    assert keys.tenant_for("Bearer k1-1") == "t1"
    assert not works(keys, "Bearer new0-0")


def test_a_hash_listed_under_two_tenants_belongs_to_the_last() -> None:
    # parse_settings does not reject it; this pins the behaviour of the scan it replaced.
    shared = sha("shared")
    keys = ApiKeys(
        [
            TenantConfig("first", (shared,), "postgresql://h/a"),
            TenantConfig("second", (shared,), "postgresql://h/b"),
        ]
    )
    assert keys.tenant_for("Bearer shared") == "second"


def works(keys: ApiKeys, header: str) -> bool:
    try:
        keys.authenticate(header)
    except Unauthorized:
        return False
    return True
