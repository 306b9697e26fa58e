"""Request shapes of the public and node-to-origin APIs, validated against Limits.

Every check raises BadRequest (or PayloadTooLarge) naming the field, so a
client learns exactly what to fix; nothing malformed reaches the database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from cache_edge.common.errors import BadRequest, PayloadTooLarge
from cache_edge.common.limits import Limits
from cache_edge.common.strategy import NO_CACHE, CacheStrategy, parse_tags
from cache_edge.common.wire import WireFormat, decode_body

__all__ = [
    "ISOLATION_LEVELS",
    "InvalidateRequest",
    "QueryRequest",
    "Statement",
    "TransactionRequest",
    "check_value",
    "parse_invalidate",
    "parse_query",
    "parse_query_body",
    "parse_transaction",
]

ISOLATION_LEVELS = ("read_committed", "repeatable_read", "serializable")


@dataclass(frozen=True, slots=True)
class Statement:
    sql: str
    params: list[Any]


@dataclass(frozen=True, slots=True)
class QueryRequest:
    statement: Statement
    strategy: CacheStrategy = NO_CACHE
    # Origin side only: the caller (a node) asks for a READ ONLY transaction...
    read_only: bool = False
    # ...and for rows produced after this purge sequence (see docs/invalidation.md).
    min_watermark: int = 0


@dataclass(frozen=True, slots=True)
class TransactionRequest:
    statements: list[Statement]
    isolation: str = "read_committed"


def check_value(value: Any, limits: Limits, where: str, depth: int = 0) -> None:
    """Bound nesting depth, string length and container size of a decoded parameter."""
    if depth > limits.max_depth:
        raise BadRequest(f"{where}: nested deeper than {limits.max_depth} levels", field=where)
    if isinstance(value, (str, bytes)):
        if len(value) > limits.max_string_length:
            raise PayloadTooLarge(
                f"{where}: {len(value)} characters exceeds the limit of {limits.max_string_length}",
                field=where,
            )
    elif isinstance(value, list):
        if len(value) > limits.max_params * 10:
            raise PayloadTooLarge(f"{where}: array of {len(value)} items is too long", field=where)
        for i, item in enumerate(value):
            check_value(item, limits, f"{where}[{i}]", depth + 1)
    elif isinstance(value, dict):
        for k, item in value.items():
            check_value(k, limits, where, depth + 1)
            check_value(item, limits, f"{where}.{k}", depth + 1)


def _object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(f"{what} must be an object, got {type(body).__name__}")
    return body


def _reject_unknown(body: dict[str, Any], allowed: frozenset[str], where: str = "") -> None:
    unknown = set(body) - allowed
    if unknown:
        name = sorted(map(str, unknown))[0]
        raise BadRequest(
            f"unknown field {where}{name}: allowed are {', '.join(sorted(allowed))}",
            field=f"{where}{name}",
        )


def _statement(body: dict[str, Any], limits: Limits, where: str) -> Statement:
    sql = body.get("sql")
    if not isinstance(sql, str):
        raise BadRequest(f"{where}sql must be a string of SQL", field=f"{where}sql")
    if not sql.strip():
        raise BadRequest(f"{where}sql is empty", field=f"{where}sql")
    if len(sql) > limits.max_sql_length:
        raise PayloadTooLarge(
            f"{where}sql is {len(sql)} characters; the limit is {limits.max_sql_length}",
            field=f"{where}sql",
        )
    if "\x00" in sql:
        raise BadRequest(f"{where}sql contains a NUL character", field=f"{where}sql")
    params = body.get("params", [])
    if params is None:
        params = []
    if not isinstance(params, list):
        raise BadRequest(f"{where}params must be an array", field=f"{where}params")
    if len(params) > limits.max_params:
        raise PayloadTooLarge(
            f"{where}params has {len(params)} values; the limit is {limits.max_params}",
            field=f"{where}params",
        )
    for i, p in enumerate(params):
        check_value(p, limits, f"{where}params[{i}]", 1)
    return Statement(sql, params)


_QUERY_FIELDS = frozenset({"sql", "params", "cacheStrategy"})
_ORIGIN_QUERY_FIELDS = frozenset({"sql", "params", "readOnly", "minWatermark"})


def parse_query(body: Any, limits: Limits, *, origin: bool = False) -> QueryRequest:
    """Parse ``{"sql", "params", "cacheStrategy"}`` (node) or ``{"sql", "params", "readOnly"}``
    (origin)."""
    obj = _object(body, "the request body")
    _reject_unknown(obj, _ORIGIN_QUERY_FIELDS if origin else _QUERY_FIELDS)
    stmt = _statement(obj, limits, "")
    if origin:
        read_only = obj.get("readOnly", False)
        if not isinstance(read_only, bool):
            raise BadRequest("readOnly must be true or false", field="readOnly")
        mark = obj.get("minWatermark", 0)
        if isinstance(mark, bool) or not isinstance(mark, int) or mark < 0:
            raise BadRequest("minWatermark must be a non-negative integer", field="minWatermark")
        return QueryRequest(stmt, read_only=read_only, min_watermark=mark)
    return QueryRequest(stmt, CacheStrategy.from_wire(obj.get("cacheStrategy")))


_MEMO_BODY_BYTES = 4096  # bodies up to this size are remembered...
_MEMO_ENTRIES = 1024  # ...this many, oldest out first
# (format, body) -> (the limits it was checked against, the parsed request)
_parsed: dict[tuple[str, bytes], tuple[Limits, QueryRequest]] = {}


def parse_query_body(data: bytes, fmt: WireFormat, limits: Limits) -> QueryRequest:
    """``parse_query(decode_body(data, fmt), limits)`` for the node, remembered by body.

    A cache hit is, by definition, a request repeated byte for byte: its body is decoded
    and validated once, and later copies share the (immutable) result. Invalid bodies
    raise as always and are not remembered.
    """
    if len(data) > _MEMO_BODY_BYTES:
        return parse_query(decode_body(data, fmt), limits)
    key = (fmt, data)
    known = _parsed.get(key)
    if known is not None and known[0] is limits:
        return known[1]
    request = parse_query(decode_body(data, fmt), limits)
    if len(_parsed) >= _MEMO_ENTRIES:
        del _parsed[next(iter(_parsed))]
    _parsed[key] = (limits, request)
    return request


_TX_FIELDS = frozenset({"statements", "isolationLevel"})
_STMT_FIELDS = frozenset({"sql", "params"})


def parse_transaction(body: Any, limits: Limits) -> TransactionRequest:
    obj = _object(body, "the request body")
    _reject_unknown(obj, _TX_FIELDS)
    raw = obj.get("statements")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("statements must be a non-empty array", field="statements")
    if len(raw) > limits.max_statements:
        raise PayloadTooLarge(
            f"statements has {len(raw)} entries; the limit is {limits.max_statements}",
            field="statements",
        )
    statements = []
    for i, item in enumerate(raw):
        where = f"statements[{i}]."
        stmt_obj = _object(item, f"statements[{i}]")
        _reject_unknown(stmt_obj, _STMT_FIELDS, where)
        statements.append(_statement(stmt_obj, limits, where))
    isolation = obj.get("isolationLevel", "read_committed")
    if isolation not in ISOLATION_LEVELS:
        raise BadRequest(
            f"isolationLevel must be one of {', '.join(ISOLATION_LEVELS)}", field="isolationLevel"
        )
    return TransactionRequest(statements, isolation)


MAX_PURGE_TAGS = 100
MAX_TABLES = 100
MAX_WAIT = 30.0
_INVALIDATE_FIELDS = frozenset({"tags", "tables", "all", "wait"})
TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}\.[A-Za-z_][A-Za-z0-9_$]{0,62}$")
TABLE_TAG_PREFIX = "table:"
# Carried by results whose tables could not be determined; every captured write purges it.
ANY_TABLE_TAG = TABLE_TAG_PREFIX + "*"


def table_tag(qualified: str) -> str:
    """The implicit tag of cached results that read table ``schema.name``."""
    return TABLE_TAG_PREFIX + qualified


def parse_tables(tables: Any, name: str = "tables", *, allow_empty: bool = False) -> list[str]:
    """``["schema.name", ...]``: sorted, without repeats."""
    if not isinstance(tables, list) or len(tables) > MAX_TABLES or not (tables or allow_empty):
        raise BadRequest(f"{name} must list 1 to {MAX_TABLES} tables", field=name)
    for t in tables:
        if not isinstance(t, str) or not TABLE_NAME.match(t):
            raise BadRequest(
                f"{str(t)[:80]!r} is not a table name: use schema.name, e.g. public.orders",
                field=name,
            )
    return sorted(set(tables))


@dataclass(frozen=True, slots=True)
class InvalidateRequest:
    tags: list[str]
    purge_all: bool
    wait: float = 5.0
    tables: list[str] = field(default_factory=list)  # purged through their implicit tags


def parse_invalidate(body: Any) -> InvalidateRequest:
    """``{"tags": [...]}``, ``{"tables": ["public.orders"]}`` (automatic invalidation's table
    tags) or ``{"all": true}``, with an optional ``"wait"`` in seconds."""
    obj = _object(body, "the request body")
    _reject_unknown(obj, _INVALIDATE_FIELDS)
    purge_all = obj.get("all", False)
    if not isinstance(purge_all, bool):
        raise BadRequest("all must be true or false", field="all")
    tags = obj.get("tags", [])
    if not isinstance(tags, list):
        raise BadRequest("tags must be an array of strings", field="tags")
    parse_tags(tags, "tags", MAX_PURGE_TAGS)
    tables = parse_tables(obj.get("tables", []), allow_empty=True)
    if not tags and not tables and not purge_all:
        raise BadRequest(
            'nothing to purge: send {"tags": [...]}, {"tables": [...]} or {"all": true}',
            field="tags",
        )
    wait = obj.get("wait", 5.0)
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= MAX_WAIT:
        raise BadRequest(f"wait must be a number of seconds from 0 to {MAX_WAIT:.0f}", field="wait")
    return InvalidateRequest(sorted(set(tags)), purge_all, float(wait), tables)


STREAM_OPS = ("insert", "update", "delete", "truncate")
MAX_POLL = 1000
_POLL_FIELDS = frozenset({"after", "tables", "ops", "wait", "limit"})


@dataclass(frozen=True, slots=True)
class ChangesPoll:
    """A node's long-poll of the origin's change history (docs/change-streams.md)."""

    after: str | None  # a cursor; None: no events, just the current position
    tables: list[str] | None
    ops: list[str] | None
    wait: float
    limit: int


def parse_ops(ops: Any, name: str = "ops") -> list[str] | None:
    if ops is None:
        return None
    if not isinstance(ops, list) or not ops or not all(o in STREAM_OPS for o in ops):
        raise BadRequest(f"{name} must list some of {', '.join(STREAM_OPS)}", field=name)
    return sorted(set(ops))


def parse_changes_poll(body: Any) -> ChangesPoll:
    obj = _object(body, "the poll body")
    _reject_unknown(obj, _POLL_FIELDS)
    after = obj.get("after")
    if after is not None and not isinstance(after, str):
        raise BadRequest("after must be a cursor or null", field="after")
    tables = obj.get("tables")
    wait, limit = obj.get("wait", 0), obj.get("limit", MAX_POLL)
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= MAX_WAIT:
        raise BadRequest(f"wait must be 0 to {MAX_WAIT:.0f} seconds", field="wait")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_POLL:
        raise BadRequest(f"limit must be 1 to {MAX_POLL}", field="limit")
    return ChangesPoll(
        after,
        parse_tables(tables) if tables is not None else None,
        parse_ops(obj.get("ops")),
        float(wait),
        limit,
    )
