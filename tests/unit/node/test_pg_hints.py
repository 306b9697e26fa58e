"""Cache hints in SQL comments and ``SET cache_edge.*``: what is read, what is left."""

from __future__ import annotations

import pytest

from cache_edge.common.strategy import CacheStrategy
from cache_edge.node.pgdoor.hints import HintError, SessionHints, read_hints, strategy_from


def test_sqlcommenter_at_the_end_keeps_tracing_keys_for_the_database() -> None:
    sql = (
        "SELECT * FROM products WHERE id = $1 "
        "/*cache_swr='30',cache_tags='product_7%2Cproducts',cache_ttl='60',traceparent='00-a'*/"
    )
    got = read_hints(sql)
    assert got.key_sql == "SELECT * FROM products WHERE id = $1"
    assert got.run_sql.rstrip() == "SELECT * FROM products WHERE id = $1 /*traceparent='00-a'*/"
    assert len(got.run_sql) == len(sql)  # blanked, not cut: error positions stay right
    assert strategy_from(got.fields) == CacheStrategy(60, 30, ("product_7", "products"))
    assert not got.error


def test_sqlcommenter_at_the_start_and_with_a_semicolon() -> None:
    first = read_hints("/*cache_ttl='60'*/ SELECT 1")
    last = read_hints("SELECT 1 /*cache_ttl='60'*/;")
    assert first.key_sql == last.key_sql == "SELECT 1"
    assert first.fields == last.fields == {"ttl": "60"}


def test_short_form_for_people() -> None:
    sql = "/* cache ttl=60 swr=30 tags=a,b stale-if-error=300 */ SELECT 2"
    got = read_hints(sql)
    assert got.key_sql == got.run_sql.strip() == "SELECT 2"
    assert got.run_sql.index("SELECT") == sql.index("SELECT")  # error positions stay right
    assert strategy_from(got.fields) == CacheStrategy(60, 30, ("a", "b"), 300)


def test_hints_do_not_change_the_key_text() -> None:
    texts = [
        "SELECT 1 /*cache_ttl='60'*/",
        "/* cache ttl=60 */ SELECT 1",
        "SELECT 1 /*cache_ttl='60',traceparent='00-b'*/",
        "SELECT 1 /*traceparent='00-c'*/",
    ]
    assert {read_hints(t).key_sql for t in texts} == {"SELECT 1"}


@pytest.mark.parametrize(
    ("sql", "problem"),
    [
        ("/* cache ttl=abc */ SELECT 1", "ttl must be a whole number"),
        ("/* cache ttl */ SELECT 1", "expected name=value"),
        ("SELECT 1 /*cache_tags='bad tag!'*/", "invalid tag"),
        ("SELECT 1 /*cache_colour='red'*/", "unknown key 'colour'"),
        ("SELECT 1 /*cache_ttl='99999999999'*/", "between 0 and"),
        ("SELECT 1 /*cache_tags='a%2Cb%2Cc%2Cd%2Ce%2Cf'*/", "at most 5 tags"),
    ],
)
def test_malformed_hints_are_reported(sql: str, problem: str) -> None:
    got = read_hints(sql)
    assert problem in got.error


def test_plain_comments_and_statements_are_left_alone() -> None:
    for sql in ("SELECT 3", "/* a note */ SELECT 4", "SELECT '/*cache_ttl=1*/'"):
        got = read_hints(sql)
        assert got.key_sql == got.run_sql == sql and not got.fields and not got.error


def test_session_settings() -> None:
    session = SessionHints()
    session.set("ttl", "60")
    session.set("tags", "a,b")
    assert strategy_from({}, session.fields) == CacheStrategy(60, 0, ("a", "b"))
    assert strategy_from({"ttl": "5"}, session.fields).ttl == 5  # a hint overrides
    with pytest.raises(HintError, match="whole number"):
        session.set("swr", "soon")
    with pytest.raises(HintError, match="unrecognized configuration parameter"):
        session.set("colour", "red")
    session.reset("ttl")
    assert session.fields == {"tags": "a,b"}
    session.reset(None)
    assert session.fields == {}
