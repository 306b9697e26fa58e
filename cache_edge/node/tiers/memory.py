"""The hot tier: recently served entries in this process's memory, bounded in bytes.

It answers hits without a Redis round trip. It never decides freshness on its own:
every hit is judged against the process's mirror of the region's purge state
(:mod:`cache_edge.node.purge_mirror`) by the same rule as a Redis hit is judged against
Redis (:mod:`cache_edge.node.freshness`). Entries are keyed by ``(tenant, signature)``:
what the cache key is, not where Redis happens to keep it.

An entry a JSON client asked for also keeps the JSON form of its core, made on the
first such hit and counted in the budget, so later JSON hits do no per-row work
(:func:`cache_edge.node.entry.json_members`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from cache_edge.common.answer import QUERY_CORE, CoreKeys
from cache_edge.node.entry import Entry, json_members

__all__ = ["MemoryTier"]

_OVERHEAD = 600  # measured: key tuple, slot, Entry, bytes header, OrderedDict node

Key = tuple[str, str]  # (tenant, signature)


@dataclass(slots=True)
class _Slot:
    entry: Entry
    expires_at: float  # wall clock, like the entry's producedAt
    size: int  # bytes counted against the budget: the core, the JSON form once made
    json: bytes | None = None  # the core's JSON members, once a JSON client asked


class MemoryTier:
    """Recently served entries of every tenant, least recently used first out."""

    def __init__(self, budget_bytes: int) -> None:
        self._budget = budget_bytes
        self._used = 0
        self._slots: OrderedDict[Key, _Slot] = OrderedDict()
        self.hits = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def used_bytes(self) -> int:
        return self._used

    def get(self, tenant: str, signature: str, now: float) -> Entry | None:
        key = (tenant, signature)
        slot = self._slots.get(key)
        if slot is None:
            return None
        if now >= slot.expires_at:
            self._drop(key)
            return None
        self._slots.move_to_end(key)
        return slot.entry

    def put(self, tenant: str, signature: str, entry: Entry, expires_at: float) -> None:
        if self._budget <= 0:
            return
        key = (tenant, signature)
        slot = _Slot(entry, expires_at, len(entry.core) + _OVERHEAD)
        if slot.size > self._budget // 8:
            return  # one huge result must not flush everything else
        if key in self._slots:
            self._drop(key)
        self._slots[key] = slot
        self._used += slot.size
        self._evict()

    def json_members(
        self, tenant: str, signature: str, core: bytes, core_keys: CoreKeys = QUERY_CORE
    ) -> bytes:
        """The JSON members of ``core``: made once while the entry it belongs to is held
        here (the same object :meth:`get` returned), made afresh for any other core."""
        slot = self._slots.get((tenant, signature))
        if slot is None or slot.entry.core is not core:
            return json_members(core, core_keys)
        if slot.json is None:
            members = json_members(core, core_keys)
            if slot.size + len(members) > self._budget // 8:
                return members  # as in put: one huge result must not flush the rest
            slot.json = members
            slot.size += len(members)
            self._used += len(members)
            self._evict()
        return slot.json

    def _evict(self) -> None:
        while self._used > self._budget:
            oldest = next(iter(self._slots))
            self._drop(oldest)
            self.evictions += 1

    def _drop(self, key: Key) -> None:
        slot = self._slots.pop(key)
        self._used -= slot.size

    def flush_tenant(self, tenant: str) -> int:
        doomed = [k for k in self._slots if k[0] == tenant]
        for key in doomed:
            self._drop(key)
        return len(doomed)

    def flush(self) -> None:
        self._slots.clear()
        self._used = 0
