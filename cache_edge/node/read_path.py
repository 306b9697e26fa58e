"""The read path: key -> hot tier -> shared tier -> freshness -> origin, coalesced per region.

Whether an entry may be served is decided by one rule for both tiers
(:mod:`cache_edge.node.freshness`); the tier and the origin link are passed in
(:mod:`cache_edge.node.ports`), so the whole path runs against in-memory fakes in
unit tests (tests/unit/node/test_read_path.py).

Coalescing has two floors. Inside a process, a single-flight group lets one
task fetch per key. Across the processes of a region, the fetching task holds a
short Redis lock on the key; whoever loses waits for the winner's entry to
appear instead of calling the origin, so a stampede over many processes still
costs one origin execution. Stale-while-revalidate refreshes take the same lock,
which makes them one per key per region.

Round trips (issue 18): a hit is one (the lookup); a miss is two, because the
lookup takes the fill lock in the same step when the entry cannot be served, and
the store checks the purge state, keeps the rows and releases the lock in one
more (:mod:`cache_edge.node.tiers.redis`, ``_LOOKUP`` and ``_STORE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cache_edge.common.answer import read_answer
from cache_edge.common.errors import (
    CacheEdgeError,
    DatabaseUnavailable,
    InternalError,
    OriginUnavailable,
    PoolTimeout,
    QueryTimeout,
)
from cache_edge.common.keys import cache_key
from cache_edge.common.protocol import QueryRequest, Statement
from cache_edge.common.singleflight import Group
from cache_edge.common.strategy import CacheStrategy
from cache_edge.node.entry import Entry
from cache_edge.node.freshness import PurgeState, Verdict, judge, survives
from cache_edge.node.ports import FillLock, Looked, OriginLink, SharedTier
from cache_edge.node.purge_mirror import PurgeMirror
from cache_edge.node.tiers.memory import MemoryTier
from cache_edge.node.tiers.redis import TierUnavailable
from cache_edge.server.config import NodeConfig
from cache_edge.server.logs import get_logger
from cache_edge.server.tasks import stop_tasks

__all__ = ["Answer", "QueryCache"]

log = get_logger(__name__)

# Origin failures after which a stale entry may stand in (staleIfError).
_STALE_OK = (OriginUnavailable, DatabaseUnavailable, PoolTimeout, QueryTimeout, InternalError)


@dataclass(slots=True)
class Answer:
    """What the node tells the client: the result core plus how it was obtained."""

    core: bytes
    status: str  # none | miss | ttl | swr | stale
    produced_at_ms: int
    signature: str | None = None
    error: str | None = None  # the origin error a stale answer stands in for
    cache_error: str | None = None  # why the shared tier was bypassed
    warnings: tuple[str, ...] = ()  # what the result depends on besides table contents
    # A write's purge under automatic invalidation: {id, seq, recorded} (origin/core/app.py).
    invalidation: dict[str, Any] | None = None

    def age(self, now: float) -> float:
        """Seconds since the rows were produced; 0 for an answer that was not cached."""
        if self.status == "none" or not self.produced_at_ms:
            return 0.0
        return max(0.0, now - self.produced_at_ms / 1000)  # a clock behind the origin's


@dataclass(frozen=True, slots=True)
class _Flight:
    """Everything one fetch of one key needs."""

    tenant: str
    sig: str
    stmt: Statement
    strategy: CacheStrategy
    request_id: str
    # The strategy's tags plus the implicit table tags last seen for this statement text.
    tags: tuple[str, ...]
    # Serve nothing produced before this purge (a PostgreSQL-door session's own write).
    min_watermark: int = 0


@dataclass(frozen=True, slots=True)
class _Fetched:
    """A flight's result, and whether the region's purge state vouched for it.

    Unchecked rows (Redis unavailable, or no sync lease) may predate a purge applied
    while they were being fetched. They are fine for the requests that were waiting
    when the fetch started, never for one that arrived later (see :meth:`QueryCache._fill`).
    """

    entry: Entry
    checked: bool
    started: float  # time.monotonic() when the fetch began
    cache_error: str | None = None


@dataclass(frozen=True, slots=True)
class _Seen:
    """What the region's tier showed for a key: its entry, if any, and the purge state."""

    entry: Entry | None
    state: PurgeState  # [sync lease, *tag versions] read with the entry
    cache_error: str | None = None  # why the tier could not be read
    lock: str | None = None  # the token of the fill lock the lookup took (a miss)
    busy: bool = False  # the lookup found the fill lock held by another fetch


