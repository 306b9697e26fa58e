"""Every supported PostgreSQL type round-trips exactly through msgpack; JSON has the right shape."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from cache_edge.common.wire import MSGPACK_TYPE
from tests.integration.origin_helpers import OriginClient, origin_settings, running_origin

PLUS_530 = dt.timezone(dt.timedelta(hours=5, minutes=30))
UID = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
DOC = {"a": [1, 2.5, {"b": None}], "s": "ü"}

# (column, type, value inserted by asyncpg, expected JSON rendering)
TYPES: list[tuple[str, str, Any, Any]] = [
    ("c_int2", "int2", 32767, 32767),
    ("c_int4", "int4", -2147483648, -2147483648),
    ("c_int8", "int8", 2**63 - 1, 2**63 - 1),
    (
        "c_num",
        "numeric",
        Decimal("12345678901234567890.123456789"),
        "12345678901234567890.123456789",
    ),
    ("c_nan", "numeric", Decimal("NaN"), "NaN"),
    ("c_f4", "float4", 1.5, 1.5),
    ("c_f8", "float8", 0.1, 0.1),
    ("c_bool", "bool", True, True),
    ("c_text", "text", "héllo wörld ✓ 🚀", "héllo wörld ✓ 🚀"),
    ("c_bytea", "bytea", b"\x00\xffbin", "AP9iaW4="),
    ("c_date", "date", dt.date(2024, 2, 29), "2024-02-29"),
    ("c_time", "time", dt.time(13, 45, 30, 123456), "13:45:30.123456"),
    ("c_timetz", "timetz", dt.time(13, 45, 30, tzinfo=PLUS_530), "13:45:30+05:30"),
    (
        "c_ts",
        "timestamp",
        dt.datetime(2024, 2, 29, 13, 45, 30, 123456),
        "2024-02-29T13:45:30.123456",
    ),
    (
        "c_tstz",
        "timestamptz",
        dt.datetime(2024, 2, 29, 13, 45, 30, 123456, tzinfo=PLUS_530),
        "2024-02-29T08:15:30.123456+00:00",
    ),
    (
        "c_interval",
        "interval",
        dt.timedelta(days=3, seconds=3600, microseconds=5),
        "P3DT3600.000005S",
    ),
    ("c_uuid", "uuid", UID, str(UID)),
    ("c_json", "json", DOC, DOC),
    ("c_jsonb", "jsonb", DOC, DOC),
    ("c_int_arr", "int4[]", [1, 2, 3], [1, 2, 3]),
    ("c_text_arr", "text[]", ["a", None, "c"], ["a", None, "c"]),
    ("c_2d", "int4[]", [[1, 2], [3, 4]], [[1, 2], [3, 4]]),
    ("c_null", "text", None, None),
]
TABLE = "origin_types_roundtrip"


@pytest.fixture
async def origin(pg_databases: tuple[str, str]) -> AsyncIterator[OriginClient]:
    conn = await asyncpg.connect(pg_databases[0])
    try:
        await conn.set_type_codec("json", schema="pg_catalog", encoder=_dumps, decoder=str)
        await conn.set_type_codec("jsonb", schema="pg_catalog", encoder=_dumps, decoder=str)
        cols = ", ".join(f"{name} {pg_type}" for name, pg_type, _, _ in TYPES)
        await conn.execute(f"DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} ({cols})")
        marks = ", ".join(f"${i + 1}" for i in range(len(TYPES)))
        await conn.execute(f"INSERT INTO {TABLE} VALUES ({marks})", *[v for _, _, v, _ in TYPES])
    finally:
        await conn.close()
    async with running_origin(origin_settings(pg_databases)) as client:
        yield client


def _dumps(value: Any) -> str:
    import json

    return json.dumps(value)


def _same(got: Any, expected: Any) -> None:
    if isinstance(expected, Decimal) and expected.is_nan():
        assert isinstance(got, Decimal) and got.is_nan()
        return
    assert got == expected
    assert type(got) is type(expected)
    if isinstance(expected, (dt.datetime, dt.time)):
        assert (got.tzinfo is None) == (expected.tzinfo is None)
    if isinstance(expected, list):
        for g, e in zip(got, expected, strict=True):
            _same(g, e)


async def test_every_type_round_trips_exactly_through_msgpack(origin: OriginClient) -> None:
    reply = await origin.query(f"SELECT * FROM {TABLE}")
    assert reply.status == 200, reply.body
    assert [c["name"] for c in reply.body["columns"]] == [name for name, _, _, _ in TYPES]
    assert [c["type"] for c in reply.body["columns"]] == [t for _, t, _, _ in TYPES]
    (row,) = reply.body["rows"]
    for (name, _, expected, _), got in zip(TYPES, row, strict=True):
        try:
            _same(got, expected)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {got!r} != {expected!r}") from exc
    tstz = row[[name for name, *_ in TYPES].index("c_tstz")]
    assert tstz.utcoffset() is not None  # an aware datetime, as asyncpg returns it


async def test_json_rendering_of_every_type(origin: OriginClient) -> None:
    reply = await origin.query(f"SELECT * FROM {TABLE}", fmt="json")
    assert reply.status == 200, reply.body
    assert reply.headers["Content-Type"].startswith("application/json")
    (row,) = reply.body["rows"]
    for (name, _, _, expected), got in zip(TYPES, row, strict=True):
        assert got == expected, name
        assert type(got) is type(expected), name


async def test_typed_msgpack_params_round_trip(origin: OriginClient) -> None:
    values = [v for _, _, v, _ in TYPES]
    marks = ", ".join(f"${i + 1}::{t}" for i, (_, t, _, _) in enumerate(TYPES))
    reply = await origin.query(f"SELECT {marks}", *values)
    assert reply.status == 200, reply.body
    for (name, _, expected, _), got in zip(TYPES, reply.body["rows"][0], strict=True):
        if name == "c_f4":
            expected = 1.5
        _same(got, expected)


async def test_json_string_params_are_coerced_to_inferred_types(origin: OriginClient) -> None:
    params = [
        str(UID),
        "2024-02-29T13:45:30+02:00",
        "12345678901234567890.123456789",
        "2024-02-29",
        "AP9iaW4=",
        "P1DT30S",
        ["1", None, "3"],
        "13:45:30",
        "42",
        "true",
    ]
    sql = (
        "SELECT $1::uuid, $2::timestamptz, $3::numeric, $4::date, $5::bytea, $6::interval,"
        " $7::int4[], $8::time, $9::int8, $10::bool"
    )
    body = {"sql": sql, "params": params, "readOnly": True}
    # JSON in (as curl or a JSON-only caller sends), msgpack out to check exact types.
    reply = await origin.post("/v1/query", body, fmt="json", headers={"Accept": MSGPACK_TYPE})
    assert reply.status == 200, reply.body
    assert reply.body["rows"][0] == [
        UID,
        dt.datetime(2024, 2, 29, 11, 45, 30, tzinfo=dt.UTC),
        Decimal("12345678901234567890.123456789"),
        dt.date(2024, 2, 29),
        b"\x00\xffbin",
        dt.timedelta(days=1, seconds=30),
        [1, None, 3],
        dt.time(13, 45, 30),
        42,
        True,
    ]


async def test_coerced_params_work_in_where_clauses(origin: OriginClient) -> None:
    rows = await origin.rows(
        f"SELECT count(*) FROM {TABLE} WHERE c_uuid = $1 AND c_num = $2 AND c_date = $3",
        str(UID),
        "12345678901234567890.123456789",
        "2024-02-29",
    )
    assert rows == [[1]]


async def test_unreadable_param_is_bad_request(origin: OriginClient) -> None:
    reply = await origin.query("SELECT $1::uuid", "not-a-uuid")
    assert reply.status == 400
    assert reply.error["code"] == "bad_request"
    assert reply.error["field"] == "params[0]"


async def test_types_without_a_wire_extension_come_back_as_text(origin: OriginClient) -> None:
    rows = await origin.rows(
        "SELECT '10.0.0.1/8'::inet, int4range(1, 5), B'101', ROW(1, 'a'), 'ok'::text,"
        " '{\"n\": 123456789012345678901234567890}'::jsonb"
    )
    big = {"n": Decimal("123456789012345678901234567890")}
    assert rows == [["10.0.0.1/8", "[1,5)", "101", [1, "a"], "ok", big]]
