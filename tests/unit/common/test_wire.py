"""The codec: exact round trips through msgpack, readable JSON, hostile input rejected."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import msgpack
import pytest

from cache_edge.common.errors import BadRequest
from cache_edge.common.wire import (
    format_duration,
    json_dumps,
    json_loads,
    packb,
    parse_duration,
    request_format,
    response_format,
    unpackb,
)

VALUES = [
    None,
    True,
    2**63 - 1,
    -(2**63),
    1.5,
    "héllo ☃",
    b"\x00\xffbytes",
    Decimal("12345678901234567890.123456789"),
    Decimal("NaN"),
    dt.date(2026, 11, 24),
    dt.time(21, 0, 0, 123456),
    dt.time(21, 0, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    dt.datetime(2026, 11, 24, 21, 0, 0, 123000),
    dt.datetime(2026, 11, 24, 21, 0, 0, 123000, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
    dt.timedelta(days=-3, seconds=5, microseconds=7),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    [1, None, [2, 3]],
    {"a": [1, "x", None, True, 1.5]},
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_msgpack_round_trip_is_exact(value: object) -> None:
    back = unpackb(packb(value))
    assert back == value or (isinstance(value, Decimal) and value.is_nan() and back.is_nan())
    assert type(back) is type(value)
    if isinstance(value, (dt.datetime, dt.time)):
        assert back.utcoffset() == value.utcoffset()


def test_json_is_readable() -> None:
    out = json_loads(
        json_dumps(
            {"n": Decimal("1.10"), "b": b"\x01\x02", "d": dt.date(2026, 1, 2), "i": dt.timedelta(1)}
        )
    )
    assert out == {"n": "1.10", "b": "AQI=", "d": "2026-01-02", "i": "P1DT0S"}


def test_duration_round_trip() -> None:
    for td in (
        dt.timedelta(0),
        dt.timedelta(days=2, seconds=3, microseconds=500),
        -dt.timedelta(1),
    ):
        assert parse_duration(format_duration(td)) == td
    with pytest.raises(ValueError):
        parse_duration("1 day")


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # never-used byte
        packb(1) + b"\x00",  # trailing data
        b"\x91" * 5000 + b"\x00",  # nested far too deep
        msgpack.packb(msgpack.ExtType(42, b"x")),  # unknown extension
        msgpack.packb(msgpack.ExtType(1, b"not a number")),  # bad Decimal
        b"\xa3\xff\xfe\xfd",  # invalid UTF-8 string
        b"\x81\x01\x02",  # non-string map key
    ],
)
def test_hostile_msgpack_is_bad_request(data: bytes) -> None:
    with pytest.raises(BadRequest):
        unpackb(data)


@pytest.mark.parametrize("data", [b"{", b'{"a": "\xff"}', b"[" * 2000 + b"]" * 2000])
def test_hostile_json_is_bad_request(data: bytes) -> None:
    with pytest.raises(BadRequest):
        json_loads(data)


def test_content_negotiation() -> None:
    assert request_format("application/msgpack") == "msgpack"
    assert request_format("application/x-msgpack; charset=binary") == "msgpack"
    assert request_format(None) == "json"
    with pytest.raises(BadRequest, match="Content-Type"):
        request_format("text/xml")
    assert response_format("application/msgpack", "json") == "msgpack"
    assert response_format("*/*", "msgpack") == "msgpack"
    assert response_format(None, "json") == "json"
    # Memoized per value: asking again gives the same answer, and a bad type stays bad.
    assert response_format("application/msgpack", "json") == "msgpack"
    with pytest.raises(BadRequest, match="Content-Type"):
        request_format("text/xml")


def test_packb_is_msgpacks_packb_after_failures_and_large_values() -> None:
    """packb reuses one Packer per thread: a failed or a large pack must not leave
    anything behind in the next answer."""
    expected = msgpack.packb({"a": 1}, use_bin_type=True)
    with pytest.raises(TypeError):
        packb({"a": [1, object()]})
    assert packb({"a": 1}) == expected
    large = [b"x" * 1000] * 1000  # grows the buffer past what a Packer may keep
    assert unpackb(packb(large)) == large
    assert packb({"a": 1}) == expected


def test_packb_from_several_threads() -> None:
    import threading

    failures: list[object] = []

    def work(n: int) -> None:
        for i in range(2000):
            value = {"n": n, "i": i, "s": "x" * (i % 70), "d": Decimal(i)}
            if unpackb(packb(value)) != value:
                failures.append(value)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
