"""Coercing JSON-decoded params to the types PostgreSQL inferred, and result value fallbacks."""

from __future__ import annotations

import datetime as dt
import ipaddress
import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from asyncpg.types import Type

from cache_edge.common.errors import BadRequest
from origin.core.types import coerce_params, to_wire_value, type_name


def t(name: str) -> Type:
    kind = "array" if name.endswith("[]") or name.startswith("_") else "scalar"
    return Type(oid=0, name=name, kind=kind, schema="pg_catalog")


PLUS_2 = dt.timezone(dt.timedelta(hours=2))

CASES: list[tuple[str, Any, Any]] = [
    ("int2", "7", 7),
    ("int4", " -12 ", -12),
    ("int8", "9223372036854775807", 2**63 - 1),
    ("int8", 5.0, 5),
    ("float8", "1.5", 1.5),
    ("float4", "NaN", "nan"),
    ("numeric", "12345678901234567890.123456789", Decimal("12345678901234567890.123456789")),
    ("numeric", "NaN", "nan"),
    ("numeric", 0.1, Decimal("0.1")),
    ("numeric", 42, Decimal(42)),
    ("bool", "true", True),
    ("bool", "off", False),
    (
        "uuid",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    ),
    ("date", "2024-02-29", dt.date(2024, 2, 29)),
    ("time", "13:45:30.5", dt.time(13, 45, 30, 500000)),
    ("time", "13:45:30+02:00", dt.time(13, 45, 30)),  # like PostgreSQL, the offset is ignored
    ("timetz", "13:45:30+02:00", dt.time(13, 45, 30, tzinfo=PLUS_2)),
    ("timetz", "13:45:30", dt.time(13, 45, 30, tzinfo=dt.UTC)),
    ("timestamp", "2024-02-29T13:45:30", dt.datetime(2024, 2, 29, 13, 45, 30)),
    ("timestamp", "2024-02-29T13:45:30+02:00", dt.datetime(2024, 2, 29, 13, 45, 30)),
    (
        "timestamptz",
        "2024-02-29T13:45:30+02:00",
        dt.datetime(2024, 2, 29, 13, 45, 30, tzinfo=PLUS_2),
    ),
    ("timestamptz", "2024-02-29T13:45:30Z", dt.datetime(2024, 2, 29, 13, 45, 30, tzinfo=dt.UTC)),
    ("timestamptz", "2024-02-29 13:45:30", dt.datetime(2024, 2, 29, 13, 45, 30, tzinfo=dt.UTC)),
    ("interval", "P1DT3600.5S", dt.timedelta(days=1, seconds=3600, microseconds=500000)),
    ("interval", "-P0DT30S", dt.timedelta(seconds=-30)),
    ("bytea", "AP9iaW4=", b"\x00\xffbin"),
    ("int4[]", ["1", None, 3], [1, None, 3]),
    ("int4[]", [["1", "2"], ["3", "4"]], [[1, 2], [3, 4]]),
    (
        "uuid[]",
        ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"],
        [uuid.UUID(int=0xA0EEBC999C0B4EF8BB6D6BB9BD380A11)],
    ),
    ("_date", ["2024-01-01"], [dt.date(2024, 1, 1)]),
    ("text[]", ["a", None], ["a", None]),
    ("jsonb", {"a": [1, "2"]}, {"a": [1, "2"]}),
    ("jsonb", "just a string", "just a string"),
    ("text", "x", "x"),
    ("int4", None, None),
]


@pytest.mark.parametrize(("pg_type", "given", "expected"), CASES)
def test_coerces_json_values_to_inferred_types(pg_type: str, given: Any, expected: Any) -> None:
    (got,) = coerce_params([given], [t(pg_type)])
    if expected == "nan":
        assert got != got  # NaN, as float or Decimal
        return
    assert got == expected
    assert type(got) is type(expected)
    if isinstance(expected, (dt.datetime, dt.time)):
        assert got.utcoffset() == expected.utcoffset()


def test_exact_msgpack_values_pass_through_untouched() -> None:
    values = [Decimal("1.10"), uuid.uuid4(), dt.datetime(2024, 1, 1, tzinfo=dt.UTC), b"\x00", True]
    types = [t("numeric"), t("uuid"), t("timestamptz"), t("bytea"), t("bool")]
    assert coerce_params(values, types) == values


@pytest.mark.parametrize(
    ("pg_type", "given"),
    [
        ("int4", "twelve"),
        ("numeric", "1.2.3"),
        ("uuid", "not-a-uuid"),
        ("date", "2024-02-30"),
        ("timestamptz", "yesterday-ish"),
        ("bytea", "not base64!"),
        ("bool", "maybe"),
        ("interval", "3 days"),
        ("int4[]", ["1", "x"]),
    ],
)
def test_unreadable_value_is_bad_request_naming_the_parameter(pg_type: str, given: Any) -> None:
    with pytest.raises(BadRequest) as info:
        coerce_params([1, given], [t("int4"), t(pg_type)])
    assert info.value.extra["field"] == "params[1]"
    assert pg_type.removesuffix("[]") in info.value.message


def test_parameter_count_mismatch_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="2 parameter"):
        coerce_params([1], [t("int4"), t("int4")])


def test_type_names_spell_arrays_with_brackets() -> None:
    assert type_name(t("int4")) == "int4"
    assert type_name(t("_int4")) == "int4[]"
    assert type_name(t("text[]")) == "text[]"


def test_unencodable_result_values_become_text_or_lists() -> None:
    assert to_wire_value(ipaddress.ip_address("10.0.0.1")) == "10.0.0.1"
    assert to_wire_value(ipaddress.ip_network("10.0.0.0/8")) == "10.0.0.0/8"
    assert to_wire_value(ipaddress.ip_interface("10.0.0.1/8")) == "10.0.0.1/8"
    assert to_wire_value(asyncpg.Range(1, 5)) == "[1,5)"
    assert to_wire_value(asyncpg.Range(None, 5, upper_inc=True)) == "(,5]"
    assert to_wire_value(asyncpg.Range(empty=True)) == "empty"
    assert to_wire_value(asyncpg.BitString("101")) == "101"
    assert to_wire_value(asyncpg.Point(1, 2)) == [1.0, 2.0]
    assert to_wire_value([ipaddress.ip_address("::1"), None]) == ["::1", None]
    assert to_wire_value({"k": ipaddress.ip_address("::1")}) == {"k": "::1"}
    assert to_wire_value(Decimal("1.5")) == Decimal("1.5")
    assert to_wire_value({"big": [10**30]}) == {"big": [Decimal(10**30)]}
    assert to_wire_value(2**63 - 1) == 2**63 - 1
    assert to_wire_value(object.__new__(_Odd)) == "odd"


class _Odd:
    def __str__(self) -> str:
        return "odd"
