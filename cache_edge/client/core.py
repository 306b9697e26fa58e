"""The transport-free half of the SDK: request bodies out, typed results or typed errors in.

Both clients (aiohttp and http.client) call these functions, so the wire format and
the error mapping live in exactly one place.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from cache_edge import __version__
from cache_edge.client.results import Column, Info, InvalidationResult, Result, Rows
from cache_edge.common.errors import CacheEdgeError, OriginUnavailable, error_from_body
from cache_edge.common.protocol import Statement
from cache_edge.common.strategy import CacheStrategy
from cache_edge.common.wire import MSGPACK_TYPE, json_loads, packb, unpackb

__all__ = [
    "INVALIDATE_PATH",
    "QUERY_PATH",
    "TRANSACTION_PATH",
    "StatementLike",
    "check_base_url",
    "decode_response",
    "encode_body",
    "invalidate_body",
    "invalidation_from_wire",
    "network_error",
    "query_body",
    "request_headers",
    "result_from_wire",
    "results_from_wire",
    "transaction_body",
    "value_of",
]

QUERY_PATH = "/v1/query"
TRANSACTION_PATH = "/v1/transaction"
INVALIDATE_PATH = "/v1/invalidate"
USER_AGENT = f"cache-edge-python/{__version__}"

# A transaction statement: plain SQL, (sql, params), or a Statement.
StatementLike = str | tuple[str, Sequence[Any]] | Statement


def check_base_url(url: str) -> str:
    """Validate a node URL (``http(s)://host[:port][/prefix]``) and drop a trailing slash."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not a node URL like http://127.0.0.1:7410: {url!r}")
    return url.rstrip("/")


def request_headers(api_key: str) -> dict[str, str]:
    # Always msgpack both ways: it is the only format that round-trips every PG type exactly.
    return {
        "Authorization": f"Bearer {api_key}",
        "Content-Type": MSGPACK_TYPE,
        "Accept": MSGPACK_TYPE,
        "User-Agent": USER_AGENT,
    }


def query_body(sql: str, params: Sequence[Any], cache: CacheStrategy | None) -> dict[str, Any]:
    body: dict[str, Any] = {"sql": sql, "params": list(params)}
    if cache is not None:
        body["cacheStrategy"] = cache.to_wire()
    return body


def _statement(item: StatementLike, index: int) -> dict[str, Any]:
    if isinstance(item, Statement):
        return {"sql": item.sql, "params": list(item.params)}
    if isinstance(item, str):
        return {"sql": item, "params": []}
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        return {"sql": item[0], "params": list(item[1])}
    raise TypeError(
        f"statements[{index}]: expected SQL text, (sql, params) or Statement, got {item!r}"
    )


def transaction_body(statements: Iterable[StatementLike], isolation: str) -> dict[str, Any]:
    return {
        "statements": [_statement(s, i) for i, s in enumerate(statements)],
        "isolationLevel": isolation,
    }


def invalidate_body(
    tags: Sequence[str] | None,
    everything: bool,
    wait: float | None,
    tables: Sequence[str] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any]
    if everything:
        body = {"all": True}
    else:
        if isinstance(tags, str) or isinstance(tables, str) or not (tags or tables):
            raise ValueError("invalidate() needs a non-empty list of tags or tables")
        body = {"tags": list(tags or ())}
        if tables:
            body["tables"] = list(tables)
    if wait is not None:
        body["wait"] = wait
    return body


def encode_body(body: dict[str, Any]) -> bytes:
    """msgpack-encode a request; an unsendable parameter is named by its position."""
    try:
        return packb(body)
    except TypeError:
        _raise_bad_param(body)
        raise


def _raise_bad_param(body: dict[str, Any]) -> None:
    lists = [("", body.get("params", []))]
    lists += [(f"statement {i}: ", s["params"]) for i, s in enumerate(body.get("statements", []))]
    for where, params in lists:
        for n, value in enumerate(params, start=1):
            try:
                packb(value)
            except TypeError:
                raise TypeError(
                    f"{where}parameter ${n}: cannot send a value of type {type(value).__name__}"
                ) from None


def network_error(url: str, exc: BaseException, timeout: float | None = None) -> OriginUnavailable:
    """The one mapping from a transport failure to the SDK's error (timeouts say so)."""
    if isinstance(exc, TimeoutError):
        return OriginUnavailable(f"no answer from {url} within {timeout}s (client timeout)")
    detail = str(exc) or type(exc).__name__
    return OriginUnavailable(f"cannot reach {url}: {detail}")


def decode_response(
    status: int,
    content_type: str | None,
    data: bytes,
    url: str,
    retry_after: str | None = None,
) -> dict[str, Any]:
    """Decode a node's answer; an error status raises the typed error it describes."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    body: Any = None
    try:
        if "msgpack" in kind:
            body = unpackb(data)
        elif "json" in kind:
            body = json_loads(data)
    except CacheEdgeError:
        body = None  # undecodable: reported below as the server's fault, not the caller's
    if status >= 400:
        if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
            raise OriginUnavailable(f"{url} answered HTTP {status} without an error body")
        exc = error_from_body(body, status)
        if retry_after is not None:
            # An HTTP-date Retry-After is not a number: keep the class default then.
            with contextlib.suppress(ValueError):
                exc.retry_after = float(retry_after)
        raise exc
    if not isinstance(body, dict):
        shown = kind or "no content type"
        raise OriginUnavailable(f"{url} answered HTTP {status} ({shown}), not a cache-edge body")
    return body


def _datetime(raw: Any) -> dt.datetime | None:
    if isinstance(raw, dt.datetime):
        return raw
    if isinstance(raw, str):
        try:
            return dt.datetime.fromisoformat(raw)  # 3.11 reads the trailing "Z"
        except ValueError:
            return None
    return None


def info_from_wire(raw: Any) -> Info:
    info = raw if isinstance(raw, Mapping) else {}
    signature = info.get("signature")
    return Info(
        cache_status=str(info.get("cacheStatus", "none")),
        region=str(info.get("region", "")),
        last_modified=_datetime(info.get("lastModified")),
        age=float(info.get("age", 0.0) or 0.0),
        request_id=str(info.get("requestId", "")),
        signature=None if signature is None else str(signature),
        error=info.get("error"),
        cache_error=info.get("cacheError"),
        warnings=tuple(str(w) for w in info.get("warnings") or ()),
    )


def _result(raw: Any, info: Info, url: str) -> Result:
    try:
        columns = [Column(str(c["name"]), str(c["type"])) for c in raw["columns"]]
        rows = Rows.from_values(columns, raw["rows"], info)
        count = raw.get("rowCount")
        return Result(rows, int(count) if count is not None else len(rows))
    except (KeyError, TypeError, ValueError) as exc:
        raise OriginUnavailable(f"{url} answered a malformed result: {exc!r}") from None


def result_from_wire(body: dict[str, Any], url: str) -> Result:
    return _result(body, info_from_wire(body.get("info")), url)


def results_from_wire(body: dict[str, Any], url: str) -> list[Result]:
    info = info_from_wire(body.get("info"))
    results = body.get("results")
    if not isinstance(results, list):
        raise OriginUnavailable(f"{url} answered a transaction without results")
    return [_result(r, info, url) for r in results]


def invalidation_from_wire(body: dict[str, Any]) -> InvalidationResult:
    return InvalidationResult(
        invalidation_id=str(body.get("invalidationId", "")),
        applied_regions=tuple(map(str, body.get("appliedRegions") or ())),
        pending_regions=tuple(map(str, body.get("pendingRegions") or ())),
    )


def value_of(result: Result, column: int | str) -> Any:
    """``fetchval``: one value of the first row, or None when there are no rows."""
    if not result.rows:
        return None
    return result.rows[0][column]
