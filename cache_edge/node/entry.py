"""Cached entries and result framing: rows stay in their msgpack wire form end to end.

The origin answers a query with a msgpack map whose first three entries are
``columns``, ``rows`` and ``rowCount``. Their raw bytes (the *core*) are cut out
once on a miss, stored behind a fixed binary header, and spliced into every
hit's response after a map header, so a hit never decodes or re-encodes rows.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from cache_edge.common.errors import CacheEdgeError, OriginUnavailable
from cache_edge.common.wire import json_dumps, packb, unpackb

__all__ = [
    "Entry",
    "core_to_dict",
    "result_json",
    "result_msgpack",
    "split_origin_result",
]

# version 1: producedAt (epoch ms, origin clock), origin invalidation watermark
_HEADER_V1 = struct.Struct(">Bqq")
# version 2: the same, then the length of a msgpack map of extras before the core
# ({"w": warnings, "t": implicit tags}; absent keys are empty)
_HEADER = struct.Struct(">BqqI")
_VERSION = 2
_CORE_KEYS = ("columns", "rows", "rowCount")
_MAP4 = b"\x84"  # fixmap with 4 entries: columns, rows, rowCount, info
_INFO_KEY = packb("info")


@dataclass(frozen=True, slots=True)
class Entry:
    """One query result as cached: when the origin produced it, and its wire-form core."""

    produced_at_ms: int
    core: bytes
    watermark: int = 0
    # What table changes cannot explain about this result (origin/core/dependencies.py).
    warnings: tuple[str, ...] = ()
    # Implicit tags the origin gave it (``table:<schema>.<name>``, automatic invalidation).
    tags: tuple[str, ...] = ()

    def age(self, now: float) -> float:
        # Clamp: a node clock slightly behind the origin's must not report negative ages.
        return max(0.0, now - self.produced_at_ms / 1000.0)

    def encode(self) -> bytes:
        fields: dict[str, list[str]] = {}
        if self.warnings:
            fields["w"] = list(self.warnings)
        if self.tags:
            fields["t"] = list(self.tags)
        extras = packb(fields) if fields else b""
        header = _HEADER.pack(_VERSION, self.produced_at_ms, self.watermark, len(extras))
        return header + extras + self.core

    @classmethod
    def decode(cls, data: bytes) -> Entry | None:
        """Parse a stored entry; anything unreadable (unknown format, garbage) is a miss."""
        if len(data) < _HEADER_V1.size:
            return None
        version = data[0]
        if version == 1:
            _, produced, watermark = _HEADER_V1.unpack_from(data)
            return cls(produced, data[_HEADER_V1.size :], watermark)
        if version != _VERSION or len(data) < _HEADER.size:
            return None
        _, produced, watermark, extras_len = _HEADER.unpack_from(data)
        start = _HEADER.size + extras_len
        warnings: tuple[str, ...] = ()
        tags: tuple[str, ...] = ()
        if extras_len:
            try:
                extras = unpackb(data[_HEADER.size : start])
                warnings = tuple(str(w) for w in extras.get("w", ()))
                tags = tuple(str(t) for t in extras.get("t", ()))
            except (CacheEdgeError, AttributeError, TypeError):
                return None
        return cls(produced, data[start:], watermark, warnings, tags)


def split_origin_result(raw: bytes) -> tuple[bytes, dict[str, Any]]:
    """Cut the core bytes out of an origin msgpack answer; return (core, other fields)."""
    try:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(raw) + 1)
        unpacker.feed(raw)
        count = unpacker.read_map_header()
        start = unpacker.tell()
        for expected in _CORE_KEYS:
            if unpacker.unpack() != expected:
                raise ValueError(f"origin answer does not start with {_CORE_KEYS}")
            unpacker.skip()
        end = unpacker.tell()
        rest: dict[str, Any] = {}
        for _ in range(count - len(_CORE_KEYS)):
            key = unpacker.unpack()
            rest[key] = unpacker.unpack()
    except (ValueError, msgpack.UnpackException, msgpack.OutOfData) as exc:
        raise OriginUnavailable(f"the origin sent a malformed result: {exc}") from None
    return raw[start:end], rest


def core_to_dict(core: bytes) -> dict[str, Any]:
    """Decode a core (three key/value pairs without a map header) into a dict."""
    # A fixmap header with 3 entries turns the pairs into one decodable map.
    decoded = unpackb(b"\x83" + core)
    assert isinstance(decoded, dict)
    return decoded


def result_msgpack(core: bytes, info: dict[str, Any]) -> bytes:
    """The public msgpack answer: {columns, rows, rowCount, info}, rows untouched."""
    return b"".join((_MAP4, core, _INFO_KEY, packb(info)))


def result_json(core: bytes, info: dict[str, Any]) -> bytes:
    body = core_to_dict(core)
    body["info"] = info
    return json_dumps(body)
