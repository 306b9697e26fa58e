"""Response bodies: fixed key order for splicing, the JSON shape, and the byte budget."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from decimal import Decimal

import pytest

from cache_edge.common.answer import OriginAnswer, split_core
from cache_edge.common.errors import ResponseTooLarge
from cache_edge.common.wire import json_loads, packb, unpackb
from origin.core.results import (
    ResultSet,
    RowBuffer,
    SizeBudget,
    encode_query_response,
    encode_transaction_response,
    row_count_from_status,
)

COLUMNS = [{"name": "id", "type": "int4"}, {"name": "at", "type": "timetz"}]
TZ = dt.timezone(dt.timedelta(hours=5, minutes=30))
ROWS = [(1, dt.time(12, 0, tzinfo=TZ)), (2, None)]


def result(rows: Sequence[Sequence[object]] = ROWS) -> ResultSet:
    buf = RowBuffer(COLUMNS, SizeBudget(10_000))
    buf.add(rows)
    return buf.finish()


def test_msgpack_answer_has_keys_in_contract_order_and_exact_values() -> None:
    raw = encode_query_response(result(), OriginAnswer(1_700_000_000_123, 41), "msgpack")
    decoded = unpackb(raw)
    assert list(decoded) == ["columns", "rows", "rowCount", "producedAt", "watermark"]
    assert decoded == {
        "columns": COLUMNS,
        "rows": [[1, dt.time(12, 0, tzinfo=TZ)], [2, None]],
        "rowCount": 2,
        "producedAt": 1_700_000_000_123,
        "watermark": 41,
    }
    # Same bytes a plain packb of the ordered map gives: the node can splice either.
    assert raw == packb(decoded)


def test_first_three_entries_are_a_contiguous_spliceable_prefix() -> None:
    raw = encode_query_response(result(), OriginAnswer(5, 0), "msgpack")
    core = packb("columns") + packb(COLUMNS) + packb("rows")
    assert raw.startswith(b"\x85" + core)
    tail = packb("rowCount") + packb(2) + packb("producedAt") + packb(5)
    assert raw.endswith(tail + packb("watermark") + packb(0))


def test_node_splitter_accepts_the_origin_answer() -> None:
    raw = encode_query_response(result(), OriginAnswer(5, 0), "msgpack")
    core, rest = split_core(raw)
    assert rest == {"producedAt": 5, "watermark": 0}
    assert core in raw


def test_json_answer_shape() -> None:
    body = json_loads(encode_query_response(result(), OriginAnswer(7, 0), "json"))
    assert body == {
        "columns": COLUMNS,
        "rows": [[1, "12:00:00+05:30"], [2, None]],
        "rowCount": 2,
        "producedAt": 7,
        "watermark": 0,
    }


def test_transaction_answer() -> None:
    empty = ResultSet([], b"", 0, row_count_from_status("UPDATE 3"))
    raw = encode_transaction_response([result(), empty], OriginAnswer(9), "msgpack")
    decoded = unpackb(raw)
    assert list(decoded) == ["results", "producedAt"]
    assert [list(r) for r in decoded["results"]] == [["columns", "rows", "rowCount"]] * 2
    assert decoded["results"][1] == {"columns": [], "rows": [], "rowCount": 3}
    assert json_loads(encode_transaction_response([empty], OriginAnswer(9), "json")) == {
        "results": [{"columns": [], "rows": [], "rowCount": 3}],
        "producedAt": 9,
    }


@pytest.mark.parametrize(
    ("tag", "count"),
    [("UPDATE 3", 3), ("INSERT 0 5", 5), ("DELETE 0", 0), ("CREATE TABLE", 0), (None, 0)],
)
def test_row_count_from_status_tag(tag: str | None, count: int) -> None:
    assert row_count_from_status(tag) == count


def test_budget_refuses_as_soon_as_the_limit_is_passed() -> None:
    budget = SizeBudget(200)
    buf = RowBuffer(COLUMNS, budget)
    consumed = 0

    def rows() -> object:
        nonlocal consumed
        for i in range(1_000_000):
            consumed += 1
            yield (i, "x" * 20)

    with pytest.raises(ResponseTooLarge) as info:
        buf.add(rows())  # type: ignore[arg-type]
    assert consumed < 10  # stopped right away, not after building a million rows
    assert info.value.status == 422


def test_budget_is_shared_across_statements() -> None:
    budget = SizeBudget(120)
    RowBuffer(COLUMNS, budget).add([(1, "a" * 30)])
    with pytest.raises(ResponseTooLarge):
        RowBuffer(COLUMNS, budget).add([(2, "b" * 30)])


def test_values_the_codec_cannot_encode_are_sent_as_text() -> None:
    buf = RowBuffer(COLUMNS, SizeBudget(10_000))
    buf.add([(ipaddress.ip_address("10.1.2.3"), Decimal("1.5"))])
    packed = buf.finish()
    assert packed.python_rows() == [["10.1.2.3", Decimal("1.5")]]
