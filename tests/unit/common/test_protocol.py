"""The hit path's memos: a repeated body is parsed once, a repeated request's key hashed once."""

from __future__ import annotations

import msgpack
import pytest

from cache_edge.common.errors import BadRequest
from cache_edge.common.keys import cache_key
from cache_edge.common.protocol import parse_query, parse_query_body
from cache_edge.common.wire import decode_body
from cache_edge.server.config import Limits


def body(**fields: object) -> bytes:
    return bytes(msgpack.packb({"sql": "SELECT $1", "params": [1], **fields}))


def test_a_repeated_body_is_parsed_once_and_matches_a_fresh_parse() -> None:
    limits = Limits()
    raw = body(cacheStrategy={"ttl": 60, "tags": ["b", "a"]})
    first = parse_query_body(raw, "msgpack", limits)
    assert parse_query_body(bytes(raw), "msgpack", limits) is first
    assert first == parse_query(decode_body(raw, "msgpack"), limits)
    # Other limits, another format: parsed again.
    assert parse_query_body(raw, "msgpack", Limits(max_params=5)) is not first
    assert parse_query_body(b'{"sql": "SELECT 1"}', "json", limits).statement.sql == "SELECT 1"


def test_an_invalid_body_raises_every_time() -> None:
    raw = body(unknown=1)
    for _ in range(2):
        with pytest.raises(BadRequest):
            parse_query_body(raw, "msgpack", Limits())


def test_the_key_memo_answers_only_for_the_same_params_object() -> None:
    params = [1, "x"]
    key = cache_key("acme", "SELECT $1, $2", params, 60, 0, ("t",))
    assert cache_key("acme", "SELECT $1, $2", params, 60, 0, ("t",)) == key
    assert cache_key("acme", "SELECT $1, $2", [1, "x"], 60, 0, ("t",)) == key  # equal: recomputed
    assert cache_key("acme", "SELECT $1, $2", [1, "y"], 60, 0, ("t",)) != key
    assert cache_key("globex", "SELECT $1, $2", params, 60, 0, ("t",)) != key
    assert cache_key("acme", "SELECT $1, $2", [[1], {"a": 1}], 60, 0, ("t",))  # nested params
