"""Request encoding and response decoding of the SDK, without a network."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from decimal import Decimal

import pytest

from cache_edge.client import CacheStrategy, Statement, core
from cache_edge.common.errors import (
    OriginUnavailable,
    PoolTimeout,
    QueryError,
    RateLimited,
    Unauthorized,
)
from cache_edge.common.wire import json_dumps, packb, unpackb

URL = "http://127.0.0.1:7411/v1/query"


def test_headers_ask_for_msgpack_both_ways() -> None:
    headers = core.request_headers("ce_key")
    assert headers["Authorization"] == "Bearer ce_key"
    assert headers["Content-Type"] == "application/msgpack"
    assert headers["Accept"] == "application/msgpack"


def test_query_body_round_trips_exact_types() -> None:
    params = [
        Decimal("12.30"),
        dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC),
        dt.datetime(2024, 1, 2, 3, 4, 5),
        dt.date(2024, 1, 2),
        dt.time(1, 2, 3),
        dt.timedelta(days=1, microseconds=5),
        uuid.UUID(int=7),
        b"\x00\xff",
        {"a": [1, None]},
        None,
    ]
    strategy = CacheStrategy(ttl=60, swr=30, tags=("b", "a"), stale_if_error=5)
    body = unpackb(core.encode_body(core.query_body("SELECT $1", params, strategy)))
    assert body["sql"] == "SELECT $1"
    assert body["params"] == params
    assert [type(p) for p in body["params"]] == [type(p) for p in params]
    assert body["cacheStrategy"] == {"ttl": 60, "swr": 30, "tags": ["a", "b"], "staleIfError": 5}


def test_query_body_without_cache_has_no_strategy() -> None:
    assert core.query_body("SELECT 1", (), None) == {"sql": "SELECT 1", "params": []}


def test_unsendable_parameter_is_named_by_position() -> None:
    with pytest.raises(TypeError, match=r"parameter \$2: cannot send a value of type object"):
        core.encode_body(core.query_body("SELECT $1, $2", [1, object()], None))


def test_transaction_body_accepts_tuples_statements_and_text() -> None:
    body = core.transaction_body(
        [("UPDATE t SET a = $1", [1]), Statement("DELETE FROM t", []), "SELECT 1"],
        "serializable",
    )
    assert body == {
        "statements": [
            {"sql": "UPDATE t SET a = $1", "params": [1]},
            {"sql": "DELETE FROM t", "params": []},
            {"sql": "SELECT 1", "params": []},
        ],
        "isolationLevel": "serializable",
    }
    with pytest.raises(TypeError, match=r"statements\[0\]"):
        core.transaction_body([42], "read_committed")  # type: ignore[list-item]


def test_invalidate_bodies() -> None:
    assert core.invalidate_body(["products", "users"], False, 5.0) == {
        "tags": ["products", "users"],
        "wait": 5.0,
    }
    assert core.invalidate_body(None, True, None) == {"all": True}
    with pytest.raises(ValueError, match="non-empty list of tags"):
        core.invalidate_body([], False, None)
    with pytest.raises(ValueError, match="non-empty list of tags"):
        core.invalidate_body("products", False, None)


def test_invalidation_from_wire() -> None:
    result = core.invalidation_from_wire(
        {"invalidationId": "inv-1", "appliedRegions": ["eu"], "pendingRegions": ["us"]}
    )
    assert result.invalidation_id == "inv-1"
    assert result.applied_regions == ("eu",)
    assert result.pending_regions == ("us",)
    assert not result.complete


def test_decode_success_in_msgpack_and_json() -> None:
    body = {"columns": [], "rows": [], "rowCount": 0}
    assert core.decode_response(200, "application/msgpack", packb(body), URL) == body
    assert core.decode_response(200, "application/json; charset=utf-8", json_dumps(body), URL) == (
        body
    )


def test_error_body_raises_the_typed_error() -> None:
    err = QueryError('relation "nope" does not exist', sqlstate="42P01").to_body("req-9")
    with pytest.raises(QueryError) as info:
        core.decode_response(400, "application/msgpack", packb(err), URL)
    assert info.value.code == "query_error"
    assert info.value.message == 'relation "nope" does not exist'
    assert info.value.extra == {"sqlstate": "42P01", "requestId": "req-9"}

    with pytest.raises(Unauthorized):
        core.decode_response(401, "application/json", json_dumps(Unauthorized("no").to_body()), URL)


def test_retry_after_header_is_kept() -> None:
    body = packb(RateLimited("slow down").to_body())
    with pytest.raises(RateLimited) as info:
        core.decode_response(429, "application/msgpack", body, URL, retry_after="7")
    assert info.value.retry_after == 7.0
    body = packb(PoolTimeout("busy").to_body())
    with pytest.raises(PoolTimeout) as pool:
        core.decode_response(503, "application/msgpack", body, URL, retry_after="Wed, 21 Oct")
    assert pool.value.retry_after == 1.0


@pytest.mark.parametrize(
    ("status", "ctype", "data"),
    [
        (502, "text/html", b"<h1>Bad Gateway</h1>"),
        (500, "application/msgpack", b"\xc1garbage"),
        (200, "text/plain", b"hello"),
        (200, "application/json", b"[1, 2]"),
    ],
)
def test_garbage_answers_are_origin_unavailable_naming_the_url(
    status: int, ctype: str, data: bytes
) -> None:
    with pytest.raises(OriginUnavailable, match=re.escape(URL)):
        core.decode_response(status, ctype, data, URL)


def test_malformed_result_is_origin_unavailable() -> None:
    with pytest.raises(OriginUnavailable, match="malformed result"):
        core.result_from_wire({"rows": [[1]]}, URL)
    with pytest.raises(OriginUnavailable, match="without results"):
        core.results_from_wire({"info": {}}, URL)


def test_network_errors_name_the_url_and_the_cause() -> None:
    exc = core.network_error(URL, ConnectionRefusedError(111, "Connection refused"))
    assert isinstance(exc, OriginUnavailable)
    assert exc.code == "origin_unavailable"
    assert "cannot reach http://127.0.0.1:7411/v1/query" in exc.message
    assert "Connection refused" in exc.message
    timeout = core.network_error(URL, TimeoutError(), 2.5)
    assert "no answer from http://127.0.0.1:7411/v1/query within 2.5s" in timeout.message


def test_base_url_is_checked() -> None:
    assert core.check_base_url("http://node:7410/") == "http://node:7410"
    assert core.check_base_url("https://edge.example.com/db") == "https://edge.example.com/db"
    with pytest.raises(ValueError, match="not a node URL"):
        core.check_base_url("node:7410")
