"""The /sql door's pure parts: reading Neon's requests, turning PostgreSQL bytes into JSON."""

from __future__ import annotations

import struct

import pytest

from cache_edge.common.errors import BadRequest, PayloadTooLarge, Unauthorized
from cache_edge.common.limits import Limits
from cache_edge.node.sqlhttp.request import credentials, parse_sql_request
from cache_edge.node.sqlhttp.results import error_body, results_of
from cache_edge.pgwire.messages import cstring, error_response, message

LIMITS = Limits(max_sql_length=100, max_params=3, max_statements=2)


def test_single_query_and_flags() -> None:
    req = parse_sql_request(
        b'{"query": "SELECT $1, $2, $3", "params": ["a", null, 7]}',
        {"Neon-Array-Mode": "true", "Neon-Raw-Text-Output": "TRUE"},
        LIMITS,
    )
    assert not req.batch and req.array_mode and req.raw_text
    assert req.queries[0].params == ("a", None, "7")


def test_batch_and_its_transaction() -> None:
    req = parse_sql_request(
        b'{"queries": [{"query": "SELECT 1"}, {"query": "SELECT 2", "params": []}]}',
        {
            "Neon-Batch-Isolation-Level": "RepeatableRead",
            "Neon-Batch-Read-Only": "true",
            "Neon-Batch-Deferrable": "true",
        },
        LIMITS,
    )
    assert req.batch and len(req.queries) == 2
    assert req.begin() == "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY DEFERRABLE"
    plain = parse_sql_request(b'{"queries": []}', {}, LIMITS)
    assert plain.begin() == "BEGIN" and not plain.array_mode and not plain.raw_text


@pytest.mark.parametrize(
    ("body", "error", "fragment"),
    [
        (b'{"query": "x" }', None, None),
        (b'{"query": "' + b"x" * 101 + b'"}', PayloadTooLarge, "at most 100"),
        (b'{"query": "x", "params": ["1","2","3","4"]}', BadRequest, "at most 3"),
        (b'{"queries": [{"query": "x"},{"query": "x"},{"query": "x"}]}', BadRequest, "at most 2"),
        (b'{"query": "x", "queries": []}', BadRequest, "not both"),
        (b'{"query": "x", "params": [[1]]}', BadRequest, "parameter $1"),
        (b'{"query": "x", "params": [1e400]}', BadRequest, "infinity"),
        (b'{"queries": [{"query": "x", "what": 1}]}', BadRequest, "unknown field 'what'"),
        (b'{"query": "x", "params": ["a\\u0000"]}', BadRequest, "NUL"),
        (b"[" * 100_000, BadRequest, "not JSON"),
    ],
)
def test_refusals(body: bytes, error: type[Exception] | None, fragment: str | None) -> None:
    if error is None:
        parse_sql_request(body, {}, LIMITS)
        return
    with pytest.raises(error) as raised:
        parse_sql_request(body, {}, LIMITS)
    assert fragment is not None and fragment in str(raised.value)


def test_credentials() -> None:
    found = credentials({"Neon-Connection-String": "postgresql://acme:k%2Fey@h:5432/db?sslmode=x"})
    assert (found.tenant, found.key, found.database) == ("acme", "k/ey", "db")
    bearer = credentials(
        {"Neon-Connection-String": "postgres://acme:ignored@h", "Authorization": "Bearer tok"}
    )
    assert (bearer.key, bearer.database) == ("tok", None)
    with pytest.raises(Unauthorized, match="no password"):
        credentials({"Neon-Connection-String": "postgresql://acme@h/db"})
    with pytest.raises(Unauthorized, match="missing Neon-Connection-String"):
        credentials({})
    with pytest.raises(BadRequest, match="at most 4096"):
        credentials({"Neon-Connection-String": "postgresql://a:" + "b" * 5000 + "@h/d"})
    with pytest.raises(BadRequest, match="postgresql://"):
        credentials({"Neon-Connection-String": "mysql://a:b@h/d"})


def _row_description(*columns: tuple[str, int]) -> bytes:
    body = struct.pack("!h", len(columns))
    for name, oid in columns:
        body += cstring(name) + struct.pack("!IhIhih", 16384, 1, oid, 4, -1, 0)
    return message(b"T", body)


def _data_row(*values: bytes | None) -> bytes:
    body = struct.pack("!h", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return message(b"D", body)


def test_results_in_both_modes() -> None:
    data = (
        message(b"1")
        + _row_description(("a", 23), ("b", 16), ("j", 3802), ("t", 25))
        + _data_row(b"1", b"t", b'{"k": [1]}', "é".encode())
        + _data_row(None, b"f", None, b"")
        + message(b"C", cstring("SELECT 2"))
        + message(b"C", cstring("INSERT 0 5"))
        + message(b"C", cstring("CREATE TABLE"))
        + message(b"I")
        + message(b"Z", b"I")
    )
    results, error = results_of(data, array_mode=True, raw_text=True)
    assert error == b""
    assert [r["command"] for r in results] == ["SELECT", "INSERT", "CREATE", ""]
    assert [r["rowCount"] for r in results] == [2, 5, None, None]
    assert results[0]["rows"] == [["1", "t", '{"k": [1]}', "é"], [None, "f", None, ""]]
    assert results[0]["fields"][0] == {
        "name": "a",
        "tableID": 16384,
        "columnID": 1,
        "dataTypeID": 23,
        "dataTypeSize": 4,
        "dataTypeModifier": -1,
        "format": "text",
    }
    typed, _ = results_of(data, array_mode=False, raw_text=False)
    assert typed[0]["rows"][0] == {"a": 1, "b": True, "j": {"k": [1]}, "t": "é"}
    assert typed[0]["rowAsArray"] is False


def test_errors_stop_the_results() -> None:
    err = error_response("23505", "duplicate key", detail="Key (id)=(1) exists.")
    data = message(b"C", cstring("BEGIN")) + err + message(b"Z", b"E")
    results, error = results_of(data, True, True)
    assert len(results) == 1 and error == err
    body = error_body(err)
    assert body["code"] == "23505" and body["message"] == "duplicate key"
    assert body["detail"] == "Key (id)=(1) exists." and body["severity"] == "ERROR"
