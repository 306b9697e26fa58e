"""Result sets encoded row by row under a byte budget, and the response bodies built from them.

Rows are packed to msgpack as they arrive from the cursor, so an oversized
result is refused after at most one chunk past the limit instead of being
built whole in memory. The msgpack response is assembled from those bytes in the
shape of :mod:`cache_edge.common.answer`: the core (``columns``, ``rows``,
``rowCount``, or a transaction's ``results``) first, whose raw bytes the node
splices into its answers and cache entries, then the :class:`OriginAnswer` fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from cache_edge.common.answer import QUERY_CORE, TRANSACTION_CORE, OriginAnswer
from cache_edge.common.errors import ResponseTooLarge
from cache_edge.common.wire import WireFormat, packb, unpackb
from origin.core.types import to_wire_value

__all__ = [
    "ResultSet",
    "RowBuffer",
    "SizeBudget",
    "encode_query_response",
    "encode_transaction_response",
    "row_count_from_status",
]

_PACKER = msgpack.Packer()  # only for container headers, which carry no values
_K_COLUMNS, _K_ROWS, _K_ROW_COUNT = (packb(key) for key in QUERY_CORE)
(_K_RESULTS,) = (packb(key) for key in TRANSACTION_CORE)


class SizeBudget:
    """Bytes a response may still spend; shared by all statements of a transaction."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def spend(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise ResponseTooLarge(
                f"the result exceeds the origin's limit of {self.limit} bytes "
                "(max_response_bytes): select fewer rows or columns",
                limit=self.limit,
            )


@dataclass(frozen=True, slots=True)
class ResultSet:
    """One statement's result: column descriptions and its rows as concatenated msgpack."""

    columns: list[dict[str, str]]
    rows: bytes  # msgpack of each row (an array), back to back, no outer array header
    n_rows: int
    row_count: int  # rows returned, or the count from the status tag (UPDATE 3 -> 3)
    packed_columns: bytes | None = None  # ``columns`` as msgpack, when already made

    def python_rows(self) -> list[Any]:
        """Decode the rows (for the JSON answer, which curl users ask for)."""
        return list(unpackb(_PACKER.pack_array_header(self.n_rows) + self.rows))


def row_count_from_status(status: str | None) -> int:
    """The count at the end of a command tag: ``UPDATE 3`` -> 3, ``INSERT 0 5`` -> 5."""
    if not status:
        return 0
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _pack_row(values: Sequence[Any]) -> bytes:
    try:
        return packb(list(values))
    except (TypeError, OverflowError):
        # inet, ranges, bit strings, composites, huge json integers: send an exact stand-in.
        return packb([to_wire_value(v) for v in values])


class RowBuffer:
    """Collects one statement's rows as msgpack, charging every byte to the budget.

    ``packed_columns``: ``columns`` as msgpack, if the caller keeps it (made here if not).
    """

    def __init__(
        self,
        columns: list[dict[str, str]],
        budget: SizeBudget,
        packed_columns: bytes | None = None,
    ) -> None:
        self._columns = columns
        self._packed_columns = packed_columns or packb(columns)
        self._budget = budget
        self._chunks: list[bytes] = []
        self._n = 0
        budget.spend(len(self._packed_columns))

    def add(self, records: Iterable[Sequence[Any]]) -> None:
        for record in records:
            packed = _pack_row(record)
            self._budget.spend(len(packed))
            self._chunks.append(packed)
            self._n += 1

    def finish(self) -> ResultSet:
        rows = b"".join(self._chunks)
        return ResultSet(self._columns, rows, self._n, self._n, self._packed_columns)


def _pack_result_entries(result: ResultSet) -> list[bytes]:
    return [
        _K_COLUMNS,
        result.packed_columns or packb(result.columns),
        _K_ROWS,
        _PACKER.pack_array_header(result.n_rows),
        result.rows,
        _K_ROW_COUNT,
        packb(result.row_count),
    ]


def _json_result(result: ResultSet) -> dict[str, Any]:
    return {
        "columns": result.columns,
        "rows": result.python_rows(),
        "rowCount": result.row_count,
    }


def encode_query_response(result: ResultSet, answer: OriginAnswer, fmt: WireFormat) -> bytes:
    """One statement's answer: its result as the core, then ``answer``'s fields."""
    if fmt == "json":
        return answer.dump_json(_json_result(result))
    return answer.pack(QUERY_CORE, _pack_result_entries(result))


def encode_transaction_response(
    results: Sequence[ResultSet], answer: OriginAnswer, fmt: WireFormat
) -> bytes:
    """A transaction's answer: ``results`` (one core entry: the list of every statement's
    result), then ``answer``'s fields."""
    if fmt == "json":
        return answer.dump_json({"results": [_json_result(r) for r in results]})
    core = [_K_RESULTS, _PACKER.pack_array_header(len(results))]
    for result in results:
        core.append(_PACKER.pack_map_header(len(QUERY_CORE)))
        core.extend(_pack_result_entries(result))
    return answer.pack(TRANSACTION_CORE, core)
