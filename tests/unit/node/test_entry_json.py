"""JSON answers spliced from a core's JSON members: the same bytes as encoding at once,
and in the hot tier the members are made once per entry, counted in its budget."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest

import cache_edge.node.entry as entry_module
from cache_edge.common.answer import QUERY_CORE, TRANSACTION_CORE, core_to_dict, split_core
from cache_edge.common.wire import json_dumps, json_loads, packb
from cache_edge.node.entry import Entry, json_members, result_json
from cache_edge.node.tiers.memory import MemoryTier

COLUMNS = [
    {"name": "id", "type": "int4"},
    {"name": "price", "type": "numeric"},
    {"name": "at", "type": "timestamptz"},
    {"name": "day", "type": "date"},
    {"name": "t", "type": "timetz"},
    {"name": "span", "type": "interval"},
    {"name": "u", "type": "uuid"},
    {"name": "raw", "type": "bytea"},
    {"name": "doc", "type": "jsonb"},
    {"name": "name", "type": "text"},
]
ROW = [
    1,
    Decimal("10.50"),
    dt.datetime(2026, 11, 24, 21, 0, 0, 123000, tzinfo=dt.UTC),
    dt.date(2026, 11, 24),
    dt.time(12, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    dt.timedelta(days=1, seconds=3600, microseconds=5),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    b"\x00\xff",
    {"a": [1, None, "é"], "b": {"c": True}},
    'quote " and \\ and \u2028',
]
INFO = {
    "cacheStatus": "ttl",
    "region": "eu-west",
    "lastModified": "2026-11-24T21:00:00.123Z",
    "age": 12.5,
    "requestId": "abc",
    "signature": "0123",
    "warnings": ["depends on now()"],
}


def query_core(rows: list[list[Any]]) -> bytes:
    raw = packb({"columns": COLUMNS, "rows": rows, "rowCount": len(rows), "producedAt": 5})
    core, _ = split_core(raw)
    return core


def encoded_at_once(core: bytes, info: dict[str, Any], keys: tuple[str, ...] = QUERY_CORE) -> bytes:
    """What a JSON answer was before the splice: the decoded core and info, one object."""
    return json_dumps({**core_to_dict(core, keys), "info": info})


@pytest.mark.parametrize("rows", [[ROW, ROW], [], [[None] * len(COLUMNS)]])
def test_spliced_json_is_byte_for_byte_the_encoding_at_once(rows: list[list[Any]]) -> None:
    core = query_core(rows)
    members = json_members(core)
    assert not members.startswith(b"{") and not members.endswith(b"}")
    spliced = result_json(core, INFO, QUERY_CORE, members)
    assert spliced == encoded_at_once(core, INFO)
    assert spliced == result_json(core, INFO)  # members made on the spot: the same
    body = json_loads(spliced)
    assert list(body) == ["columns", "rows", "rowCount", "info"]
    assert body["rowCount"] == len(rows) and body["info"] == INFO


def test_spliced_json_of_a_transaction_core() -> None:
    raw = packb({"results": [{"columns": COLUMNS[:1], "rows": [[1]], "rowCount": 1}], "x": 1})
    core, _ = split_core(raw, TRANSACTION_CORE)
    info = {"cacheStatus": "none"}
    members = json_members(core, TRANSACTION_CORE)
    assert result_json(core, info, TRANSACTION_CORE, members) == encoded_at_once(
        core, info, TRANSACTION_CORE
    )


def test_empty_members_still_make_an_object() -> None:
    assert json_loads(result_json(b"", {"a": 1}, (), b"")) == {"info": {"a": 1}}


class Renders:
    """Counts how often the per-row work runs (the module function the tier calls)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = entry_module.json_members

        def counted(core: bytes, core_keys: tuple[str, ...] = QUERY_CORE) -> bytes:
            self.count += 1
            return real(core, core_keys)

        import cache_edge.node.tiers.memory as memory_module

        monkeypatch.setattr(memory_module, "json_members", counted)


def test_hot_tier_makes_the_json_members_once_per_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    renders = Renders(monkeypatch)
    mem = MemoryTier(1_000_000)
    entry = Entry(1_000, query_core([ROW] * 5), 3)
    mem.put("t", "k", entry, expires_at=2e9)
    before = mem.used_bytes
    held = mem.get("t", "k", 0)
    assert held is entry
    first = mem.json_members("t", "k", held.core)
    again = mem.json_members("t", "k", held.core)
    assert renders.count == 1 and again is first
    assert first == json_members(entry.core)
    assert mem.used_bytes == before + len(first)  # counted in the budget
    mem.flush_tenant("t")
    assert mem.used_bytes == 0  # and given back with the entry


def test_a_core_the_tier_does_not_hold_is_rendered_each_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    renders = Renders(monkeypatch)
    mem = MemoryTier(1_000_000)
    core = query_core([ROW])
    mem.put("t", "k", Entry(1_000, core, 3), expires_at=2e9)
    other = bytes(bytearray(core))  # equal bytes, another entry (e.g. a Redis hit's)
    assert mem.json_members("t", "k", other) == json_members(core)
    assert mem.json_members("t", "absent", core) == json_members(core)
    assert mem.json_members("t2", "k", core) == json_members(core)  # another tenant's key
    assert renders.count == 3
    assert mem.used_bytes == len(core) + 600  # nothing kept


def test_json_members_stay_within_the_budget() -> None:
    core = query_core([ROW] * 3)
    members_size = len(json_members(core))
    slot = len(core) + 600
    mem = MemoryTier(8 * (slot + members_size))  # room for 8 entries with their JSON
    for i in range(20):
        mem.put("t", f"k{i}", Entry(1_000, core, 3), expires_at=2e9)
        held = mem.get("t", f"k{i}", 0)
        assert held is not None
        mem.json_members("t", f"k{i}", held.core)
        assert mem.used_bytes <= 8 * (slot + members_size)
    assert mem.evictions > 0 and mem.get("t", "k19", 0) is not None


def test_json_members_that_would_make_an_entry_too_big_are_not_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    renders = Renders(monkeypatch)
    core = query_core([ROW] * 20)
    mem = MemoryTier((len(core) + 600) * 8 + 8)  # the entry fits, not with its JSON
    mem.put("t", "k", Entry(1_000, core, 3), expires_at=2e9)
    used = mem.used_bytes
    assert mem.json_members("t", "k", core) == mem.json_members("t", "k", core)
    assert renders.count == 2 and mem.used_bytes == used
    assert mem.get("t", "k", 0) is not None
