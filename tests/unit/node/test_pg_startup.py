"""The door's startup packet rules, without a network: options, replication, roles."""

from __future__ import annotations

import pytest

from cache_edge.node.pgdoor.startup import Refused, _startup, parse_options
from cache_edge.pgwire.messages import parse_error_fields


def _sqlstate(exc: Refused) -> str:
    return parse_error_fields(exc.response)["C"]


def test_options_as_libpq_sends_them() -> None:
    assert parse_options("-c TimeZone=UTC --search-path=a,b -cstatement_timeout=5s") == {
        "TimeZone": "UTC",
        "search_path": "a,b",
        "statement_timeout": "5s",
    }
    assert parse_options(r"-c application_name=my\ app") == {"application_name": "my app"}


def test_malformed_options_are_refused_with_22023() -> None:
    with pytest.raises(Refused) as caught:
        parse_options("-c nonsense")
    assert _sqlstate(caught.value) == "22023"


def test_startup_defaults_and_settings() -> None:
    got = _startup({"user": "acme", "application_name": "psql", "options": "-c TimeZone=UTC"})
    assert got.user == "acme" and got.database == "acme"
    assert got.settings == {"TimeZone": "UTC", "application_name": "psql"}


@pytest.mark.parametrize(
    ("params", "sqlstate"),
    [
        ({"user": "acme", "replication": "database"}, "0A000"),
        ({"user": "acme", "replication": "true"}, "0A000"),
        ({"user": "acme", "options": "-c role=admin"}, "42501"),
        ({"user": "acme", "session_authorization": "bob"}, "42501"),
        ({"database": "shop"}, "28000"),
    ],
)
def test_refused_startups(params: dict[str, str], sqlstate: str) -> None:
    with pytest.raises(Refused) as caught:
        _startup(dict(params))
    assert _sqlstate(caught.value) == sqlstate
