"""PostgreSQL types at the origin: JSON params coerced to inferred types, wire-safe result values.

JSON cannot say "this string is a uuid", so a parameter arrives as ``str`` where
PostgreSQL inferred ``uuid``, ``numeric`` or ``timestamptz``. asyncpg's binary
codecs want the Python type, so we convert using the types the server reported
for the prepared statement (``PreparedStatement.get_parameters()``) and read
strings the way PostgreSQL's own text input would. msgpack callers already send
exact types; those pass through untouched.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import asyncpg

from cache_edge.common.errors import BadRequest
from cache_edge.common.wire import parse_duration

__all__ = ["coerce_params", "to_wire_value", "type_name"]

_MSGPACK_INT_MIN = -(2**63)
_MSGPACK_INT_MAX = 2**64 - 1
_TRUE = frozenset({"t", "true", "y", "yes", "on", "1"})
_FALSE = frozenset({"f", "false", "n", "no", "off", "0"})


def type_name(pg_type: Any) -> str:
    """asyncpg's type name, with arrays always spelled ``elem[]`` (``int4[]``, not ``_int4``)."""
    name = str(pg_type.name)
    if pg_type.kind == "array" and name.startswith("_"):
        return name[1:] + "[]"
    return name


def _int(value: Any) -> Any:
    if isinstance(value, str):
        return int(value.strip())
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _float(value: Any) -> Any:
    return float(value.strip()) if isinstance(value, str) else value


def _numeric(value: Any) -> Any:
    if isinstance(value, str):
        return Decimal(value.strip())
    if isinstance(value, bool):
        return value  # let the driver reject it: true is not a number
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        # repr() is the shortest string that reads back as the same float: 0.1 -> Decimal('0.1').
        return Decimal(repr(value))
    return value


def _bool(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError("expected true or false")
    return value


def _uuid(value: Any) -> Any:
    if isinstance(value, str):
        return uuid.UUID(value.strip())
    if isinstance(value, bytes) and len(value) == 16:
        return uuid.UUID(bytes=value)
    return value


def _date(value: Any) -> Any:
    return dt.date.fromisoformat(value.strip()) if isinstance(value, str) else value


def _time(value: Any) -> Any:
    if isinstance(value, str):
        # PostgreSQL's time input ignores an offset; so do we.
        return dt.time.fromisoformat(value.strip()).replace(tzinfo=None)
    return value


def _timetz(value: Any) -> Any:
    if isinstance(value, str):
        parsed = dt.time.fromisoformat(value.strip())
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    return value


def _timestamp(value: Any) -> Any:
    if isinstance(value, str):
        # Like PostgreSQL's timestamp input, an offset in the text is ignored.
        return dt.datetime.fromisoformat(value.strip()).replace(tzinfo=None)
    return value


def _timestamptz(value: Any) -> Any:
    if isinstance(value, str):
        parsed = dt.datetime.fromisoformat(value.strip())
        # A string without an offset means UTC: the origin's clock zone must not leak in.
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    return value


def _interval(value: Any) -> Any:
    return parse_duration(value) if isinstance(value, str) else value


def _bytea(value: Any) -> Any:
    if isinstance(value, str):
        return base64.b64decode(value, validate=True)
    return value


_COERCERS: dict[str, Callable[[Any], Any]] = {
    "int2": _int,
    "int4": _int,
    "int8": _int,
    "oid": _int,
    "float4": _float,
    "float8": _float,
    "numeric": _numeric,
    "bool": _bool,
    "uuid": _uuid,
    "date": _date,
    "time": _time,
    "timetz": _timetz,
    "timestamp": _timestamp,
    "timestamptz": _timestamptz,
    "interval": _interval,
    "bytea": _bytea,
}


def _coerce(value: Any, name: str, where: str) -> Any:
    if value is None:
        return None
    if name.endswith("[]"):
        if not isinstance(value, list):
            return value  # the driver names the problem precisely
        elem = name[:-2]
        # Nested lists are the dimensions of a multi-dimensional array.
        return [_coerce(item, name if isinstance(item, list) else elem, where) for item in value]
    coercer = _COERCERS.get(name)
    if coercer is None:
        return value
    try:
        return coercer(value)
    except (ValueError, ArithmeticError, InvalidOperation, binascii.Error, TypeError) as exc:
        shown = repr(value)
        if len(shown) > 40:
            shown = shown[:37] + "..."
        raise BadRequest(f"{where}: cannot read {shown} as {name}: {exc}", field=where) from None


def coerce_params(params: Sequence[Any], types: Sequence[Any]) -> list[Any]:
    """Convert each parameter to the Python type asyncpg needs for the inferred PostgreSQL type."""
    if len(params) != len(types):
        raise BadRequest(
            f"the statement has {len(types)} parameter(s) but {len(params)} value(s) were given",
            field="params",
        )
    pairs = enumerate(zip(params, types, strict=True))
    return [_coerce(value, type_name(t), f"params[{i}]") for i, (value, t) in pairs]


def _range_text(value: asyncpg.Range) -> str:
    if value.isempty:
        return "empty"
    # An unbounded side is always exclusive in PostgreSQL's text form: (,5]
    lower = "(" if value.lower is None else ("[" if value.lower_inc else "(") + str(value.lower)
    upper = ")" if value.upper is None else str(value.upper) + ("]" if value.upper_inc else ")")
    return f"{lower},{upper}"


def to_wire_value(value: Any) -> Any:
    """Make a value the wire codec cannot encode into its PostgreSQL text form (or a list).

    Only called after encoding a row failed, so the common types pay nothing.
    """
    if isinstance(value, int) and not _MSGPACK_INT_MIN <= value <= _MSGPACK_INT_MAX:
        return Decimal(value)  # a huge integer inside a json value: exact, as numeric is
    if value is None or isinstance(value, (str, int, float, bytes, Decimal, uuid.UUID)):
        return value
    if isinstance(value, (dt.date, dt.time, dt.timedelta)):
        return value
    if isinstance(value, dict):
        return {k: to_wire_value(v) for k, v in value.items()}
    if isinstance(value, asyncpg.Range):
        return _range_text(value)
    if isinstance(value, asyncpg.BitString):
        return value.as_string()
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(value)
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value)
    if isinstance(value, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
        return str(value)
    if isinstance(value, (list, tuple, asyncpg.Record)):
        # Arrays, composite rows and geometric types (tuples of floats).
        return [to_wire_value(v) for v in value]
    return str(value)
