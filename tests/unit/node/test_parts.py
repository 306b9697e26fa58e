"""Entry framing, signing, single-flight, API keys and request limits, without a network."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from cache_edge.common.answer import split_core
from cache_edge.common.errors import BadRequest, OriginUnavailable, PayloadTooLarge, Unauthorized
from cache_edge.common.protocol import parse_query, parse_transaction
from cache_edge.common.signing import SignatureError, sign_headers, verify_headers
from cache_edge.common.singleflight import Group
from cache_edge.common.wire import json_loads, packb, unpackb
from cache_edge.node.auth import ApiKeys
from cache_edge.node.entry import Entry, core_to_dict, result_json, result_msgpack
from cache_edge.server.config import Limits, TenantConfig

ORIGIN_ANSWER = {
    "columns": [{"name": "id", "type": "int4"}],
    "rows": [[1], [2]],
    "rowCount": 2,
    "producedAt": 1_700_000_000_123,
}


def test_core_is_spliced_without_reencoding() -> None:
    raw = packb(ORIGIN_ANSWER)
    core, rest = split_core(raw)
    assert rest == {"producedAt": 1_700_000_000_123}
    assert core in raw
    entry = Entry.decode(Entry(rest["producedAt"], core, 7).encode())
    assert entry is not None and entry.core == core and entry.watermark == 7
    body = unpackb(result_msgpack(entry.core, {"cacheStatus": "ttl"}))
    assert body == {
        **{k: ORIGIN_ANSWER[k] for k in ("columns", "rows", "rowCount")},
        "info": {"cacheStatus": "ttl"},
    }
    assert json_loads(result_json(core, {"x": 1}))["rows"] == [[1], [2]]
    assert core_to_dict(core)["rowCount"] == 2


def test_unexpected_origin_answer_is_origin_unavailable() -> None:
    with pytest.raises(OriginUnavailable):
        split_core(packb({"rows": [], "columns": [], "rowCount": 0}))
    assert Entry.decode(b"\x09" + b"\x00" * 20) is None
    assert Entry.decode(b"") is None


def test_signature_accepts_current_and_rotated_secret() -> None:
    h = sign_headers("old-secret-xxxxxxxx", "POST", "/v1/query", "acme", b"body", now=1000.0)
    assert (
        verify_headers(
            ["new-secret", "old-secret-xxxxxxxx"], "POST", "/v1/query", h, b"body", 60, now=1010.0
        )
        == "acme"
    )
    for args in (
        (["old-secret-xxxxxxxx"], "POST", "/v1/query", h, b"tampered", 60, 1010.0),
        (["old-secret-xxxxxxxx"], "POST", "/v1/transaction", h, b"body", 60, 1010.0),
        (["old-secret-xxxxxxxx"], "POST", "/v1/query", h, b"body", 60, 1100.0),  # replay later
        (["other"], "POST", "/v1/query", h, b"body", 60, 1010.0),
        (["old-secret-xxxxxxxx"], "POST", "/v1/query", {}, b"body", 60, 1010.0),
    ):
        with pytest.raises(SignatureError):
            verify_headers(*args[:6], now=args[6])  # type: ignore[arg-type]
    forged = {**h, "X-Cache-Edge-Tenant": "globex"}
    with pytest.raises(SignatureError):
        verify_headers(["old-secret-xxxxxxxx"], "POST", "/v1/query", forged, b"body", 60, now=1010)


async def test_singleflight_shares_one_call_and_survives_cancelled_callers() -> None:
    group: Group[int] = Group()
    calls = 0
    gate = asyncio.Event()

    async def work() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        return 42

    tasks = [asyncio.create_task(group.do("k", work)) for _ in range(10)]
    await asyncio.sleep(0)
    tasks[0].cancel()  # the leader's client goes away: the others must still get the result
    gate.set()
    results = await asyncio.gather(*tasks[1:])
    assert calls == 1
    assert [r for r, _ in results] == [42] * 9
    assert sum(shared for _, shared in results) >= 8
    assert not group.running("k")


def test_api_keys() -> None:
    keys = ApiKeys([TenantConfig("acme", (hashlib.sha256(b"k1").hexdigest(),), "postgresql://x/y")])
    assert keys.tenant_for("Bearer k1") == "acme"
    for header in (None, "", "Basic k1", "Bearer ", "Bearer k2", "Bearer " + "x" * 300):
        with pytest.raises(Unauthorized) as info:
            keys.tenant_for(header)
        assert "acme" not in info.value.message


def test_request_limits() -> None:
    limits = Limits(max_sql_length=20, max_params=2, max_depth=3, max_string_length=5)
    assert parse_query({"sql": "SELECT 1", "params": [1]}, limits).statement.params == [1]
    for body, exc in (
        ({"sql": "x" * 21}, PayloadTooLarge),
        ({"sql": "SELECT 1", "params": [1, 2, 3]}, PayloadTooLarge),
        ({"sql": "SELECT 1", "params": ["toolong"]}, PayloadTooLarge),
        ({"sql": "SELECT 1", "params": [[[[[1]]]]]}, BadRequest),
        ({"sql": "  "}, BadRequest),
        ({"sql": 1}, BadRequest),
        ({"sql": "SELECT 1", "params": {"a": 1}}, BadRequest),
        ({"sql": "SELECT 1", "extra": 1}, BadRequest),
        ([1], BadRequest),
    ):
        with pytest.raises(exc):
            parse_query(body, limits)
    tx = parse_transaction(
        {"statements": [{"sql": "SELECT 1"}], "isolationLevel": "serializable"}, limits
    )
    assert tx.isolation == "serializable"
    for body in (
        {"statements": []},
        {"statements": [{"sql": "S", "x": 1}]},
        {"statements": [{"sql": "S"}], "isolationLevel": "chaos"},
    ):
        with pytest.raises(BadRequest):
            parse_transaction(body, limits)


def test_entry_keeps_warnings_and_reads_the_old_format() -> None:
    core, _ = split_core(packb(ORIGIN_ANSWER))
    warned = Entry.decode(Entry(5, core, 3, ("depends on now()",)).encode())
    assert warned is not None and warned.warnings == ("depends on now()",)
    assert warned.core == core and warned.watermark == 3
    import struct

    old = struct.pack(">Bqq", 1, 5, 3) + core  # written by a node of the first format
    legacy = Entry.decode(old)
    assert legacy is not None and legacy.core == core and legacy.warnings == ()


def test_plan_dependencies_walks_subplans() -> None:
    from origin.core.dependencies import plan_dependencies

    plan = {
        "Relation Name": "orders", "Schema": "shop", "Output": ["orders.id", "now()"],
        "Filter": "(orders.total > $0) AND (CURRENT_USER = 'x'::name)",
        "Plans": [{"Relation Name": "users", "Schema": "public", "Output": ["count(*)"]}],
    }  # fmt: skip
    tables, functions, keywords = plan_dependencies(plan)
    assert tables == {"shop.orders", "public.users"}
    assert {"now", "count"} <= functions
    assert keywords == {"current_user"}


def test_node_and_origin_share_one_request_id_rule() -> None:
    from cache_edge.common.request_ids import request_id

    for good in ("node-abc.123", "a:b", "x" * 128):
        assert request_id(good) == good
    made = {request_id(bad) for bad in (None, "", "x" * 129, "bad id", "a\nb", "é")}
    assert len(made) == 6  # each replaced by a fresh id
    assert all(len(rid) == 32 and rid.isalnum() for rid in made)


async def test_stop_tasks_outlasts_a_swallowed_cancellation() -> None:
    """A library that turns a cancellation into an error (redis-py did, on connect) must
    not make a graceful shutdown hang: the request to stop is repeated."""
    import asyncio

    from cache_edge.server.tasks import stop_tasks

    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed < 2:
                    swallowed += 1  # what the library did: handled, and the loop goes on
                    continue
                raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await stop_tasks([task, None], timeout=5)
    assert task.cancelled() and swallowed == 2
