"""Protocol 3.0 framing: whole messages are cut off a buffer; bad lengths stop the stream."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cache_edge.pgwire.messages import (
    ProtocolViolation,
    error_response,
    message,
    parse_error_fields,
    parse_startup,
    split_messages,
)


def test_split_keeps_a_partial_message_for_later() -> None:
    a, b = message(b"Q", b"SELECT 1\x00"), message(b"S")
    msgs, used = split_messages(a + b + b[:3], 1 << 20)
    assert msgs == [a, b] and used == len(a + b)


@pytest.mark.parametrize("length", [0, 3, (1 << 20) + 1, 1 << 30])
def test_split_refuses_lengths_outside_bounds(length: int) -> None:
    with pytest.raises(ProtocolViolation, match=f"invalid message length {length}"):
        split_messages(b"Q" + struct.pack("!I", length) + b"x" * 8, 1 << 20)


@given(st.lists(st.tuples(st.sampled_from(b"QPBDESHCdcf"), st.binary(max_size=64))))
def test_split_round_trips_any_sequence(parts: list[tuple[int, bytes]]) -> None:
    msgs = [message(bytes([k]), body) for k, body in parts]
    data = b"".join(msgs)
    for cut in (len(data), max(0, len(data) - 1)):
        got, used = split_messages(data[:cut], 1 << 20)
        assert got == msgs[: len(got)] and used == sum(len(m) for m in got)


def test_startup_parameters_and_their_errors() -> None:
    assert parse_startup(b"user\x00acme\x00database\x00shop\x00\x00") == {
        "user": "acme",
        "database": "shop",
    }
    for bad in (b"user\x00acme\x00", b"user\x00\x00\x00x\x00\x00", b"\x00acme\x00\x00"):
        with pytest.raises(ProtocolViolation):
            parse_startup(bad)


def test_error_response_fields_round_trip() -> None:
    fields = parse_error_fields(error_response("28P01", "nope", "FATAL", hint="try again"))
    assert fields == {"S": "FATAL", "V": "FATAL", "C": "28P01", "M": "nope", "H": "try again"}
