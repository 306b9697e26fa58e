"""``cache-edge dev --check``: a cached query twice per region, expecting miss then ttl, and a
query through each region's PostgreSQL door."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field

from cache_edge.client import AsyncClient, CacheEdgeError, CacheStrategy

__all__ = ["CHECK_SQL", "RegionCheck", "check_region", "format_checks"]

# The random run id makes the cache key new on every check, so the first answer must be a miss
# even when an earlier run left its answer in a shared Redis.
CHECK_SQL = "SELECT count(*) AS products, sum(price) AS total, $1::text AS run FROM products"
EXPECTED = ("miss", "ttl")
_RETRIES = 10  # a node may write the cache just after answering: give the hit a moment


@dataclass
class RegionCheck:
    region: str
    url: str
    statuses: list[str] = field(default_factory=list)
    millis: list[float] = field(default_factory=list)
    retries: int = 0
    error: str | None = None
    notes: list[str] = field(default_factory=list)  # cacheError / error the node reported
    pg_url: str = ""
    pg_result: str = ""  # "N products in X ms" or the error, through the PostgreSQL door

    @property
    def ok(self) -> bool:
        door_ok = not self.pg_url or self.pg_result.endswith(" ms")
        return self.error is None and tuple(self.statuses) == EXPECTED and door_ok


async def _through_door(pg_url: str, timeout: float) -> str:
    import asyncpg  # the dev tools run with the server extra

    started = time.perf_counter()
    try:
        conn = await asyncpg.connect(pg_url, timeout=timeout)
        try:
            count = await conn.fetchval("SELECT count(*) FROM products")
        finally:
            await conn.close()
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return f"FAILED: {exc.__class__.__name__}: {exc}"
    return f"{count} products in {(time.perf_counter() - started) * 1000:.1f} ms"


async def _timed(db: AsyncClient, run: str, result: RegionCheck) -> tuple[str, float]:
    started = time.perf_counter()
    rows = await db.fetch(CHECK_SQL, run, cache=CacheStrategy(ttl=60))
    elapsed = (time.perf_counter() - started) * 1000
    for label, value in (("cacheError", rows.info.cache_error), ("error", rows.info.error)):
        note = f"{label}: {value}"
        if value and note not in result.notes:
            result.notes.append(note)
    return rows.info.cache_status, elapsed


async def check_region(
    region: str, url: str, api_key: str, timeout: float = 15.0, pg_url: str = ""
) -> RegionCheck:
    """Ask twice; a second "miss" is retried briefly before it counts as a failure."""
    result = RegionCheck(region, url, pg_url=pg_url)
    if pg_url:
        result.pg_result = await _through_door(pg_url, timeout)
    run = secrets.token_hex(8)
    try:
        async with AsyncClient(url, api_key, timeout=timeout) as db:
            status, ms = await _timed(db, run, result)
            result.statuses.append(status)
            result.millis.append(ms)
            for attempt in range(_RETRIES + 1):
                status, ms = await _timed(db, run, result)
                if status != "miss" or attempt == _RETRIES:
                    result.statuses.append(status)
                    result.millis.append(ms)
                    break
                result.retries += 1
                await asyncio.sleep(0.1)
    except CacheEdgeError as exc:
        result.error = f"{exc.code}: {exc.message}"
    return result


def format_checks(checks: list[RegionCheck]) -> str:
    lines = []
    for c in checks:
        if c.error is not None:
            lines.append(f"  {c.region:<10} {c.url}  FAILED  error: {c.error}")
            continue
        flow = " -> ".join(f"{s} ({ms:.1f} ms)" for s, ms in zip(c.statuses, c.millis, strict=True))
        verdict = "ok" if c.ok else f"FAILED (expected {' -> '.join(EXPECTED)})"
        retried = f" after {c.retries} retries" if c.retries else ""
        lines.append(f"  {c.region:<10} {c.url}  {flow}  {verdict}{retried}")
        lines += [f"  {'':<10} node said {note}" for note in c.notes]
        if c.pg_url:
            verdict = "" if c.pg_result.startswith("FAILED") else "  ok"
            lines.append(f"  {'':<10} psql door  {c.pg_result}{verdict}")
    passed = all(c.ok for c in checks)
    lines.append("check passed" if passed else "check FAILED")
    return "\n".join(lines)