@dataclass(slots=True)
class _Lock:
    """A fill lock this process holds while it fetches."""

    key: str
    token: str
    released: bool = False  # the store released it already (stored, or nothing to check)


def _merged(tags: tuple[str, ...], extra: tuple[str, ...] | None) -> tuple[str, ...]:
    if not extra:
        return tags  # the hit path of tenants without implicit tags: nothing to build
    missing = tuple(t for t in extra if t not in tags)
    return tags + missing if missing else tags


_LOCK_LEASE_MS = 3000

# Statement texts whose implicit tags a process remembers (a flush past it is harmless).
_MAX_IMPLICIT = 10_000


@dataclass(slots=True)
class Stats:
    """What this process's read path did, for metrics and tests."""

    origin_calls: int = 0  # queries this process sent to the origin
    coalesced_local: int = 0  # misses that joined another task's fetch in this process
    coalesced_region: int = 0  # misses answered by another process's fetch
    refreshes: int = 0  # background swr refreshes started here
    refresh_failures: int = 0
    raced_purges: int = 0  # fetches discarded because a purge overtook them
    memory_hits: int = 0  # answered from this process's hot tier, no Redis round trip
    unvouched_fills: int = 0  # fetches not stored: no sync lease to check them against
    unchecked_refetches: int = 0  # joiners that needed a fetch begun after they arrived
    unstored_after_races: int = 0  # fetches overtaken by purges three times: answered only


