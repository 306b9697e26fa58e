"""PostgreSQL's answer bytes as Neon's ``/sql`` JSON: results, rows in text, errors.

A result is what one statement's RowDescription, DataRows and CommandComplete say::

    {"command": "SELECT", "rowCount": 2, "rowAsArray": true,
     "fields": [{"name", "tableID", "columnID", "dataTypeID", "dataTypeSize",
                 "dataTypeModifier", "format": "text"}],
     "rows": [["1", "a"], ["2", null]]}

Values are PostgreSQL's own text output, byte for byte (the client parses them by
``dataTypeID``), and NULL is null. Without ``Neon-Raw-Text-Output: true`` (callers that
post by hand; the drivers always send it) booleans, integers, floats and json become JSON
values, as Neon's proxy does; other types, arrays included, stay text.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from cache_edge.pgwire.messages import parse_error_fields

__all__ = ["ResultBuilder", "error_body", "results_of"]

_FIELD = struct.Struct("!IhIhih")
_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")
_HEAD = struct.Struct("!cI")
_BOOL, _INT8, _INT2, _INT4, _OID, _FLOAT4, _FLOAT8 = 16, 20, 21, 23, 26, 700, 701
_JSON, _JSONB = 114, 3802
# Neon's error fields, by the ErrorResponse field code that carries each.
_ERROR_FIELDS = (
    ("severity", "S"),
    ("code", "C"),
    ("detail", "D"),
    ("hint", "H"),
    ("position", "P"),
    ("internalPosition", "p"),
    ("internalQuery", "q"),
    ("where", "W"),
    ("schema", "s"),
    ("table", "t"),
    ("column", "c"),
    ("dataType", "d"),
    ("constraint", "n"),
    ("file", "F"),
    ("line", "L"),
    ("routine", "R"),
)


def _fields(body: bytes) -> list[dict[str, Any]]:
    count = _INT16.unpack_from(body)[0]
    pos = 2
    out = []
    for _ in range(count):
        end = body.index(b"\x00", pos)
        name = body[pos:end].decode("utf-8", "replace")
        table, column, type_oid, size, modifier, fmt = _FIELD.unpack_from(body, end + 1)
        pos = end + 1 + _FIELD.size
        out.append(
            {
                "name": name,
                "tableID": table,
                "columnID": column,
                "dataTypeID": type_oid,
                "dataTypeSize": size,
                "dataTypeModifier": modifier,
                "format": "text" if fmt == 0 else "binary",
            }
        )
    return out


def _row(body: bytes) -> list[str | None]:
    count = _INT16.unpack_from(body)[0]
    pos = 2
    values: list[str | None] = []
    append = values.append
    unpack = _INT32.unpack_from
    for _ in range(count):
        size = unpack(body, pos)[0]
        pos += 4
        if size < 0:
            append(None)
        else:
            append(body[pos : pos + size].decode("utf-8", "replace"))
            pos += size
    return values


def _typed(value: str | None, type_oid: int) -> Any:
    if value is None:
        return None
    if type_oid == _BOOL:
        return value == "t"
    if type_oid in (_INT2, _INT4, _INT8, _OID):
        return int(value)
    if type_oid in (_FLOAT4, _FLOAT8):
        number = float(value)
        return value if number != number or number in (float("inf"), float("-inf")) else number
    if type_oid in (_JSON, _JSONB):
        return json.loads(value)
    return value


def _count(tag: str) -> tuple[str, int | None]:
    words = tag.split(" ")
    count_word = words[2] if words[0] == "INSERT" and len(words) > 2 else words[-1]
    return words[0], int(count_word) if len(words) > 1 and count_word.isdigit() else None


class ResultBuilder:
    """Collects one statement's messages into a Neon result."""

    __slots__ = ("array_mode", "command", "fields", "raw_text", "row_count", "rows")

    def __init__(self, array_mode: bool, raw_text: bool) -> None:
        self.array_mode = array_mode
        self.raw_text = raw_text
        self.fields: list[dict[str, Any]] = []
        self.rows: list[Any] = []
        self.command = ""
        self.row_count: int | None = None

    def description(self, body: bytes) -> None:
        self.fields = _fields(body)

    def row(self, body: bytes) -> None:
        values = _row(body)
        if not self.raw_text:
            values = [_typed(v, f["dataTypeID"]) for v, f in zip(values, self.fields, strict=False)]
        if self.array_mode:
            self.rows.append(values)
        else:
            self.rows.append({f["name"]: v for f, v in zip(self.fields, values, strict=False)})

    def complete(self, tag: str) -> None:
        self.command, self.row_count = _count(tag)

    def result(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "rowCount": self.row_count,
            "rows": self.rows,
            "fields": self.fields,
            "rowAsArray": self.array_mode,
        }


def results_of(data: bytes, array_mode: bool, raw_text: bool) -> tuple[list[dict[str, Any]], bytes]:
    """The results of every statement ``data`` (backend messages) completes, and the first
    ErrorResponse in it (b"" if none). ParseComplete, BindComplete, notices and
    ReadyForQuery carry nothing a Neon client reads."""
    out: list[dict[str, Any]] = []
    builder = ResultBuilder(array_mode, raw_text)
    pos = 0
    end = len(data)
    while pos + 5 <= end:
        kind, length = _HEAD.unpack_from(data, pos)
        body = data[pos + 5 : pos + 1 + length]
        pos += 1 + length
        if kind == b"D":
            builder.row(body)
        elif kind == b"T":
            builder.description(body)
        elif kind == b"C":
            builder.complete(body[:-1].decode("utf-8", "replace"))
            out.append(builder.result())
            builder = ResultBuilder(array_mode, raw_text)
        elif kind == b"I":  # EmptyQueryResponse: an empty statement
            out.append(builder.result())
            builder = ResultBuilder(array_mode, raw_text)
        elif kind == b"E":
            return out, data[pos - 1 - length : pos]
    return out, b""


def error_body(error: bytes) -> dict[str, Any]:
    """Neon's error object from a PostgreSQL ErrorResponse."""
    found = parse_error_fields(error)
    body: dict[str, Any] = {"message": found.get("M", "statement failed")}
    for name, code in _ERROR_FIELDS:
        if code in found:
            body[name] = found[code]
    if "V" in found:  # the non-localized severity is what clients compare with
        body["severity"] = found["V"]
    return body
