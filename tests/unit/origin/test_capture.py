"""The pure parts of the WAL capture and change streams: message parsing, value decoding,
cursors, and a subscription's buffering rules. (The real capture is tested end to end
against PostgreSQL in tests/integration/test_auto_invalidation.py and test_streams.py.)"""

from __future__ import annotations

import asyncio
import datetime as dt
import struct
import uuid
from decimal import Decimal

import pytest

from cache_edge.common.errors import BadRequest, SubscriberTooSlow
from cache_edge.common.protocol import parse_changes_poll, parse_ops, parse_tables
from cache_edge.node.streams import Event, Subscription
from origin.capture.change_log import format_cursor, parse_cursor
from origin.capture.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    Relation,
    Truncate,
    Update,
    format_lsn,
    parse_lsn,
    parse_message,
)
from origin.capture.text_values import decode_text


def _s(text: str) -> bytes:
    return text.encode() + b"\x00"


def _tuple(*values: str | object | None) -> bytes:
    out = struct.pack(">h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is UNCHANGED:
            out += b"u"
        else:
            data = str(v).encode()
            out += b"t" + struct.pack(">i", len(data)) + data
    return out


def test_begin_commit_and_relation() -> None:
    begin = parse_message(b"B" + struct.pack(">QqI", 0x1_0000_0010, 1_000_000, 77))
    assert begin == Begin(0x1_0000_0010, dt.datetime(2000, 1, 1, 0, 0, 1, tzinfo=dt.UTC), 77)
    commit = parse_message(b"C\x00" + struct.pack(">QQq", 5, 9, 0))
    assert isinstance(commit, Commit) and (commit.commit_lsn, commit.end_lsn) == (5, 9)
    rel = parse_message(
        b"R"
        + struct.pack(">I", 16384)
        + _s("public")
        + _s("orders")
        + b"d"
        + struct.pack(">h", 2)
        + b"\x01" + _s("id") + struct.pack(">Ii", 23, -1)
        + b"\x00" + _s("total") + struct.pack(">Ii", 1700, -1)
    )  # fmt: skip
    assert isinstance(rel, Relation) and rel.qualified == "public.orders"
    assert [(c.name, c.type_oid, c.key) for c in rel.columns] == [
        ("id", 23, True),
        ("total", 1700, False),
    ]
    # pg_catalog relations come with an empty namespace.
    cat = parse_message(b"R" + struct.pack(">I", 1) + _s("") + _s("t") + b"d" + b"\x00\x00")
    assert isinstance(cat, Relation) and cat.schema == "pg_catalog"


def test_row_messages() -> None:
    ins = parse_message(b"I" + struct.pack(">I", 7) + b"N" + _tuple("1", None, "x"))
    assert ins == Insert(7, ("1", None, "x"))
    upd = parse_message(
        b"U" + struct.pack(">I", 7) + b"K" + _tuple("1", None) + b"N" + _tuple("2", UNCHANGED)
    )
    assert upd == Update(7, ("2", UNCHANGED), ("1", None), True)
    plain = parse_message(b"U" + struct.pack(">I", 7) + b"N" + _tuple("3"))
    assert plain == Update(7, ("3",), None, False)
    dele = parse_message(b"D" + struct.pack(">I", 7) + b"O" + _tuple("1", "a"))
    assert dele == Delete(7, ("1", "a"), False)
    trunc = parse_message(b"T" + struct.pack(">ib", 2, 0) + struct.pack(">II", 7, 8))
    assert trunc == Truncate((7, 8))
    assert parse_message(b"Y" + struct.pack(">I", 1) + _s("public") + _s("t")) is None
    with pytest.raises(ValueError, match="unknown pgoutput message"):
        parse_message(b"Z")


def test_lsn_text_round_trip() -> None:
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert format_lsn(parse_lsn("16/B374D848")) == "16/B374D848"
    assert format_lsn(0) == "0/0"


@pytest.mark.parametrize(
    ("oid", "text", "value"),
    [
        (16, "t", True),
        (20, "-9223372036854775808", -9223372036854775808),
        (1700, "12.50", Decimal("12.50")),
        (701, "NaN", "nan"),
        (17, "\\x00ff", b"\x00\xff"),
        (3802, '{"a": [1, null]}', {"a": [1, None]}),
        (2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", uuid.UUID(int=0)),
        (1184, "2026-11-25 01:16:19.123+00", dt.datetime(2026, 11, 25, 1, 16, 19, 123000, dt.UTC)),
        (1184, "infinity", "infinity"),
        (1082, "2026-11-25", dt.date(2026, 11, 25)),
        (1007, "{1,NULL,3}", [1, None, 3]),
        (1009, '{"a,b","c\\"d",e}', ["a,b", 'c"d', "e"]),
        (1007, "{{1,2},{3,4}}", "{{1,2},{3,4}}"),
        (600, "(1,2)", "(1,2)"),
    ],
)
def test_text_values(oid: int, text: str, value: object) -> None:
    got = decode_text(oid, text)
    if value == "nan":
        assert got != got  # NaN
    elif oid == 2950:
        assert got == uuid.UUID(text)
    else:
        assert got == value and type(got) is type(value)


def test_cursors_sort_like_positions() -> None:
    a, b, c = format_cursor(0x10, 2), format_cursor(0x10, 10), format_cursor(0x1_0000_0000, 0)
    assert a < b < c
    assert parse_cursor(b) == (0x10, 10)
    for bad in ("", "10-2", "000000000000001G-00000000", "0000000000000010-0000000a"):
        with pytest.raises(BadRequest):
            parse_cursor(bad)


def test_table_and_op_filters_are_checked() -> None:
    assert parse_tables(["public.b", "public.a", "public.a"]) == ["public.a", "public.b"]
    for bad in ([], ["orders"], ["public.orders; drop"], ["a.b.c"], [1], "public.x"):
        with pytest.raises(BadRequest):
            parse_tables(bad)
    assert parse_ops(None) is None and parse_ops(["delete", "insert"]) == ["delete", "insert"]
    with pytest.raises(BadRequest):
        parse_ops(["upsert"])
    poll = parse_changes_poll({"after": None, "tables": ["public.t"], "wait": 2})
    assert (poll.after, poll.tables, poll.ops, poll.wait, poll.limit) == (
        None, ["public.t"], None, 2.0, 1000
    )  # fmt: skip
    for bad in ([], {"after": 1}, {"wait": 31}, {"limit": 0}, {"limit": True}, {"extra": 1}):
        with pytest.raises(BadRequest):
            parse_changes_poll(bad)


def _event(n: int, table: str = "public.t", op: str = "insert") -> Event:
    return Event({"cursor": format_cursor(n, 0), "table": table, "op": op})


async def test_subscription_filters_dedupes_and_batches() -> None:
    sub = Subscription("acme", frozenset({"public.t"}), frozenset({"insert"}), 10, _event(1).cursor)  # type: ignore[arg-type]
    sub.caught_up()
    for ev in (_event(1), _event(2), _event(2), _event(3, "public.u"), _event(4, op="delete")):
        sub.offer(ev)
    sub.offer(_event(5))
    batch = await sub.next(1.0)
    assert isinstance(batch, list)
    assert [e.cursor for e in batch] == [format_cursor(2, 0), format_cursor(5, 0)]
    assert await sub.next(0.01) is None


async def test_subscription_holds_live_events_while_catching_up() -> None:
    sub = Subscription("acme", frozenset({"public.t"}), None, 10, format_cursor(0, 0))
    sub.offer(_event(5))  # live, held back
    sub.deliver(_event(3))  # history
    sub.deliver(_event(5))  # history overlapping the live feed
    sub.caught_up()
    batch = await sub.next(1.0)
    assert isinstance(batch, list)
    assert [e.cursor for e in batch] == [format_cursor(3, 0), format_cursor(5, 0)]


async def test_a_subscriber_that_falls_behind_is_cut_off_with_a_reason() -> None:
    sub = Subscription("acme", frozenset({"public.t"}), None, 3, format_cursor(0, 0))
    sub.caught_up()
    for n in range(1, 6):
        sub.offer(_event(n))
    assert isinstance(sub.closed, SubscriberTooSlow)
    assert "Last-Event-ID: " + format_cursor(3, 0) in sub.closed.message
    end = await sub.next(1.0)
    assert end is sub.closed  # queued events were dropped: the client resumes by cursor
    assert sub.closed_event.is_set()
    assert await asyncio.wait_for(sub.room(), 1.0)  # a closed subscription never blocks