class QueryCache:
    """One node process's read path; tier, origin link and clock are passed in."""

    def __init__(
        self,
        config: NodeConfig,
        tier: SharedTier,
        origin: OriginLink,
        clock: Callable[[], float] = time.time,
        memory: MemoryTier | None = None,
        mirror: PurgeMirror | None = None,
    ) -> None:
        self._config = config
        self._tier = tier
        # The hot tier only works with a mirror of the purge state to judge it by.
        self._memory = memory if mirror is not None else None
        self._mirror = mirror
        self._origin = origin
        self._clock = clock
        self._flights: Group[_Fetched] = Group()
        self._background: set[asyncio.Task[None]] = set()
        # Fill locks are short leases renewed while their holder fetches: a holder that
        # died (kill -9) stops renewing, and the region's waiters take over within
        # seconds instead of waiting out a lock as long as the origin timeout.
        self._lock_ttl_ms = _LOCK_LEASE_MS
        self._tokens = itertools.count()
        self._token_prefix = secrets.token_hex(6)  # this process; the counter: the attempt
        # (tenant, sql) -> the implicit tags (tables) its entries carry, so a hit can read
        # their purge state in the same round trip as the entry (docs/auto-invalidation.md).
        self._implicit: dict[tuple[str, str], tuple[str, ...]] = {}
        self.stats = Stats()

    async def query(self, tenant: str, req: QueryRequest, request_id: str) -> Answer:
        """Answer one request the cheapest way its strategy and the purge state allow.

        uncached -> key -> hot tier -> shared tier -> judge -> fill (stale on error)."""
        if not req.strategy.cached:
            return await self._uncached(tenant, req, request_id)
        flight = self._flight(tenant, req, request_id)
        hot = self._hot(flight)
        if hot is not None:
            return hot
        seen = await self._look_up(flight)
        verdict = self._judge(flight, seen.entry, seen.state)
        if seen.entry is not None and verdict in ("ttl", "swr"):
            if seen.lock is not None:  # the tier could not tell it was a hit: let go
                await self._release(self._tier.lock_key(flight.tenant, flight.sig), seen.lock)
            if verdict == "ttl":
                self._remember(flight, seen.entry)  # the next hit skips the round trip
            return self._hit(flight, seen.entry, verdict, seen.state)
        return await self._fill_or_stand_in(flight, seen, verdict)

    # ------------------------------------------------------------ the steps

    async def _uncached(self, tenant: str, req: QueryRequest, request_id: str) -> Answer:
        """Not cached: straight to the origin, which may write (and report its purge)."""
        result = await self._origin.query(
            tenant, req.statement, read_only=False, request_id=request_id
        )
        self.stats.origin_calls += 1
        core, said = read_answer(result.body)
        inv = said.invalidation.to_wire() if said.invalidation is not None else None
        return Answer(core, "none", said.produced_at, invalidation=inv)

    def _flight(self, tenant: str, req: QueryRequest, request_id: str) -> _Flight:
        """The key, and every tag whose purge state must be read with the entry."""
        stmt, strategy = req.statement, req.strategy
        sig = cache_key(tenant, stmt.sql, stmt.params, strategy.ttl, strategy.swr, strategy.tags)
        tags = _merged(strategy.tags, self._implicit.get((tenant, stmt.sql)))
        return _Flight(tenant, sig, stmt, strategy, request_id, tags, req.min_watermark)

    async def _look_up(self, flight: _Flight) -> _Seen:
        """The region's entry and its purge state, in one round trip; Redis is optional.

        Unless this process is fetching the key already, the same round trip takes the
        key's fill lock when the entry cannot be served, so a miss goes straight to the
        origin. An entry whose tags' purge state could not all be read is not seen at all:
        judged by part of its tags, it could be served after a purge of the others."""
        tenant, sig = flight.tenant, flight.sig
        lock = None if self._flights.running((tenant, sig)) else self._lock_for_a_miss(flight)
        try:
            got = await self._tier.lookup(tenant, sig, flight.tags, lock)
        except TierUnavailable as exc:
            log.warning("cache_tier_unavailable", error=str(exc), request_id=flight.request_id)
            return _Seen(None, PurgeState(None), "redis_unavailable")
        token = lock.token if lock is not None and got.locked else None
        entry = Entry.decode(got.entry) if got.entry is not None else None
        values = got.state
        if entry is not None:
            try:
                values = await self._state_covering(flight, entry, values)
            except TierUnavailable as exc:
                log.warning("cache_tier_unavailable", error=str(exc), request_id=flight.request_id)
                return _Seen(None, PurgeState(None), "redis_unavailable", token)
        return _Seen(entry, PurgeState.from_redis(values), lock=token, busy=got.busy)

    def _token(self) -> str:
        """A fill lock token: unique to this process and attempt."""
        return f"{self._token_prefix}{next(self._tokens):x}"

    def _lock_for_a_miss(self, flight: _Flight) -> FillLock:
        """The fill lock, to be taken only if the entry cannot be served now."""
        strategy = flight.strategy
        return FillLock(
            self._token(),
            self._lock_ttl_ms,
            max_age_ms=(strategy.ttl + strategy.swr) * 1000,
            now_ms=int(self._clock() * 1000),
            min_watermark=flight.min_watermark,
        )

    def _judge(self, flight: _Flight, entry: Entry | None, state: PurgeState) -> Verdict | None:
        """The one freshness rule (cache_edge/node/freshness.py), for either tier's entry."""
        if entry is None or entry.watermark < flight.min_watermark:
            return None
        return judge(state, entry.watermark, entry.age(self._clock()), flight.strategy)

    def _hit(self, flight: _Flight, entry: Entry, status: str, state: PurgeState) -> Answer:
        """Serve a judged entry; a stale-while-revalidate one starts the key's one refresh."""
        if status == "swr":
            self._refresh_in_background(flight, entry, state.required())
        return Answer(entry.core, status, entry.produced_at_ms, flight.sig, warnings=entry.warnings)

    async def _fill_or_stand_in(
        self, flight: _Flight, seen: _Seen, verdict: Verdict | None
    ) -> Answer:
        """A miss: fetch (coalesced); if the origin fails, an old entry may stand in."""
        try:
            fresh = await self._fill(flight, seen, max(seen.state.required(), flight.min_watermark))
        except _STALE_OK as exc:
            stale = await self._stand_in(flight, seen, verdict)
            if stale is None:
                raise
            log.warning("serving_stale_on_error", code=exc.code, request_id=flight.request_id)
            return Answer(
                stale.core,
                "stale",
                stale.produced_at_ms,
                flight.sig,
                error=exc.code,
                warnings=stale.warnings,
            )
        return Answer(
            fresh.entry.core,
            "miss",
            fresh.entry.produced_at_ms,
            flight.sig,
            cache_error=seen.cache_error or fresh.cache_error,
            warnings=fresh.entry.warnings,
        )

    async def _stand_in(
        self, flight: _Flight, seen: _Seen, verdict: Verdict | None
    ) -> Entry | None:
        """The entry staleIfError may serve: never one a purge applied here has voided.

        An expired but current entry may; so may one the region cannot vouch for (no sync
        lease: cut off from the origin) if no purge the region knows of voided it."""
        entry, strategy = seen.entry, flight.strategy
        if entry is None or verdict not in ("expired", "unvouched"):
            return None
        if verdict == "unvouched" and not (
            strategy.stale_if_error and await self._survives(flight, entry, seen.state)
        ):
            return None
        return entry if entry.age(self._clock()) < strategy.retention else None

    async def _survives(self, flight: _Flight, entry: Entry, state: PurgeState) -> bool:
        """May an entry the region cannot vouch for stand in as stale? Only if it was
        produced after the region's durable floor and after every purge of its tags."""
        try:
            floor = await self._tier.durable_floor(flight.tenant)
        except TierUnavailable:
            return False
        return floor is not None and survives(entry.watermark, floor, state.versions)

    @property
    def memory(self) -> MemoryTier | None:
        """This process's hot tier, if any (for metrics)."""
        return self._memory

    async def _state_covering(
        self, flight: _Flight, entry: Entry, state: Sequence[bytes | None]
    ) -> Sequence[bytes | None]:
        """The purge state for every tag of ``entry``: a second read only when the entry
        carries implicit tags this process did not know yet (first hit, schema change)."""
        if not entry.tags:
            return state
        self._learn(flight, entry)
        if all(t in flight.tags for t in entry.tags):
            return state
        return await self._tier.state(
            flight.tenant, flight.sig, _merged(flight.strategy.tags, entry.tags)
        )

    def _learn(self, flight: _Flight, entry: Entry) -> None:
        """Remember a statement's implicit tags, so its next lookup reads them at once."""
        key = (flight.tenant, flight.stmt.sql)
        if self._implicit.get(key) != entry.tags:
            if len(self._implicit) >= _MAX_IMPLICIT:
                self._implicit.clear()
            self._implicit[key] = entry.tags

    # ------------------------------------------------------------- hot tier

    def _hot(self, flight: _Flight) -> Answer | None:
        """A hit from this process's memory, judged by the mirrored purge state."""
        if self._memory is None or self._mirror is None:
            return None
        entry = self._memory.get(flight.tenant, flight.sig, self._clock())
        if entry is None:
            return None
        state = self._mirror.state(flight.tenant, _merged(flight.strategy.tags, entry.tags))
        verdict = self._judge(flight, entry, state)
        if verdict not in ("ttl", "swr"):
            return None
        self.stats.memory_hits += 1
        return self._hit(flight, entry, verdict, state)

    def _remember(self, flight: _Flight, entry: Entry) -> None:
        """Keep a fresh entry in this process's memory while the mirror vouches for it."""
        if self._memory is None or self._mirror is None:
            return
        strategy = flight.strategy
        state = self._mirror.state(flight.tenant, _merged(strategy.tags, entry.tags))
        if not state.current(entry.watermark):
            return  # the mirror is behind, cut off, or knows of a purge: keep it in Redis only
        expires = entry.produced_at_ms / 1000 + strategy.ttl + strategy.swr
        self._memory.put(flight.tenant, flight.sig, entry, expires)

    # ------------------------------------------------------------------ fills

    async def _fill(self, flight: _Flight, seen: _Seen, min_watermark: int) -> _Fetched:
        """One fetch per key per process; unchecked rows go only to whoever was waiting
        before that fetch began. A request that arrived later (possibly after a purge
        was applied) joins, or starts, a fetch that begins after it arrived.

        The fill lock the lookup took (if any) goes to the first fetch this request
        starts; joining another task's fetch instead, it lets the lock go."""
        arrived = time.monotonic()
        key = (flight.tenant, flight.sig)
        handed: list[str | None] = [seen.lock]
        busy = seen.busy

        async def run() -> _Fetched:
            token, handed[0] = handed[0], None
            return await self._fill_region(flight, seen.entry, min_watermark, token, busy)

        while True:
            if handed[0] is not None and self._flights.running(key):
                token, handed[0] = handed[0], None
                await self._release(self._tier.lock_key(*key), token)
            fetched, shared = await self._flights.do(key, run)
            busy = False
            # A fetch another request began may predate this one's own write (min_watermark).
            new_enough = not shared or fetched.entry.watermark >= flight.min_watermark
            if new_enough and (fetched.checked or not shared or fetched.started >= arrived):
                if shared:
                    self.stats.coalesced_local += 1
                return fetched
            self.stats.unchecked_refetches += 1

    async def _fill_region(
        self,
        flight: _Flight,
        seen: Entry | None,
        min_watermark: int,
        token: str | None,
        busy: bool,
    ) -> _Fetched:
        """Fetch once per region: hold the key's lock (``token``: the lookup took it), or
        wait for its holder's entry. ``busy``: the lookup found it held just now."""
        started = time.monotonic()
        lock_key = self._tier.lock_key(flight.tenant, flight.sig)
        deadline = time.monotonic() + self._config.coalesce_wait
        delay = 0.005
        regardless = False  # take the lock even if the tier thinks the entry servable
        while token is None:
            if busy:  # another process of the region is fetching this key: wait for it
                if time.monotonic() >= deadline:
                    # Waited long enough; a hung holder must not hang us.
                    return await self._fetch_and_store(flight, min_watermark, started, None)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
            # The holder's entry if it is there, else the lock if it is free: one round trip.
            claim = (
                FillLock(self._token(), self._lock_ttl_ms)
                if regardless
                else self._lock_for_a_miss(flight)
            )
            try:
                got = await self._tier.lookup(flight.tenant, flight.sig, flight.tags, claim)
            except TierUnavailable:
                # No shared tier: coalescing stays per process.
                return await self._fetch_and_store(flight, min_watermark, started, None)
            newer = await self._newer_entry(flight, seen, got)
            if newer is not None:
                if got.locked:  # stored and released while we asked: not needed after all
                    await self._release(lock_key, claim.token)
                self.stats.coalesced_region += 1
                return _Fetched(newer, True, started)
            if got.locked:
                token = claim.token
            elif got.busy:
                busy = True
            else:
                # The tier judged the entry servable, we do not (tags it could not know
                # of): ask for the lock regardless, at once.
                regardless, busy = True, False
        async with self._holding(lock_key, token) as lock:
            return await self._fetch_and_store(flight, min_watermark, started, lock)

    async def _newer_entry(self, flight: _Flight, seen: Entry | None, got: Looked) -> Entry | None:
        """A servable entry produced after ``seen`` (someone else refreshed it), if any.

        One whose purge state cannot all be read does not count (Redis failed)."""
        entry = Entry.decode(got.entry) if got.entry is not None else None
        if entry is None or entry.watermark < flight.min_watermark:
            return None
        try:
            state = await self._state_covering(flight, entry, got.state)
        except TierUnavailable:
            return None
        if not PurgeState.from_redis(state).current(entry.watermark):
            return None
        if seen is not None and entry.produced_at_ms <= seen.produced_at_ms:
            return None
        return entry

    async def _fetch_and_store(
        self, flight: _Flight, min_watermark: int, started: float, lock: _Lock | None
    ) -> _Fetched:
        """Fetch from the origin; store only rows no purge applied here has voided.

        A purge can be applied while the fetch is in flight. Its rows may then predate
        the purge; they are neither stored nor served: we fetch again, asking the origin
        for a watermark at least as new as the region's state. Rows the region cannot
        check (Redis unavailable, or no sync lease) are returned unchecked and never
        stored: a later reader must not find rows older than a purge it was told about.
        The check and the store are one step in Redis (``SharedTier.store``), which also
        releases ``lock`` once nothing is left to fetch.
        """
        tenant, strategy = flight.tenant, flight.strategy
        for _attempt in range(3):
            attempt_started = time.monotonic()
            result = await self._origin.query(
                tenant,
                flight.stmt,
                read_only=True,
                request_id=flight.request_id,
                min_watermark=min_watermark,
            )
            self.stats.origin_calls += 1
            entry = Entry.from_origin(result.body, result.core_keys)
            if entry.tags:
                self._learn(flight, entry)
            try:
                done = await self._tier.store(
                    tenant,
                    flight.sig,
                    _merged(strategy.tags, entry.tags),
                    entry.encode(),
                    strategy.retention,
                    entry.watermark,
                    lock.token if lock is not None else "",
                )
            except TierUnavailable as exc:
                log.warning("cache_store_failed", error=str(exc), request_id=flight.request_id)
                return _Fetched(entry, False, started, "redis_unavailable")
            state = PurgeState.from_redis(done.state)
            if lock is not None and (done.stored or not state.vouched):
                lock.released = True
            if not state.vouched:
                self.stats.unvouched_fills += 1
                return _Fetched(entry, False, started)
            if not done.stored:
                self.stats.raced_purges += 1
                min_watermark = max(min_watermark, state.required())
                continue
            self._remember(flight, entry)
            return _Fetched(entry, True, started)
        # Purges keep overtaking this key's fetches (a hot tag). The last rows were
        # produced after every request waiting now had arrived, so they are fresh for
        # those requests; they are not stored, and later arrivals fetch again.
        self.stats.unstored_after_races += 1
        log.info("fill_raced_repeatedly", request_id=flight.request_id)
        return _Fetched(entry, False, attempt_started)

    @contextlib.asynccontextmanager
    async def _holding(self, lock_key: str, token: str) -> AsyncIterator[_Lock]:
        """Keep a fill lock alive while its holder works; release it afterwards, unless
        the store did. Renewal only extends the lock while it is ours: it never takes
        it again after the store released it."""
        lock = _Lock(lock_key, token)

        async def renew() -> None:
            while not lock.released:
                await asyncio.sleep(self._lock_ttl_ms / 3000)
                try:
                    if lock.released or not await self._tier.extend(
                        lock_key, token, self._lock_ttl_ms
                    ):
                        return  # released, or lost (expired): a new holder fetches too
                except TierUnavailable:
                    return

        renewing = asyncio.create_task(renew())
        try:
            yield lock
        finally:
            await stop_tasks([renewing])
            if not lock.released:
                await self._release(lock_key, token)

    async def _release(self, lock_key: str, token: str) -> None:
        """Release a fill lock early; if Redis fails, its lease runs out by itself."""
        with contextlib.suppress(TierUnavailable):  # it expires on its own
            await self._tier.unlock(lock_key, token)

    # ------------------------------------------------------------ background

    def _refresh_in_background(self, flight: _Flight, seen: Entry, min_watermark: int) -> None:
        """Start an swr refresh unless this process is fetching the key already."""
        if self._flights.running((flight.tenant, flight.sig)):
            return  # this process is already fetching the key
        task = asyncio.create_task(self._refresh(flight, seen, min_watermark))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh(self, flight: _Flight, seen: Entry, min_watermark: int) -> None:
        """Refresh under the key's lock, so there is one refresh per key per region."""
        key = (flight.tenant, flight.sig)
        lock_key = self._tier.lock_key(*key)
        claim = FillLock(self._token(), self._lock_ttl_ms)
        try:
            got = await self._tier.lookup(flight.tenant, flight.sig, flight.tags, claim)
        except TierUnavailable:
            return  # without the lock we cannot promise one refresh per region; skip
        if not got.locked:
            return  # another request or process of the region is refreshing it
        if self._flights.running(key):
            # A miss of this process began fetching the key meanwhile: it is the refresh.
            await self._release(lock_key, claim.token)
            return

        try:
            async with self._holding(lock_key, claim.token) as lock:

                async def run() -> _Fetched:
                    started = time.monotonic()
                    # Read with the lock: a refresh that just finished elsewhere counts.
                    newer = await self._newer_entry(flight, seen, got)
                    if newer is not None:
                        return _Fetched(newer, True, started)
                    self.stats.refreshes += 1
                    return await self._fetch_and_store(flight, min_watermark, started, lock)

                await self._flights.do(key, run)
        except (CacheEdgeError, TierUnavailable) as exc:
            self.stats.refresh_failures += 1
            code = exc.code if isinstance(exc, CacheEdgeError) else "redis_unavailable"
            log.warning("swr_refresh_failed", code=code, request_id=flight.request_id)
        except Exception:
            self.stats.refresh_failures += 1
            log.exception("swr_refresh_crashed", request_id=flight.request_id)

    async def drain(self, timeout: float = 5.0) -> None:
        """Let background refreshes finish (graceful shutdown)."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout)
