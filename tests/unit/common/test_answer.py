"""The origin's answer to a node, defined once: what the origin encodes, the node reads."""

from __future__ import annotations

import pytest

from cache_edge.common.answer import (
    QUERY_CORE,
    TRANSACTION_CORE,
    OriginAnswer,
    WriteInvalidation,
    core_to_dict,
    read_answer,
    split_core,
    with_info,
)
from cache_edge.common.errors import OriginUnavailable
from cache_edge.common.wire import json_loads, packb, unpackb
from cache_edge.node.entry import Entry, result_json, result_msgpack
from origin.core.results import (
    ResultSet,
    RowBuffer,
    SizeBudget,
    encode_query_response,
    encode_transaction_response,
)

COLUMNS = [{"name": "id", "type": "int4"}]
FULL = OriginAnswer(
    1_700_000_000_123,
    watermark=41,
    tables=("public.t",),
    warnings=("depends on now()",),
    invalidation=WriteInvalidation(True, "inv-1", 7, "epoch-1"),
    tags=("table:public.t",),
)


def result(*ids: int) -> ResultSet:
    buf = RowBuffer(COLUMNS, SizeBudget(10_000))
    buf.add([(i,) for i in ids])
    return buf.finish()


@pytest.mark.parametrize(
    "answer",
    [FULL, OriginAnswer(5, watermark=0), OriginAnswer(9, invalidation=WriteInvalidation(False))],
)
def test_what_the_origin_encodes_the_node_reads(answer: OriginAnswer) -> None:
    raw = encode_query_response(result(1, 2), answer, "msgpack")
    core, read = read_answer(raw)
    assert read == answer
    assert core in raw  # cut out, not re-encoded
    assert core_to_dict(core) == {"columns": COLUMNS, "rows": [[1], [2]], "rowCount": 2}


def test_fields_keep_the_contract_order_and_leave_empty_ones_out() -> None:
    raw = encode_query_response(result(1), FULL, "msgpack")
    assert list(unpackb(raw)) == [
        *QUERY_CORE,
        "producedAt",
        "watermark",
        "tables",
        "warnings",
        "invalidation",
        "tags",
    ]
    assert unpackb(raw)["invalidation"] == {
        "id": "inv-1",
        "seq": 7,
        "recorded": True,
        "epoch": "epoch-1",
    }
    assert OriginAnswer(3).fields() == {"producedAt": 3}  # a transaction's: no watermark
    json_body = json_loads(encode_query_response(result(1), FULL, "json"))
    assert {k: v for k, v in json_body.items() if k not in QUERY_CORE} == FULL.fields()


def test_an_entry_is_made_from_the_answer_without_touching_rows() -> None:
    raw = encode_query_response(result(1, 2, 3), FULL, "msgpack")
    entry = Entry.from_origin(raw)
    assert (entry.produced_at_ms, entry.watermark) == (FULL.produced_at, 41)
    assert entry.warnings == FULL.warnings and entry.tags == FULL.tags
    assert Entry.decode(entry.encode()) == entry
    body = unpackb(result_msgpack(entry.core, {"cacheStatus": "ttl"}))
    assert body == {
        "columns": COLUMNS,
        "rows": [[1], [2], [3]],
        "rowCount": 3,
        "info": {"cacheStatus": "ttl"},
    }


def test_a_transaction_is_spliced_like_a_query() -> None:
    answer = OriginAnswer(9, invalidation=WriteInvalidation(True, "inv-2", 8, ""))
    raw = encode_transaction_response([result(1), result()], answer, "msgpack")
    core, read = read_answer(raw, TRANSACTION_CORE)
    assert read == answer and core in raw
    info = {"cacheStatus": "none"}
    spliced = with_info(core, TRANSACTION_CORE, info)
    assert spliced == result_msgpack(core, info, TRANSACTION_CORE)
    expected = {
        "results": [
            {"columns": COLUMNS, "rows": [[1]], "rowCount": 1},
            {"columns": COLUMNS, "rows": [], "rowCount": 0},
        ],
        "info": info,
    }
    assert unpackb(spliced) == expected
    assert json_loads(result_json(core, info, TRANSACTION_CORE)) == expected


@pytest.mark.parametrize(
    "fields",
    [
        {"producedAt": "soon"},
        {"producedAt": 1, "watermark": 1.5},
        {"producedAt": 1, "warnings": "not a list"},
        {"producedAt": 1, "tags": [1, 2]},
        {"producedAt": 1, "invalidation": ["id"]},
        {"producedAt": 1, "invalidation": {"recorded": "yes"}},
    ],
)
def test_a_malformed_answer_is_origin_unavailable(fields: dict[str, object]) -> None:
    raw = packb({"columns": [], "rows": [], "rowCount": 0, **fields})
    with pytest.raises(OriginUnavailable):
        read_answer(raw)


def test_an_answer_without_its_core_first_is_origin_unavailable() -> None:
    with pytest.raises(OriginUnavailable):
        split_core(packb({"rows": [], "columns": [], "rowCount": 0}))
    with pytest.raises(OriginUnavailable):
        read_answer(packb({"columns": [], "rows": [], "rowCount": 0}), TRANSACTION_CORE)
    with pytest.raises(OriginUnavailable):
        read_answer(b"\x85\xa7columns")  # cut short
