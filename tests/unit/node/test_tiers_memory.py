"""The in-process hot tier and the mirror of purge state that judges it."""

from __future__ import annotations

from typing import Any

from cache_edge.node.entry import Entry
from cache_edge.node.purge_mirror import PurgeMirror
from cache_edge.node.tiers.memory import MemoryTier


def entry(size: int = 100, watermark: int = 10) -> Entry:
    return Entry(1_000_000, b"x" * size, watermark)


def test_lru_stays_within_its_byte_budget() -> None:
    mem = MemoryTier(10_000)
    for i in range(100):
        mem.put("t", f"k{i}", entry(500), expires_at=2e9)
        assert mem.used_bytes <= 10_000
    assert mem.get("t", "k0", 0) is None and mem.get("t", "k99", 0) is not None
    assert mem.evictions > 0
    mem.put("t", "huge", entry(5_000), expires_at=2e9)  # > budget / 8: not admitted
    assert mem.get("t", "huge", 0) is None


def test_expiry_and_tenant_flush() -> None:
    mem = MemoryTier(100_000)
    mem.put("t1", "a", entry(), expires_at=100.0)
    mem.put("t2", "b", entry(), expires_at=100.0)
    assert mem.get("t1", "a", 99.0) is not None
    assert mem.get("t1", "a", 100.0) is None
    assert mem.flush_tenant("t2") == 1 and mem.get("t2", "b", 0) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def mirror() -> tuple[PurgeMirror, MemoryTier, FakeClock]:
    clock = FakeClock()
    mem = MemoryTier(100_000)
    return PurgeMirror("r", "p", None, mem, clock=clock), mem, clock  # type: ignore[arg-type]


def msg(
    prev: int, to: int, floor: int = 0, tags: dict[str, int] | None = None, lease: float = 1.0
) -> dict[str, Any]:
    return {"t": "acme", "prev": prev, "to": to, "floor": floor, "tags": tags or {}, "lease": lease}


def test_mirror_judges_watermarks_against_tags_floor_and_lease() -> None:
    m, _, clock = mirror()
    assert not m.is_current("acme", 10, ())  # knows nothing yet
    m.apply(msg(-1, 10, floor=5))
    assert m.is_current("acme", 10, ("x",))
    m.apply(msg(10, 11, tags={"x": 11}))
    assert not m.is_current("acme", 10, ("x",))  # purged after the entry was produced
    assert m.is_current("acme", 10, ("y",))
    assert m.is_current("acme", 11, ("x",))
    assert m.required("acme", ("x",)) == 11
    m.apply(msg(11, 12, floor=12))  # purge all
    assert not m.is_current("acme", 11, ("y",))
    clock.now = 1.5  # no message for longer than the lease
    assert not m.is_current("acme", 12, ()) and not m.live("acme")
    m.apply(msg(12, 12))  # heartbeat renews
    assert m.is_current("acme", 12, ())


def test_a_gap_flushes_the_tenant() -> None:
    m, mem, _ = mirror()
    m.apply(msg(-1, 10))
    mem.put("acme", "k", entry(), expires_at=2e9)
    m.apply(msg(12, 13, tags={"x": 13}))  # 11 and 12 were never seen
    assert m.gaps == 1
    assert mem.get("acme", "k", 0) is None
    assert m.is_current("acme", 13, ("x",))
