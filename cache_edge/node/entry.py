"""Cached entries and result framing: rows stay in their msgpack wire form end to end.

The origin answers a query with a msgpack map whose first three entries are
``columns``, ``rows`` and ``rowCount`` (cache_edge/common/answer.py). Their raw bytes
(the *core*) are cut out once on a miss, stored behind a fixed binary header, and
spliced into every hit's response after a map header, so a hit never decodes or
re-encodes rows.

A JSON answer is spliced the same way: the core's JSON *members* (the text between the
braces of ``{"columns":...,"rows":...,"rowCount":...}``) are made once per entry held in
the hot tier (:meth:`cache_edge.node.tiers.memory.MemoryTier.json_members`), and each
hit only encodes its ``info``. The bytes are exactly what encoding the decoded core and
``info`` as one object gives.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cache_edge.common.answer import QUERY_CORE, CoreKeys, core_to_dict, read_answer, with_info
from cache_edge.common.errors import CacheEdgeError
from cache_edge.common.wire import json_dumps, packb, unpackb

__all__ = [
    "Entry",
    "core_to_dict",
    "json_members",
    "result_json",
    "result_msgpack",
]

# version 1: producedAt (epoch ms, origin clock), origin invalidation watermark
_HEADER_V1 = struct.Struct(">Bqq")
# version 2: the same, then the length of a msgpack map of extras before the core
# ({"w": warnings, "t": implicit tags}; absent keys are empty)
_HEADER = struct.Struct(">BqqI")
_VERSION = 2


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

    @classmethod
    def from_origin(cls, raw: bytes, core_keys: CoreKeys = QUERY_CORE) -> Entry:
        """The entry of an origin's query answer: its core cut out once, rows untouched."""
        core, answer = read_answer(raw, core_keys)
        return cls(answer.produced_at, core, answer.watermark or 0, answer.warnings, answer.tags)

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


def result_msgpack(core: bytes, info: Mapping[str, Any], core_keys: CoreKeys = QUERY_CORE) -> bytes:
    """The public msgpack answer: the core's entries (rows untouched), then ``info``."""
    return with_info(core, core_keys, info)


def json_members(core: bytes, core_keys: CoreKeys = QUERY_CORE) -> bytes:
    """The core as JSON object members, without the braces: ``"columns":[...],...``.

    This is the per-row work of a JSON answer (decode every value, encode it as JSON):
    done once per entry in the hot tier, and per answer otherwise."""
    return json_dumps(core_to_dict(core, core_keys))[1:-1]


def result_json(
    core: bytes,
    info: Mapping[str, Any],
    core_keys: CoreKeys = QUERY_CORE,
    members: bytes | None = None,
) -> bytes:
    """The public JSON answer: the core's members (``members``, when made already), then
    ``info``; byte for byte what encoding ``{**core, "info": info}`` at once gives."""
    if members is None:
        members = json_members(core, core_keys)
    info_json = json_dumps(info)
    if not members:  # no core keys: nothing to separate from
        return b'{"info":' + info_json + b"}"
    return b"".join((b"{", members, b',"info":', info_json, b"}"))
