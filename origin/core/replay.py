"""Refuse a node signature seen before: replay protection inside the signature window.

A signature is only accepted while its timestamp is within ``signature_window`` of
now, so a signature needs remembering only until then; after that the window
check refuses it by itself. Only verified signatures are remembered, so an
attacker without the node secret cannot fill the cache.

The cache is per process: with several origin replicas behind a load balancer, a
captured request could be replayed once per other replica within the window.
TLS between nodes and origin keeps requests from being captured in the first place.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

__all__ = ["ReplayCache"]

# Beyond this many remembered signatures the oldest are forgotten early, so that a
# burst of traffic costs bounded memory (about 150 bytes each) instead of the process.
DEFAULT_CAPACITY = 1_000_000


class ReplayCache:
    def __init__(
        self, capacity: int = DEFAULT_CAPACITY, clock: Callable[[], float] = time.time
    ) -> None:
        self._capacity = capacity
        self._clock = clock
        self._seen: set[bytes] = set()
        self._expiry: list[tuple[float, bytes]] = []  # min-heap of (forget after, signature)
        self.evicted_early = 0  # forgotten before their window closed (capacity reached)

    def __len__(self) -> int:
        return len(self._seen)

    def first_use(self, signature: str, valid_until: float) -> bool:
        """Remember ``signature`` until ``valid_until``; False if it was already used."""
        self._prune(self._clock())
        key = bytes.fromhex(signature) if len(signature) == 64 else signature.encode()
        if key in self._seen:
            return False
        while len(self._seen) >= self._capacity:
            _, oldest = heapq.heappop(self._expiry)
            self._seen.discard(oldest)
            self.evicted_early += 1
        self._seen.add(key)
        heapq.heappush(self._expiry, (valid_until, key))
        return True

    def _prune(self, now: float) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] < now:
            _, key = heapq.heappop(expiry)
            self._seen.discard(key)
