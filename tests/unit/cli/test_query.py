"""``cache-edge query`` output: the table, the status line, JSON lines and error messages."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest

from cache_edge.cli.main import main
from cache_edge.cli.query import format_error
from cache_edge.client.table import format_table, render_value
from cache_edge.common.errors import QueryError
from cache_edge.devtools.harness import free_port
from tests.unit.client.fake_node import API_KEY, Seen, running_fake_node


def test_table_aligns_numbers_right_and_text_left() -> None:
    table = format_table(
        ["id", "name", "price"],
        ["int4", "text", "numeric"],
        [(1, "Red Mug", Decimal("9.50")), (100, "Lamp", Decimal("120.00")), (7, None, None)],
    )
    assert table.splitlines() == [
        " id  | name    | price",
        "-----+---------+--------",
        "   1 | Red Mug |   9.50",
        " 100 | Lamp    | 120.00",
        "   7 | NULL    |   NULL",
        "(3 rows)",
    ]


def test_table_of_one_row_and_of_none() -> None:
    assert format_table(["a"], ["text"], [("x",)]).splitlines()[-1] == "(1 row)"
    assert format_table(["a"], ["text"], []).splitlines() == [" a", "---", "(0 rows)"]


def test_values_render_like_postgres() -> None:
    assert render_value(True, "bool") == "true"
    assert render_value(b"\x00\xff", "bytea") == "\\x00ff"
    ts = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert render_value(ts, "timestamptz") == "2024-01-02 03:04:05+00:00"
    assert render_value([1, None, 3], "int4[]") == "{1,NULL,3}"
    assert render_value([1, None], "jsonb") == "[1,null]"
    assert render_value({"a": "b"}, "json") == '{"a":"b"}'
    assert render_value(uuid.UUID(int=1), "uuid") == "00000000-0000-0000-0000-000000000001"
    assert render_value("two\nlines\tx", "text") == "two\\nlines\\tx"


def test_wide_characters_keep_the_grid() -> None:
    table = format_table(["n"], ["text"], [("日本",), ("ab",)])
    assert table.splitlines()[2:4] == [" 日本", " ab"]
    assert table.splitlines()[1] == "------"


def test_error_format() -> None:
    exc = QueryError('relation "nope" does not exist', sqlstate="42P01", requestId="r1")
    assert format_error(exc).splitlines() == [
        'error: query_error: relation "nope" does not exist',
        "  sqlstate: 42P01",
        "  requestId: r1",
    ]


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[str, Seen]]:
    with running_fake_node() as running:
        yield running


def test_query_prints_table_and_status(
    node: tuple[str, Seen], capsys: pytest.CaptureFixture[str]
) -> None:
    url, seen = node
    args = ["query", "--url", url, "--api-key", API_KEY, "--ttl", "60", "--tag", "p"]
    assert main([*args, "cli table", "42", "x"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        " c0 | c1",
        "----+----",
        " 42 | x",
        "(1 row)",
        "cache: miss  region: test-region  age: 1.5s  request: req-1",
    ]
    # Command-line parameters travel as text; PostgreSQL coerces them.
    assert seen.bodies[-1]["params"] == ["42", "x"]
    assert seen.bodies[-1]["cacheStrategy"] == {"ttl": 60, "swr": 0, "tags": ["p"]}
    assert main([*args, "cli table", "42", "x"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("cache: ttl ")


def test_query_without_cache_flags_sends_no_strategy(
    node: tuple[str, Seen], capsys: pytest.CaptureFixture[str]
) -> None:
    url, seen = node
    assert main(["query", "--url", url, "--api-key", API_KEY, "UPDATE t SET a = 1"]) == 0
    assert "cacheStrategy" not in seen.bodies[-1]
    assert capsys.readouterr().out.splitlines()[0] == "(3 rows affected)"


def test_query_json_lines(node: tuple[str, Seen], capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = node
    assert main(["query", "--url", url, "--api-key", API_KEY, "--json", "j", "a", "b"]) == 0
    captured = capsys.readouterr()
    assert [json.loads(line) for line in captured.out.splitlines()] == [{"c0": "a", "c1": "b"}]
    assert captured.err.startswith("cache: none")


def test_query_errors_go_to_stderr_with_exit_1(
    node: tuple[str, Seen], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = node
    assert main(["query", "--url", url, "--api-key", API_KEY, "missing table"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines()[0] == 'error: query_error: relation "nope" does not exist'
    assert "  sqlstate: 42P01" in captured.err.splitlines()


def test_query_unreachable_node(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["query", "--url", url, "--api-key", "k", "SELECT 1"]) == 1
    assert capsys.readouterr().err.startswith(f"error: origin_unavailable: cannot reach {url}")


def test_query_invalid_strategy_and_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "--api-key", "k", "--ttl", "-1", "SELECT 1"]) == 1
    assert capsys.readouterr().err.startswith("error: bad_request: cacheStrategy.ttl must be")
    assert main(["query", "--url", "nope", "--api-key", "k", "SELECT 1"]) == 1
    assert "error: bad_request: not a node URL" in capsys.readouterr().err
