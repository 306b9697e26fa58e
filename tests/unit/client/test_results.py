"""Row, Rows, Result and Info as an SDK user handles them."""

from __future__ import annotations

import datetime as dt
import pickle

import pytest

from cache_edge.client import Column, Info, Row, Rows
from cache_edge.client.core import info_from_wire, result_from_wire

INFO = Info("miss", "eu", dt.datetime(2024, 1, 1, tzinfo=dt.UTC), 0.0, "r1")
COLUMNS = [Column("id", "int4"), Column("name", "text")]


def make_rows() -> Rows:
    return Rows.from_values(COLUMNS, [[1, "apple"], [2, "pear"]], INFO)


def test_row_by_index_and_by_name() -> None:
    row = make_rows()[0]
    assert row[0] == 1 and row["id"] == 1
    assert row[1] == row["name"] == "apple"
    assert row[-1] == "apple"
    assert row[0:2] == (1, "apple")


def test_row_is_tuple_like() -> None:
    row = make_rows()[1]
    ident, name = row
    assert (ident, name) == (2, "pear")
    assert len(row) == 2
    assert list(row) == [2, "pear"]
    assert "pear" in row
    assert row == (2, "pear")
    assert row == Row([2, "pear"], ["x", "y"])
    assert row != (2, "apple")
    assert hash(row) == hash((2, "pear"))


def test_row_mapping_helpers() -> None:
    row = make_rows()[0]
    assert row.keys() == ("id", "name")
    assert row.values() == (1, "apple")
    assert dict(row.items()) == {"id": 1, "name": "apple"}
    assert dict(row) == {"id": 1, "name": "apple"}
    assert row.get("name") == "apple"
    assert row.get("nope", "default") == "default"


def test_unknown_column_names_the_columns() -> None:
    with pytest.raises(KeyError, match="no column 'nope'; the columns are: id, name"):
        make_rows()[0]["nope"]
    with pytest.raises(IndexError):
        make_rows()[0][5]


def test_duplicate_column_name_gives_the_first() -> None:
    row = Row([1, 2], ["a", "a"])
    assert row["a"] == 1
    assert row == (1, 2)


def test_row_repr_and_pickle() -> None:
    row = make_rows()[0]
    assert repr(row) == "<Row id=1 name='apple'>"
    again = pickle.loads(pickle.dumps(row))
    assert again == row and again["name"] == "apple"


def test_row_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="a row of 1 values for 2 columns"):
        Row([1], ["a", "b"])
    with pytest.raises(ValueError, match="row 1 has 1 values for 2 columns"):
        Rows.from_values(COLUMNS, [[1, "a"], [2]], INFO)


def test_rows_is_a_list_with_columns_and_info() -> None:
    rows = make_rows()
    assert isinstance(rows, list)
    assert len(rows) == 2
    assert rows.columns == (Column("id", "int4"), Column("name", "text"))
    assert rows.info.cache_status == "miss"
    assert [r["name"] for r in rows] == ["apple", "pear"]


def test_info_from_wire_reads_the_node_info() -> None:
    info = info_from_wire(
        {
            "cacheStatus": "swr",
            "region": "us-east",
            "lastModified": "2024-05-01T12:00:00.250Z",
            "age": 3.25,
            "requestId": "abc",
            "signature": None,
            "cacheError": "redis down",
            "warnings": ["slow origin"],
        }
    )
    assert info.cache_status == "swr" and info.hit
    assert info.region == "us-east"
    assert info.last_modified == dt.datetime(2024, 5, 1, 12, 0, 0, 250_000, tzinfo=dt.UTC)
    assert info.last_modified.tzinfo is not None
    assert info.age == 3.25
    assert info.request_id == "abc"
    assert info.signature is None
    assert info.cache_error == "redis down"
    assert info.warnings == ("slow origin",)
    assert not info_from_wire({"cacheStatus": "miss"}).hit


def test_result_from_wire() -> None:
    result = result_from_wire(
        {
            "columns": [{"name": "id", "type": "int4"}],
            "rows": [[1], [2]],
            "rowCount": 2,
            "info": {"cacheStatus": "none"},
        },
        "http://node/v1/query",
    )
    assert result.row_count == 2
    assert result.columns == (Column("id", "int4"),)
    assert [r["id"] for r in result.rows] == [1, 2]
    assert result.info.cache_status == "none"
