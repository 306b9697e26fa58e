"""Column values from their PostgreSQL text form (as logical decoding sends them) to Python.

The same types the query path round-trips exactly (origin/core/types.py) come out as the same
Python types here: Decimal, aware datetimes, UUID, bytes, parsed json, lists for
one-dimensional arrays. Anything else stays the text PostgreSQL printed, which is exact
too. The capture's session runs with DateStyle ISO and TimeZone UTC (origin/capture/reader.py).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

__all__ = ["decode_text"]


def _bool(text: str) -> bool:
    return text == "t"


def _float(text: str) -> float:
    return float(text)  # also 'NaN', 'Infinity', '-Infinity'


def _bytea(text: str) -> bytes:
    return bytes.fromhex(text[2:]) if text.startswith("\\x") else text.encode()


def _timestamptz(text: str) -> dt.datetime | str:
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return text  # 'infinity', BC dates: no Python equivalent, keep PostgreSQL's text


def _timestamp(text: str) -> dt.datetime | str:
    return _timestamptz(text)


def _date(text: str) -> dt.date | str:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return text


def _time(text: str) -> dt.time | str:
    try:
        return dt.time.fromisoformat(text)
    except ValueError:
        return text


_SCALARS: dict[int, Callable[[str], Any]] = {
    16: _bool,
    20: int,
    21: int,
    23: int,
    26: int,
    700: _float,
    701: _float,
    1700: Decimal,
    17: _bytea,
    114: json.loads,
    3802: json.loads,
    2950: uuid.UUID,
    1082: _date,
    1083: _time,
    1266: _time,
    1114: _timestamp,
    1184: _timestamptz,
}
# Array type oid -> element type oid (the common ones; others stay text).
_ARRAYS = {
    1000: 16, 1016: 20, 1005: 21, 1007: 23, 1021: 700, 1022: 701, 1231: 1700,
    1009: 25, 1015: 1043, 2951: 2950, 1182: 1082, 1115: 1114, 1185: 1184, 199: 114,
    3807: 3802, 1001: 17,
}  # fmt: skip


def decode_text(type_oid: int, text: str) -> Any:
    scalar = _SCALARS.get(type_oid)
    if scalar is not None:
        return scalar(text)
    element = _ARRAYS.get(type_oid)
    if element is not None:
        items = _parse_array(text)
        if items is not None:
            convert = _SCALARS.get(element)
            return [None if item is None else convert(item) if convert else item for item in items]
    return text


def _parse_array(text: str) -> list[str | None] | None:
    """A one-dimensional array literal ``{a,"b c",NULL}``; None if it is not one."""
    if not text.startswith("{") or not text.endswith("}"):
        return None  # e.g. '[0:1]={1,2}' (custom bounds): keep it as text
    body = text[1:-1]
    if not body:
        return []
    items: list[str | None] = []
    i, n = 0, len(body)
    while i < n:
        if body[i] == "{":
            return None  # multi-dimensional: keep as text
        if body[i] == '"':
            i += 1
            out = []
            while body[i] != '"':
                if body[i] == "\\":
                    i += 1
                out.append(body[i])
                i += 1
            items.append("".join(out))
            i += 1
        else:
            end = body.find(",", i)
            end = n if end < 0 else end
            raw = body[i:end]
            items.append(None if raw == "NULL" else raw)
            i = end
        i += 1  # the comma
    return items
