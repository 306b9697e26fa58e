"""The origin's answer to a node, defined once: the origin encodes it, the node reads it.

It is one map (msgpack between them; JSON for curl), its *core* first, then what the
origin says about the core:

    query        columns, rows, rowCount | producedAt, watermark[, tables, warnings,
                                                                    invalidation, tags]
    transaction  results                 | producedAt[, invalidation]

The node cuts the core's raw bytes out once (:func:`read_answer`) and splices them,
untouched, into its own answer and into cache entries (cache_edge/node/entry.py): rows
are never decoded or re-encoded between the origin's cursor and the client.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from cache_edge.common.errors import OriginUnavailable
from cache_edge.common.wire import json_dumps, packb, unpackb

__all__ = [
    "PG_CORE",
    "QUERY_CORE",
    "TRANSACTION_CORE",
    "CoreKeys",
    "OriginAnswer",
    "WriteInvalidation",
    "core_to_dict",
    "iso_ms",
    "read_answer",
    "split_core",
    "with_info",
]

CoreKeys = tuple[str, ...]
QUERY_CORE: Final[CoreKeys] = ("columns", "rows", "rowCount")
# The PostgreSQL door's reads (origin/wire/reads.py): one bin of PostgreSQL's own messages.
PG_CORE: Final[CoreKeys] = ("pg",)
TRANSACTION_CORE: Final[CoreKeys] = ("results",)

_PACKER = msgpack.Packer()  # only for map headers, which carry no values
_FIELDS = ("producedAt", "watermark", "tables", "warnings", "invalidation", "tags")
_KEYS = {name: packb(name) for name in _FIELDS}
_INFO_KEY = packb("info")


@dataclass(frozen=True, slots=True)
class WriteInvalidation:
    """The purge that covers a write under automatic invalidation (origin/core/app.py):
    a caller can wait until every region has applied it (``GET /v1/invalidations/{id}``)."""

    recorded: bool  # the write's purge was durably recorded before the answer left
    id: str | None = None  # the tenant's newest purge; None: there is none yet
    seq: int | None = None
    epoch: str | None = None  # which purge log (origin/purge_log/log.py)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.id is not None:
            out["id"] = self.id
        if self.seq is not None:
            out["seq"] = self.seq
        out["recorded"] = self.recorded
        if self.epoch is not None:
            out["epoch"] = self.epoch
        return out

    @classmethod
    def from_wire(cls, value: Any) -> WriteInvalidation | None:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise TypeError(f"invalidation is a {type(value).__name__}, not a map")
        return cls(
            _bool(value.get("recorded", False)),
            _opt_str(value.get("id")),
            _opt_int(value.get("seq")),
            _opt_str(value.get("epoch")),
        )


@dataclass(frozen=True, slots=True)
class OriginAnswer:
    """What the origin says about a result besides the result itself."""

    produced_at: int  # epoch ms on the origin's clock, just before the statement ran
    # The last purge known committed before the rows were produced (docs/invalidation.md);
    # a query's answer always has one, a transaction's none.
    watermark: int | None = None
    tables: tuple[str, ...] = ()  # base tables the statement reads (origin/core/dependencies.py)
    warnings: tuple[str, ...] = ()  # what table changes cannot explain about the result
    invalidation: WriteInvalidation | None = None  # a write's purge (automatic invalidation)
    tags: tuple[str, ...] = ()  # implicit tags (``table:<schema>.<name>``)

    def fields(self) -> dict[str, Any]:
        """The wire fields after the core, in contract order; empty ones are left out."""
        out: dict[str, Any] = {"producedAt": self.produced_at}
        if self.watermark is not None:
            out["watermark"] = self.watermark
        if self.tables:
            out["tables"] = list(self.tables)
        if self.warnings:
            out["warnings"] = list(self.warnings)
        if self.invalidation is not None:
            out["invalidation"] = self.invalidation.to_wire()
        if self.tags:
            out["tags"] = list(self.tags)
        return out

    def pack(self, core_keys: CoreKeys, core: Iterable[bytes]) -> bytes:
        """The msgpack answer. ``core`` is the raw key/value pairs of ``core_keys``, in
        that order, in as many pieces as the caller has (joined once, here)."""
        fields = self.fields()
        parts = [_map_header(core_keys, len(fields)), *core]
        for key, value in fields.items():
            parts += (_KEYS[key], packb(value))
        return b"".join(parts)

    def dump_json(self, core: Mapping[str, Any]) -> bytes:
        """The JSON answer (for curl): the decoded core, then the same fields."""
        return json_dumps({**core, **self.fields()})

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> OriginAnswer:
        try:
            return cls(
                _int(fields.get("producedAt", 0)),
                _opt_int(fields.get("watermark")),
                _strings(fields.get("tables")),
                _strings(fields.get("warnings")),
                WriteInvalidation.from_wire(fields.get("invalidation")),
                _strings(fields.get("tags")),
            )
        except (TypeError, ValueError) as exc:
            raise OriginUnavailable(f"the origin sent a malformed answer: {exc}") from None


def read_answer(raw: bytes, core_keys: CoreKeys = QUERY_CORE) -> tuple[bytes, OriginAnswer]:
    """The core's raw bytes and the typed rest of an origin's msgpack answer."""
    core, rest = split_core(raw, core_keys)
    return core, OriginAnswer.from_fields(rest)


def split_core(raw: bytes, core_keys: CoreKeys = QUERY_CORE) -> tuple[bytes, dict[str, Any]]:
    """Cut the core (its key/value pairs, without a map header) out of a msgpack answer
    that must start with ``core_keys``; return it and the other fields, decoded."""
    try:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(raw) + 1)
        unpacker.feed(raw)
        count = unpacker.read_map_header()
        start = unpacker.tell()
        for expected in core_keys:
            if unpacker.unpack() != expected:
                raise ValueError(f"origin answer does not start with {core_keys}")
            unpacker.skip()
        end = unpacker.tell()
        rest: dict[str, Any] = {}
        for _ in range(count - len(core_keys)):
            key = unpacker.unpack()
            rest[key] = unpacker.unpack()
    except (ValueError, msgpack.UnpackException, msgpack.OutOfData) as exc:
        raise OriginUnavailable(f"the origin sent a malformed result: {exc}") from None
    return raw[start:end], rest


def _map_header(core_keys: CoreKeys, extra: int = 0) -> bytes:
    header: bytes = _PACKER.pack_map_header(len(core_keys) + extra)
    return header


def core_to_dict(core: bytes, core_keys: CoreKeys = QUERY_CORE) -> dict[str, Any]:
    """Decode a core (its key/value pairs without a map header) into a dict."""
    decoded = unpackb(_map_header(core_keys) + core)
    assert isinstance(decoded, dict)
    return decoded


def with_info(core: bytes, core_keys: CoreKeys, info: Mapping[str, Any]) -> bytes:
    """The node's msgpack answer: the core as the origin sent it, then ``info``."""
    return b"".join((_map_header(core_keys, 1), core, _INFO_KEY, packb(dict(info))))


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected a boolean, got {type(value).__name__}")
    return value


def _opt_int(value: Any) -> int | None:
    return None if value is None else _int(value)


def _opt_str(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise TypeError("expected a list of strings")
    return tuple(value)


@functools.lru_cache(maxsize=4096)
def iso_ms(epoch_ms: int) -> str:
    """``producedAt`` as the answers show it (``lastModified``): ISO 8601, UTC, to the ms.
    Cached: every hit of an entry formats the same instant."""
    stamp = dt.datetime.fromtimestamp(epoch_ms / 1000, dt.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
