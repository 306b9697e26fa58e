"""Result sets encoded row by row under a byte budget, and the response bodies built from them.

Rows are packed to msgpack as they arrive from the cursor, so an oversized
result is refused after at most one chunk past the limit instead of being
built whole in memory. The msgpack response is assembled from those bytes with
its keys in a fixed order (``columns``, ``rows``, ``rowCount``, ``producedAt``):
the node splices the raw bytes of the first three entries into its cache entries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from cache_edge.common.errors import ResponseTooLarge
from cache_edge.common.wire import WireFormat, json_dumps, packb, unpackb
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
_K_COLUMNS = packb("columns")
_K_ROWS = packb("rows")
_K_ROW_COUNT = packb("rowCount")
_K_PRODUCED_AT = packb("producedAt")
_K_WATERMARK = packb("watermark")
_K_RESULTS = packb("results")


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
    """Collects one statement's rows as msgpack, charging every byte to the budget."""

    def __init__(self, columns: list[dict[str, str]], budget: SizeBudget) -> None:
        self._columns = columns
        self._budget = budget
        self._chunks: list[bytes] = []
        self._n = 0
        budget.spend(len(packb(columns)))

    def add(self, records: Iterable[Sequence[Any]]) -> None:
        for record in records:
            packed = _pack_row(record)
            self._budget.spend(len(packed))
            self._chunks.append(packed)
            self._n += 1

    def finish(self) -> ResultSet:
        return ResultSet(self._columns, b"".join(self._chunks), self._n, self._n)


def _pack_result_entries(result: ResultSet) -> list[bytes]:
    return [
        _K_COLUMNS,
        packb(result.columns),
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


def encode_query_response(
    result: ResultSet,
    produced_at: int,
    fmt: WireFormat,
    watermark: int = 0,
    tables: Sequence[str] = (),
    warnings: Sequence[str] = (),
    invalidation: Mapping[str, Any] | None = None,
    tags: Sequence[str] = (),
) -> bytes:
    """``{"columns", "rows", "rowCount", "producedAt", "watermark"[, "tables", "warnings",
    "invalidation", "tags"]}``,
    the first three in exactly that order (the node splices them).

    ``watermark`` is the last purge known committed before the rows were produced
    (see docs/invalidation.md); ``tables`` and ``warnings`` say what a cached result
    depends on (origin/core/dependencies.py).
    """
    extra: dict[str, Any] = {}
    if tables:
        extra["tables"] = list(tables)
    if warnings:
        extra["warnings"] = list(warnings)
    if invalidation:
        extra["invalidation"] = dict(invalidation)
    if tags:
        extra["tags"] = list(tags)
    if fmt == "json":
        return json_dumps(
            {**_json_result(result), "producedAt": produced_at, "watermark": watermark, **extra}
        )
    parts = [_PACKER.pack_map_header(5 + len(extra)), *_pack_result_entries(result)]
    parts += [_K_PRODUCED_AT, packb(produced_at), _K_WATERMARK, packb(watermark)]
    for key, value in extra.items():
        parts += [packb(key), packb(value)]
    return b"".join(parts)


def encode_transaction_response(
    results: Sequence[ResultSet],
    produced_at: int,
    fmt: WireFormat,
    invalidation: Mapping[str, Any] | None = None,
) -> bytes:
    """``{"results": [{"columns", "rows", "rowCount"}...], "producedAt"[, "invalidation"]}``;
    ``invalidation`` names the purge that covers the transaction's writes (automatic
    invalidation), so a caller can wait for it to be applied everywhere."""
    tail: dict[str, Any] = {"invalidation": dict(invalidation)} if invalidation else {}
    if fmt == "json":
        return json_dumps(
            {"results": [_json_result(r) for r in results], "producedAt": produced_at, **tail}
        )
    parts = [
        _PACKER.pack_map_header(2 + len(tail)),
        _K_RESULTS,
        _PACKER.pack_array_header(len(results)),
    ]
    for result in results:
        parts.append(_PACKER.pack_map_header(3))
        parts.extend(_pack_result_entries(result))
    parts += [_K_PRODUCED_AT, packb(produced_at)]
    for key, value in tail.items():
        parts += [packb(key), packb(value)]
    return b"".join(parts)
