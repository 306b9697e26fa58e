"""The per-node circuit breaker of the cluster client (cache_edge/node/tiers/cluster.py)."""

from __future__ import annotations

import pytest

from cache_edge.node.tiers.cluster import NodeBreakers, NodeUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_tripped_node_is_refused_until_retry_after_and_others_are_not() -> None:
    clock = Clock()
    breakers = NodeBreakers(1.0, clock)
    cause = ConnectionRefusedError("refused")
    tripped = breakers.trip("10.0.0.1:7000", cause)
    assert tripped.node == "10.0.0.1:7000" and tripped.cause is cause
    with pytest.raises(NodeUnavailable) as refused:
        breakers.check("10.0.0.1:7000")
    assert refused.value.cause is None  # a refusal is no new failure
    breakers.check("10.0.0.2:7000")  # another node is not affected
    assert breakers.open_nodes() == ["10.0.0.1:7000"]
    clock.now += 1.0
    breakers.check("10.0.0.1:7000")  # tried again after retry_after
    assert breakers.open_nodes() == []
