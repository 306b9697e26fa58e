"""Cache keys separate everything that changes an answer; strategies are validated."""

from __future__ import annotations

from decimal import Decimal

import pytest

from cache_edge.common.errors import BadRequest
from cache_edge.common.keys import cache_key
from cache_edge.common.strategy import CacheStrategy


def key(
    params: list[object],
    tenant: str = "acme",
    ttl: int = 60,
    swr: int = 0,
    tags: tuple[str, ...] = (),
) -> str:
    return cache_key(tenant, "SELECT $1", params, ttl, swr, tags)


def test_params_differing_only_in_type_are_different_keys() -> None:
    keys = {key([1]), key(["1"]), key([1.0]), key([True]), key([Decimal(1)]), key([None])}
    assert len(keys) == 6


def test_tenant_and_strategy_are_part_of_the_key() -> None:
    assert key([1], tenant="a") != key([1], tenant="b")
    assert key([1], ttl=60) != key([1], ttl=61)
    assert key([1], swr=1) != key([1], swr=2)
    assert key([1], tags=("a",)) != key([1], tags=("b",))


def test_tag_order_and_duplicates_do_not_matter() -> None:
    assert key([1], tags=("b", "a")) == key([1], tags=("a", "b", "a"))
    assert len(key([1])) == 32  # xxh3-128 hex


def test_strategy_parsing() -> None:
    s = CacheStrategy.from_wire({"ttl": 60, "swr": 30, "tags": ["user_42"], "staleIfError": 5})
    assert (s.ttl, s.swr, s.tags, s.stale_if_error, s.retention) == (60, 30, ("user_42",), 5, 95)
    assert not CacheStrategy.from_wire(None).cached
    assert not CacheStrategy.from_wire({"ttl": 0, "swr": 0}).cached


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"ttl": -1}, "cacheStrategy.ttl"),
        ({"ttl": 31_536_001}, "cacheStrategy.ttl"),
        ({"ttl": 1.5}, "cacheStrategy.ttl"),
        ({"ttl": "60"}, "cacheStrategy.ttl"),
        ({"ttl": True}, "cacheStrategy.ttl"),
        ({"swr": -5}, "cacheStrategy.swr"),
        ({"tags": ["a"] * 6}, "cacheStrategy.tags"),
        ({"tags": ["has space"]}, "cacheStrategy.tags"),
        ({"tags": ["x" * 65]}, "cacheStrategy.tags"),
        ({"tags": [1]}, "cacheStrategy.tags"),
        ({"tags": "a"}, "cacheStrategy.tags"),
        ({"ttl": 1, "maxAge": 3}, "cacheStrategy.maxAge"),
        ([60], "cacheStrategy"),
    ],
)
def test_bad_strategies_name_the_field(raw: object, field: str) -> None:
    with pytest.raises(BadRequest) as info:
        CacheStrategy.from_wire(raw)
    assert info.value.extra["field"] == field
    assert field in info.value.message
