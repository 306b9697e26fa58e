"""A Neon-compatible ``POST /sql`` request, read and checked: who asks, what to run, how.

What the clients send (``@neondatabase/serverless``'s ``neon()``, which drizzle's
``neon-http``, ``kysely-neon`` and Prisma's ``PrismaNeonHttp`` all use):

    body      {"query": "...", "params": [...]}            one statement
              {"queries": [{"query", "params"}, ...]}      a batch, run as one transaction
    headers   Neon-Connection-String: postgresql://<tenant>:<api key>@host/<database>
              Authorization: Bearer <api key>               (instead of the password)
              Neon-Array-Mode, Neon-Raw-Text-Output         true/false
              Neon-Batch-Isolation-Level                    ReadUncommitted ... Serializable
              Neon-Batch-Read-Only, Neon-Batch-Deferrable   true/false

The body arrives as a string (``fetch`` with a string body says ``text/plain``), so the
content type is not checked. Parameters are text or null, as the client's
``prepareValue`` makes them (``\\x...`` is bytea, arrays and dates already PostgreSQL
text); JSON numbers and booleans are taken as their text, as Neon's proxy does, for
callers that post by hand. Objects and arrays are refused: their PostgreSQL text depends
on the column, which the caller knows and the node does not.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

from cache_edge.common.errors import BadRequest, PayloadTooLarge, Unauthorized
from cache_edge.common.limits import Limits

__all__ = ["Credentials", "SqlQuery", "SqlRequest", "credentials", "parse_sql_request"]

MAX_CONNECTION_STRING = 4096
_ISOLATION = {
    "readuncommitted": "READ UNCOMMITTED",
    "readcommitted": "READ COMMITTED",
    "repeatableread": "REPEATABLE READ",
    "serializable": "SERIALIZABLE",
}
_QUERY_FIELDS = frozenset({"query", "params", "arrayMode", "fullResults"})
_BODY_FIELDS = frozenset({"query", "params", "queries", "arrayMode", "fullResults"})


@dataclass(frozen=True, slots=True)
class Credentials:
    tenant: str  # the connection string's user
    key: str  # its password, or the bearer token
    database: str | None  # None: not named (Authorization header alone)


@dataclass(frozen=True, slots=True)
class SqlQuery:
    sql: str
    params: tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class SqlRequest:
    queries: tuple[SqlQuery, ...]
    batch: bool
    array_mode: bool
    raw_text: bool
    isolation: str | None  # SQL words, e.g. "REPEATABLE READ"
    read_only: bool
    deferrable: bool

    def begin(self) -> str:
        """The BEGIN a batch runs in."""
        words = ["BEGIN"]
        if self.isolation:
            words.append(f"ISOLATION LEVEL {self.isolation}")
        if self.read_only:
            words.append("READ ONLY")
        if self.deferrable:
            words.append("DEFERRABLE")
        return " ".join(words)


def _flag(headers: Mapping[str, str], name: str) -> bool:
    value = headers.get(name)
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0", ""):
        return False
    raise BadRequest(f"header {name} must be true or false, not {value[:40]!r}", field=name)


def credentials(headers: Mapping[str, str]) -> Credentials:
    """Who is calling: the connection string's user and password, or a bearer key.

    With both, the bearer key wins (as ``neon({authToken})`` means it to) and the user
    still names the tenant."""
    raw = headers.get("Neon-Connection-String")
    bearer = headers.get("Authorization")
    key = ""
    if bearer is not None:
        scheme, _, token = bearer.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("malformed Authorization header: expected 'Bearer <API key>'")
        key = token.strip()
    if raw is None:
        raise Unauthorized(
            "missing Neon-Connection-String header: "
            "send postgresql://<tenant>:<API key>@<node>/<database>"
        )
    if len(raw) > MAX_CONNECTION_STRING:
        raise BadRequest(
            f"Neon-Connection-String is {len(raw)} bytes; at most {MAX_CONNECTION_STRING}",
            field="Neon-Connection-String",
        )
    user, password, database = _connection_string(raw)
    if not key:
        if not password:
            raise Unauthorized(
                "the connection string has no password: put the tenant's API key there"
            )
        key = password
    return Credentials(user, key, database)


@functools.lru_cache(maxsize=1024)
def _connection_string(raw: str) -> tuple[str, str | None, str | None]:
    """(user, password, database): memoized, since a client sends the same one each time."""
    try:
        url = urlsplit(raw.strip())
        user, password = url.username, url.password
    except ValueError:
        raise BadRequest(
            "Neon-Connection-String is not a postgresql:// URL", field="Neon-Connection-String"
        ) from None
    if url.scheme not in ("postgres", "postgresql") or not user:
        raise BadRequest(
            "Neon-Connection-String must be postgresql://<tenant>:<API key>@<node>/<database>",
            field="Neon-Connection-String",
        )
    database = unquote(url.path.lstrip("/")) or None
    return unquote(user), unquote(password) if password else None, database


def _param(value: Any, index: int) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    raise BadRequest(
        f"parameter ${index} must be a string or null (JSON objects and arrays: send them "
        "as PostgreSQL text, as @neondatabase/serverless does)",
        field="params",
    )


def _query(obj: Any, limits: Limits, where: str) -> SqlQuery:
    if not isinstance(obj, dict):
        raise BadRequest(f"{where} must be an object with a query", field="query")
    unknown = set(obj) - _QUERY_FIELDS
    if unknown:
        raise BadRequest(f"unknown field {sorted(unknown)[0]!r} in {where}", field="query")
    sql = obj.get("query")
    if not isinstance(sql, str) or not sql.strip():
        raise BadRequest(f"{where}.query must be a non-empty string", field="query")
    if len(sql) > limits.max_sql_length:
        raise PayloadTooLarge(
            f"{where}.query is {len(sql)} characters; at most {limits.max_sql_length}"
        )
    if "\x00" in sql:
        raise BadRequest(f"{where}.query contains a NUL character", field="query")
    params = obj.get("params", [])
    if params is None:
        params = []
    if not isinstance(params, list):
        raise BadRequest(f"{where}.params must be an array", field="params")
    if len(params) > limits.max_params:
        raise BadRequest(
            f"{where}.params has {len(params)} values; at most {limits.max_params}",
            field="params",
        )
    values = tuple(_param(p, i + 1) for i, p in enumerate(params))
    for i, v in enumerate(values):
        if v is not None and "\x00" in v:
            # PostgreSQL's answer to it (a data exception), not a protocol violation: a
            # client takes class 08 for a lost connection, and may retry it for ever.
            raise BadRequest(
                f'invalid byte sequence for encoding "UTF8": 0x00 '
                f"(parameter ${i + 1} contains a NUL character)",
                field="params",
                sqlstate="22021",
            )
    return SqlQuery(sql, values)


def parse_sql_request(body: bytes, headers: Mapping[str, str], limits: Limits) -> SqlRequest:
    """The request ``body`` and ``headers`` describe, or BadRequest saying what is wrong."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadRequest('the body must be {"query": ..., "params": [...]} or {"queries": [...]}')
    unknown = set(obj) - _BODY_FIELDS
    if unknown:
        raise BadRequest(f"unknown field {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
    batch = "queries" in obj
    if batch:
        if "query" in obj:
            raise BadRequest("send either query or queries, not both", field="queries")
        items = obj["queries"]
        if not isinstance(items, list):
            raise BadRequest("queries must be an array", field="queries")
        if len(items) > limits.max_statements:
            raise BadRequest(
                f"a batch holds {len(items)} queries; at most {limits.max_statements}",
                field="queries",
            )
        queries = tuple(_query(q, limits, f"queries[{i}]") for i, q in enumerate(items))
    else:
        if "query" not in obj:
            raise BadRequest("missing field 'query'", field="query")
        queries = (_query(obj, limits, "the body"),)
    level = headers.get("Neon-Batch-Isolation-Level")
    isolation = None
    if level is not None:
        isolation = _ISOLATION.get(level.replace(" ", "").replace("_", "").lower())
        if isolation is None:
            raise BadRequest(
                "Neon-Batch-Isolation-Level must be one of ReadUncommitted, ReadCommitted, "
                f"RepeatableRead, Serializable; not {level[:40]!r}",
                field="Neon-Batch-Isolation-Level",
            )
    return SqlRequest(
        queries,
        batch,
        array_mode=_flag(headers, "Neon-Array-Mode"),
        raw_text=_flag(headers, "Neon-Raw-Text-Output"),
        isolation=isolation,
        read_only=_flag(headers, "Neon-Batch-Read-Only"),
        deferrable=_flag(headers, "Neon-Batch-Deferrable"),
    )
