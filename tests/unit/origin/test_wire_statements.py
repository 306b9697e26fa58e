"""What the wire relay reads from SQL text: pins, refusals, and the settings it re-applies."""

from __future__ import annotations

import pytest

from cache_edge.pgwire.statements import needs_pin, refusal_sql, refused, touches_settings
from origin.wire.session import apply_sql, settings_key


@pytest.mark.parametrize(
    "sql",
    [
        b"CREATE TEMP TABLE t (a int)",
        b"create temporary table t as select 1",
        b"CREATE GLOBAL TEMPORARY TABLE t (a int)",
        b"SELECT pg_advisory_lock(1)",
        b"select pg_try_advisory_lock_shared (7)",
        b"LISTEN jobs",
        b"SELECT 1; listen jobs",
        b"PREPARE q AS SELECT 1",
        b"DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    ],
)
def test_session_features_pin(sql: bytes) -> None:
    assert needs_pin(sql)


@pytest.mark.parametrize(
    "sql",
    [
        b"SELECT 1",
        b"SELECT pg_advisory_xact_lock(1)",  # ends with the transaction: no pin
        b"SELECT * FROM listeners",
        b"INSERT INTO temp_values VALUES (1)",
        b"EXECUTE_THIS()",
    ],
)
def test_ordinary_statements_do_not_pin(sql: bytes) -> None:
    assert not needs_pin(sql)


@pytest.mark.parametrize(
    "sql",
    [
        b"SET ROLE admin",
        b"set session role admin",
        b"RESET ROLE",
        b"SET SESSION AUTHORIZATION bob",
        b"select 1; set local role x",
    ],
)
def test_identity_changes_are_refused(sql: bytes) -> None:
    assert refused(sql)


def test_other_sets_are_not_refused() -> None:
    assert not refused(b"SET TimeZone = 'UTC'")
    assert not refused(b"SET search_path = roles")
    assert touches_settings(b"SELECT set_config('a.b', 'c', false)")
    assert not touches_settings(b"SELECT 1")


def test_refusal_is_a_statement_that_raises_the_sqlstate() -> None:
    sql = refusal_sql("42501", "it's not allowed")
    assert sql.startswith(b"DO $ce$") and b"ERRCODE = '42501'" in sql
    assert b"it''s not allowed" in sql


def test_settings_are_applied_with_dollar_quotes_that_cannot_be_broken_out_of() -> None:
    text = apply_sql({"search_path": '"$user", public', "application_name": "a$ce$b"})
    assert text.startswith("RESET ALL; SELECT pg_catalog.set_config(")
    assert '$ce$search_path$ce$, $ce$"$user", public$ce$' in text
    assert "$cex$a$ce$b$cex$" in text  # the tag changes when the value contains it
    assert apply_sql({}) == "RESET ALL"


def test_settings_key_is_order_independent_and_empty_for_defaults() -> None:
    assert settings_key({}) == ""
    assert settings_key({"a": "1", "b": "2"}) == settings_key({"b": "2", "a": "1"})
    assert settings_key({"a": "1"}) != settings_key({"a": "2"})


def test_client_timeouts_are_kept_below_the_origin_ceilings() -> None:
    from cache_edge.server.config import OriginConfig, TenantConfig
    from origin.wire.pool import WirePool

    pool = WirePool(
        TenantConfig("t", (), "postgresql://u@h/db"),
        OriginConfig(statement_timeout=10.0, idle_in_transaction_timeout=60.0),
    )
    got = pool.clamped(
        {
            "statement_timeout": "300",  # lower: kept as the client set it
            "idle_in_transaction_session_timeout": "0",  # off: the ceiling instead
            "TimeZone": "UTC",
        }
    )
    assert got == {
        "statement_timeout": "300",
        "idle_in_transaction_session_timeout": "60000",
        "TimeZone": "UTC",
    }
    assert pool.clamped({"statement_timeout": "1min"})["statement_timeout"] == "10000"
    assert pool.clamped({"statement_timeout": "5s"})["statement_timeout"] == "5s"
