"""Freshness: may a cached entry be served under what the region knows of purges?

The one rule, for every tier (docs/invalidation.md). An entry carries the origin's
watermark ``W``: the last purge committed before its rows were produced. The region
knows a **floor** (entries with ``W < floor`` are void) and, for each tag the entry
carries, the seq of the last purge of that tag. The entry may be served as current iff

    someone vouches for the state (a floor is known)  and  W >= floor
    and  every tag version <= W

"Someone vouches" is the Redis ``sync`` lease for the shared tier and the purge
mirror's lease for the hot tier (:mod:`cache_edge.node.purge_mirror`): a region cut
off from the origin stops vouching, and then serves nothing as fresh. Whether a
current entry is fresh, stale-while-revalidate or expired is its age against the
query's strategy: :func:`judge` says both at once, so the hot tier and the shared
tier cannot drift apart.

Pure: no I/O, nothing from the service but ``common``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from cache_edge.common.strategy import CacheStrategy

__all__ = ["PurgeState", "Verdict", "judge", "survives"]

# ttl: fresh; swr: stale, serve and refresh; expired: current but past ttl + swr (may stand
# in on an origin failure); unvouched: nobody vouches for the purge state (may stand in
# only if it survives, see :func:`survives`); void: a purge the region applied voided it.
Verdict = Literal["ttl", "swr", "expired", "unvouched", "void"]


def survives(watermark: int, floor: int, versions: Iterable[int]) -> bool:
    """Has no purge the region knows of voided an entry with this watermark?

    Weaker than :meth:`PurgeState.current`: it needs no lease, so it holds for a region
    cut off from the origin too, which is what staleIfError may stand on, and never less."""
    return watermark >= floor and all(v <= watermark for v in versions)


@dataclass(frozen=True, slots=True)
class PurgeState:
    """What the region knows of the purges that concern one entry."""

    # Entries with a lower watermark are void; None: nobody vouches for the state now
    # (no sync lease, or the mirror's lease lapsed, or it never heard of the tenant).
    floor: int | None
    # The seq of the last purge of each of the entry's tags; 0: never purged (seqs start at 1).
    versions: tuple[int, ...] = ()

    @classmethod
    def from_redis(cls, values: Sequence[bytes | None]) -> PurgeState:
        """Read ``[sync lease, *tag versions]`` as the shared tier returns them."""
        if not values:
            return _UNKNOWN
        floor, *versions = values
        return cls(
            int(floor) if floor is not None else None,
            tuple(int(v) if v is not None else 0 for v in versions),
        )

    @property
    def vouched(self) -> bool:
        return self.floor is not None

    def current(self, watermark: int) -> bool:
        """May an entry with this watermark be served as fresh under this state?"""
        return self.floor is not None and survives(watermark, self.floor, self.versions)

    def required(self) -> int:
        """The lowest watermark an answer needs to be current under this state."""
        return max((self.floor or 0, *self.versions))


_UNKNOWN = PurgeState(None)


def judge(state: PurgeState, watermark: int, age: float, strategy: CacheStrategy) -> Verdict:
    """How an entry of this watermark and age may be used under ``state`` and ``strategy``."""
    if not state.vouched:
        return "unvouched"
    if not state.current(watermark):
        return "void"
    if age < strategy.ttl:
        return "ttl"
    if age < strategy.ttl + strategy.swr:
        return "swr"
    return "expired"
