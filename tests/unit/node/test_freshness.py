"""The one freshness rule, alone, and both tiers reading their state into it alike."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from cache_edge.common.strategy import CacheStrategy
from cache_edge.node import freshness
from cache_edge.node.freshness import PurgeState, judge, survives
from cache_edge.node.purge_mirror import PurgeMirror
from cache_edge.node.tiers.memory import MemoryTier
from tests.unit.node.fakes import FakeClock

STRATEGY = CacheStrategy(ttl=10, swr=20, tags=("a", "b"))


@pytest.mark.parametrize(
    "state,watermark,age,verdict",
    [
        (PurgeState(None, (0, 0)), 5, 0, "unvouched"),  # no lease: never fresh
        (PurgeState(6, (0, 0)), 5, 0, "void"),  # below the floor (purge all, resync)
        (PurgeState(5, (0, 0)), 5, 0, "ttl"),  # at the floor
        (PurgeState(0, (0, 6)), 5, 0, "void"),  # a tag purged after the rows
        (PurgeState(0, (5, 3)), 5, 0, "ttl"),  # tags purged at or before the watermark
        (PurgeState(0, (0, 0)), 5, 9.99, "ttl"),
        (PurgeState(0, (0, 0)), 5, 10, "swr"),
        (PurgeState(0, (0, 0)), 5, 29.99, "swr"),
        (PurgeState(0, (0, 0)), 5, 30, "expired"),
        (PurgeState(0, (0, 6)), 5, 30, "void"),  # a voided entry is void at any age
    ],
)
def test_judge(state: PurgeState, watermark: int, age: float, verdict: str) -> None:
    assert judge(state, watermark, age, STRATEGY) == verdict


def test_current_needs_a_lease_survives_does_not() -> None:
    assert not PurgeState(None, (1,)).current(5)
    assert PurgeState(0, (1,)).current(5)
    assert survives(5, 0, (1, 5)) and not survives(5, 0, (6,)) and not survives(5, 6, ())


def test_required_is_the_newest_purge_the_state_knows() -> None:
    assert PurgeState(3, (0, 7, 2)).required() == 7
    assert PurgeState(9, (1,)).required() == 9
    assert PurgeState(None, (4,)).required() == 4
    assert PurgeState(None).required() == 0


def test_the_shared_tiers_mget_reads_as_a_state() -> None:
    assert PurgeState.from_redis([b"3", None, b"7"]) == PurgeState(3, (0, 7))
    assert PurgeState.from_redis([None, b"2"]) == PurgeState(None, (2,))
    assert PurgeState.from_redis([]) == PurgeState(None)


def _message(**fields: Any) -> dict[str, Any]:
    base = {"t": "acme", "prev": -1, "to": 9, "floor": 0, "tags": {}, "lease": 1.0}
    return {**base, **fields}


@pytest.mark.parametrize("watermark", [2, 3, 6, 7, 9])
def test_both_tiers_judge_the_same_purges_alike(watermark: int) -> None:
    """The region's Redis and a process's mirror, holding the same purges, agree."""
    clock = FakeClock()
    mirror = PurgeMirror("r", "p", None, MemoryTier(0), clock=clock)  # type: ignore[arg-type]
    mirror.apply(_message(floor=3, tags={"a": 7}))
    hot = mirror.state("acme", ("a", "b"))
    shared = PurgeState.from_redis([b"3", b"7", None])
    assert hot == shared
    for age in (0, 15, 40):
        assert judge(hot, watermark, age, STRATEGY) == judge(shared, watermark, age, STRATEGY)
    clock.advance(1.0)  # the mirror's lease lapsed, as a sync lease does
    assert mirror.state("acme", ("a", "b")) == PurgeState.from_redis([None, b"7", None])
    assert mirror.state("globex", ("a",)) == PurgeState(None)  # never heard of


def test_the_rule_is_a_leaf() -> None:
    """freshness.py does no I/O and imports nothing of the service but common/."""
    source = Path(freshness.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    project = {m for m in imported if m.split(".")[0] in ("cache_edge", "origin")}
    assert all(m.startswith("cache_edge.common.") for m in project), project
    assert not imported & {"asyncio", "redis", "time", "socket"}
