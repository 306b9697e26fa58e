"""Render query results as an aligned, psql-like text table for terminals."""

from __future__ import annotations

import datetime as dt
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

from cache_edge.common.wire import json_dumps

__all__ = ["NULL", "format_table", "render_value"]

NULL = "NULL"
_NUMERIC_TYPES = frozenset({"int2", "int4", "int8", "numeric", "float4", "float8", "oid", "money"})
_JSON_TYPES = frozenset({"json", "jsonb"})
# Control characters would break the grid, so they are shown escaped.
_ESCAPES = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})


def render_value(value: Any, pg_type: str = "") -> str:
    """One value as text, close to how PostgreSQL would print it."""
    if value is None:
        return NULL
    if pg_type in _JSON_TYPES:
        return json_dumps(value).decode().translate(_ESCAPES)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, list):
        element_type = pg_type.removesuffix("[]")
        return "{" + ",".join(render_value(v, element_type) for v in value) + "}"
    if isinstance(value, dict):
        return json_dumps(value).decode().translate(_ESCAPES)
    return str(value).translate(_ESCAPES)


def _width(text: str) -> int:
    # East Asian wide characters take two terminal cells.
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int, right: bool) -> str:
    fill = " " * (width - _width(text))
    return fill + text if right else text + fill


def format_table(names: Sequence[str], types: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A header, a rule and one line per row; numbers right-aligned, the rest left-aligned."""
    cells = [[render_value(v, t) for v, t in zip(row, types, strict=True)] for row in rows]
    widths = [_width(n) for n in names]
    for line in cells:
        widths = [max(w, _width(c)) for w, c in zip(widths, line, strict=True)]
    right = [t in _NUMERIC_TYPES for t in types]
    out = [
        " " + " | ".join(_pad(n, w, False) for n, w in zip(names, widths, strict=True)),
        "-" + "-+-".join("-" * w for w in widths) + "-",
    ]
    for line in cells:
        padded = (_pad(c, w, r) for c, w, r in zip(line, widths, right, strict=True))
        out.append(" " + " | ".join(padded))
    count = len(cells)
    out.append(f"({count} row{'' if count == 1 else 's'})")
    return "\n".join(line.rstrip() for line in out)
