"""Cache rules: config parsing and matching (the origin's classification is faked here;
tests/integration/test_pg_caching.py runs them against a real origin)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cache_edge.common.strategy import CacheStrategy
from cache_edge.node.pgdoor.rules import RuleBook
from cache_edge.server.config import ConfigError, parse_settings

SECRET = "s" * 32


def settings(**tenant: Any) -> Any:
    base = {"id": "t", "database_url": "postgresql://u@h/db", **tenant}
    return parse_settings({"node_secret": SECRET, "tenants": [base]})


def test_rules_parse_with_the_issue_key_names() -> None:
    got = settings(
        cache_all_reads={"ttl": 300, "swr": 60},
        cache_rules=[
            {"tables": ["public.products", "orders"], "ttl": 300, "swr": 60},
            {"statement": "SELECT  count(*) FROM orders;", "ttl": 5, "tags": ["orders"]},
        ],
    ).tenants[0]
    assert got.cache_all_reads == CacheStrategy(300, 60)
    assert got.cache_rules[0].tables == ("public.products", "public.orders")
    assert got.cache_rules[1].statement == "select count(*) from orders"
    assert got.cache_rules[1].strategy == CacheStrategy(5, 0, ("orders",))


@pytest.mark.parametrize(
    ("tenant", "message"),
    [
        ({"cache_all_reads": {"ttl": 0}}, "needs ttl or swr above 0"),
        ({"cache_all_reads": {"ttl": 5, "colour": 1}}, "unknown config key"),
        ({"cache_rules": [{"ttl": 5}]}, "give tables"),
        ({"cache_rules": [{"tables": "products", "ttl": 5}]}, "expected a list of table names"),
        ({"cache_rules": [{"tables": ["a"], "ttl": 5, "tags": ["bad tag"]}]}, "invalid tag"),
    ],
)
def test_bad_rules_fail_at_start(tenant: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(**tenant)


class FakeLink:
    """The origin's classification answer (what its plan reader says about a text)."""

    def __init__(self, answers: dict[str, dict[str, Any]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def read(self, payload: dict[str, Any], timeout: float) -> Any:
        self.asked.append(payload["sql"])
        return self.answers[payload["sql"]]


async def test_matching_learns_once_then_applies_the_shortest_ttl() -> None:
    tenant = settings(
        cache_all_reads={"ttl": 300},
        cache_rules=[
            {"tables": ["public.products"], "ttl": 60},
            {"tables": ["public.orders"], "ttl": 10},
            {"statement": "select 1", "ttl": 7},
        ],
    )
    link = FakeLink(
        {
            "q1": {"tables": ["public.products", "public.orders"], "volatile": False},
            "q2": {"tables": ["public.users"], "volatile": False},
            "q3": {"tables": ["public.products"], "volatile": True},
            "SELECT   1": {"tables": [], "volatile": False},
        }
    )
    book = RuleBook(tenant.tenant, link, 1.0)  # type: ignore[arg-type]
    for sql in ("q1", "q2", "q3", "SELECT   1"):
        assert book.strategy("t", sql, b"", b"") is None  # not learned yet
    await asyncio.sleep(0.01)
    assert book.strategy("t", "q1", b"", b"") == CacheStrategy(10)  # both match: shortest
    assert book.strategy("t", "q2", b"", b"") == CacheStrategy(300)  # cache_all_reads
    assert book.strategy("t", "q3", b"", b"") is None  # volatile: only a hint caches it
    assert book.strategy("t", "SELECT   1", b"", b"") == CacheStrategy(7)
    assert link.asked == ["q1", "q2", "q3", "SELECT   1"]  # once per text
    book.writes("t", "q2")
    assert book.strategy("t", "q2", b"", b"") is None
    assert book.strategy("other", "q1", b"", b"") is None  # unknown tenant
