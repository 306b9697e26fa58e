"""The clients of a chaos run: cached readers, origin heartbeats, purgers and writers.

Every request has a client timeout, and every answer goes to the checker the moment it
arrives. Versions move forward only through this module: a purger commits a new probe
version (directly in PostgreSQL, as another service would) before it purges, a writer's
acknowledged INSERT is its new version; ``committed`` holds the highest of each.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from bench.chaos.checker import ALL, CONNECTION_ERROR, TIMEOUT, Answer, Checker, Purge, Violation

__all__ = ["Load", "LoadTimeouts", "probe_read", "strategies"]

PROBE_SQL = (
    "SELECT version, (extract(epoch FROM clock_timestamp()) * 1000000)::int8 AS produced_us "
    "FROM chaos_probe WHERE id = $1"
)
# The same row, 0.3 s later: a miss long enough for a purge or a fault to land meanwhile.
SLOW_PROBE_SQL = (
    "SELECT version, (extract(epoch FROM clock_timestamp()) * 1000000)::int8 AS produced_us, "
    "(pg_sleep(0.3) IS NULL)::int AS slept FROM chaos_probe WHERE id = $1"
)
WRITES_SQL = (
    "SELECT coalesce(max(seq), 0)::int8 AS version, "
    "(extract(epoch FROM clock_timestamp()) * 1000000)::int8 AS produced_us "
    "FROM chaos_writes WHERE client = $1"
)
INSERT_SQL = "INSERT INTO chaos_writes (id, client, seq) VALUES ($1, $2, $3) RETURNING id"
RECOVERY_SQL = "SELECT $1::text AS nonce"
PURGE_WAIT = 5


def strategies(tags: list[str], group: str) -> dict[str, dict[str, Any]]:
    """The cache strategies a probe is read with (one cache entry each per region)."""
    return {
        "ttl2": {"ttl": 2, "tags": [*tags, group]},
        "swr": {"ttl": 1, "swr": 4, "tags": tags},
        "sie": {"ttl": 2, "staleIfError": 300, "tags": [*tags, group]},
        "long": {"ttl": 30, "tags": tags},
        "swr_sie": {"ttl": 1, "swr": 2, "staleIfError": 60, "tags": [*tags, group]},
        "slow": {"ttl": 1, "staleIfError": 60, "tags": [*tags, group]},
    }


def _probe_tags(k: int) -> tuple[list[str], str]:
    return [f"p{k}"], f"g{k % 2}"


def probe_read(k: int, name: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    tags, group = _probe_tags(k)
    strategy = strategies(tags, group)[name]
    sql = SLOW_PROBE_SQL if name == "slow" else PROBE_SQL
    return {"sql": sql, "params": [k], "cacheStrategy": strategy}, tuple(strategy["tags"])


@dataclass(frozen=True)
class LoadTimeouts:
    query: float = 15.0
    purge_extra: float = 15.0  # on top of the purge's own ``wait``


@dataclass
class Reply:
    status: int
    doc: Any
    code: str
    started: float
    ended: float
    message: str = ""
    request_id: str = ""

    @property
    def info(self) -> Mapping[str, Any]:
        info = self.doc.get("info") if isinstance(self.doc, dict) else None
        return info if isinstance(info, dict) else {}


@dataclass
class Load:
    """The shared state of every client; ``run`` them until ``stop`` is set."""

    checker: Checker
    regions: dict[str, str]  # name -> node URL
    api_key: str
    pool: Any  # asyncpg.Pool to the tenant's database (probe version bumps)
    seed: int
    probes: int = 6
    timeouts: LoadTimeouts = field(default_factory=LoadTimeouts)
    report: Callable[[Violation], None] = lambda v: None
    committed: dict[str, int] = field(default_factory=dict)
    acknowledged: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    think: float = 1.0  # multiplies every pause between a client's requests
    _session: aiohttp.ClientSession | None = None
    _sent: int = 0

    # ------------------------------------------------------------------ plumbing

    async def __aenter__(self) -> Load:
        self._session = aiohttp.ClientSession(
            headers={
                "Authorization": f"Bearer {self.api_key}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
            connector=aiohttp.TCPConnector(limit=200),
        )
        for k in range(self.probes):
            self.committed.setdefault(f"p{k}", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def post(self, region: str, path: str, body: Any, timeout: float) -> Reply:
        assert self._session is not None
        url = self.regions[region] + path
        self._sent += 1
        rid = f"chaos-{self.seed}-{self._sent}"  # the servers log it: grep their logs for it
        started = time.monotonic()
        try:
            async with self._session.post(
                url,
                data=orjson.dumps(body),
                headers={"X-Request-Id": rid},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError:
            return Reply(TIMEOUT, None, "client_timeout", started, time.monotonic(), "", rid)
        except (aiohttp.ClientError, OSError) as exc:
            ended = time.monotonic()
            return Reply(CONNECTION_ERROR, None, type(exc).__name__, started, ended, str(exc), rid)
        ended = time.monotonic()
        try:
            doc = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            text = raw[:200].decode("latin-1")
            return Reply(status, None, "unparsable_body", started, ended, text, rid)
        code, message = "", ""
        if status != 200 and isinstance(doc, dict) and isinstance(doc.get("error"), dict):
            code = str(doc["error"].get("code", ""))
            message = str(doc["error"].get("message", ""))[:300]
        return Reply(status, doc, code, started, ended, message, rid)

    def observe(self, answer: Answer, committed_at_start: int | None = None) -> None:
        for v in self.checker.observe(answer, committed_at_start):
            self.report(v)

    async def pause(self, rng: random.Random, lo: float, hi: float) -> None:
        delay = rng.uniform(lo, hi) * self.think
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), delay)

    def client_rng(self, name: str) -> random.Random:
        return random.Random(f"{self.seed}:{name}")

    # ------------------------------------------------------------------ reads

    async def read(
        self,
        op: str,
        region: str,
        key: str,
        body: dict[str, Any],
        tags: tuple[str, ...],
        strategy: str,
    ) -> Answer:
        committed = self.committed.get(key, 0)
        started_wall = time.time()
        reply = await self.post(region, "/v1/query", body, self.timeouts.query)
        version, produced = _version(reply)
        info, rid = reply.info, reply.request_id
        extra: dict[str, Any] = {"sent_at": round(started_wall, 3)}
        for name in ("error", "cacheError", "age", "lastModified"):
            if name in info:
                extra[name] = info[name]
        if reply.message:
            extra["message"] = reply.message
        if reply.status == 200 and version is None:
            why = "200 without one (version, produced_us) row"
            reply = Reply(500, None, "malformed_rows", reply.started, reply.ended, why, rid)
        answer = Answer(
            op=op,
            region=region,
            started=reply.started,
            ended=reply.ended,
            status=reply.status,
            code=reply.code,
            key=key,
            tags=tags,
            strategy=strategy,
            cache_status=str(info.get("cacheStatus", "")),
            version=version,
            produced=produced,
            request_id=reply.request_id,
            extra=extra,
        )
        self.observe(answer, committed if op == "uncached" else None)
        return answer

    async def probe(self, op: str, region: str, k: int, strategy: str) -> Answer:
        body, tags = probe_read(k, strategy)
        return await self.read(op, region, f"p{k}", body, tags, strategy)

    async def reader(self, name: str, region: str) -> None:
        rng = self.client_rng(name)
        names = list(strategies(["x"], "y"))
        while not self.stop.is_set():
            await self.probe("read", region, rng.randrange(self.probes), rng.choice(names))
            await self.pause(rng, 0.02, 0.08)

    async def heartbeat(self, name: str, region: str) -> None:
        """Uncached reads: the origin path, and read-after-commit without a cache."""
        rng = self.client_rng(name)
        while not self.stop.is_set():
            k = rng.randrange(self.probes)
            body = {"sql": PROBE_SQL, "params": [k]}
            await self.read("uncached", region, f"p{k}", body, (), "none")
            await self.pause(rng, 0.05, 0.1)

    # ------------------------------------------------------------------ purges

    async def purge(
        self,
        region: str,
        tags: list[str] | None,
        op: str = "purge",
        wait: int = PURGE_WAIT,
        timeout: float | None = None,
    ) -> Purge | None:
        """Purge ``tags`` (None: everything) at ``region``; returns it once answered 200."""
        floors = dict(self.committed)  # every version committed before the purge is sent
        sent_wall = time.time()
        body: dict[str, Any] = {"all": True} if tags is None else {"tags": tags}
        limit = timeout if timeout is not None else wait + self.timeouts.purge_extra
        reply = await self.post(region, "/v1/invalidate", body | {"wait": wait}, limit)
        doc = reply.doc if isinstance(reply.doc, dict) else {}
        if op == "recovery" and reply.status == TIMEOUT:
            return None  # a recovery probe cut short by its bound: slow_recovery says it
        self.observe(
            Answer(
                op=op,
                region=region,
                started=reply.started,
                ended=reply.ended,
                status=reply.status,
                code=reply.code,
                tags=tuple(tags or (ALL,)),
                request_id=reply.request_id,
                extra={"message": reply.message} if reply.message else {},
            )
        )
        if reply.status != 200:
            return None
        purge = Purge(
            tags=frozenset(tags or (ALL,)),
            sent_wall=sent_wall,
            answered=reply.ended,
            applied=frozenset(str(r) for r in doc.get("appliedRegions", [])),
            floors=floors,
            seq=int(doc.get("seq", 0) or 0),
            region=region,
        )
        if op == "purge":
            self.checker.purge_answered(purge)
            pending = doc.get("pendingRegions") or []
            self.checker.checks["purge_pending_regions"] += len(pending)
        return purge

    async def bump(self, ids: list[int]) -> None:
        """Commit a new version of probes ``ids`` before purging them (skipped on failure)."""
        try:
            rows = await asyncio.wait_for(
                self.pool.fetch(
                    "UPDATE chaos_probe SET version = version + 1 WHERE id = ANY($1) "
                    "RETURNING id, version",
                    ids,
                ),
                10,
            )
        except Exception:  # PostgreSQL restarting: purge without a new version
            self.checker.checks["bump_failed"] += 1
            return
        for row in rows:
            key = f"p{row['id']}"
            self.committed[key] = max(self.committed.get(key, 0), int(row["version"]))

    async def purger(self, name: str, region: str) -> None:
        """Bump a probe (or a group of them), purge its tag, read it back where applied."""
        rng = self.client_rng(name)
        names = list(strategies(["x"], "y"))
        while not self.stop.is_set():
            if rng.random() < 0.75:
                k = rng.randrange(self.probes)
                ids, tags = [k], [f"p{k}"]
            else:
                j = rng.randrange(2)
                ids = [i for i in range(self.probes) if i % 2 == j]
                tags = [f"g{j}"]
            await self.bump(ids)
            purge = await self.purge(region, tags)
            if purge is not None:
                await asyncio.gather(
                    *(
                        self.probe("read", r, rng.choice(ids), rng.choice(names))
                        for r in sorted(purge.applied)
                        if r in self.regions
                    )
                )
            await self.pause(rng, 0.2, 0.6)

    async def purge_all(self, name: str) -> None:
        """Now and then a purge-all at a random region, then a read-back everywhere."""
        rng = self.client_rng(name)
        names = list(strategies(["x"], "y"))
        regions = sorted(self.regions)
        await self.pause(rng, 1.0, 3.0)
        while not self.stop.is_set():
            k = rng.randrange(self.probes)
            await self.bump([k])
            purge = await self.purge(rng.choice(regions), None)
            if purge is not None:
                await asyncio.gather(
                    *(
                        self.probe("read", r, k, rng.choice(names))
                        for r in sorted(purge.applied)
                        if r in self.regions
                    )
                )
            await self.pause(rng, 2.0, 5.0)

    # ------------------------------------------------------------------ writes

    async def writer(self, name: str, region: str, client: int) -> None:
        """INSERT ... RETURNING through the node, purge the writer's tag, read it back."""
        rng = self.client_rng(name)
        key, tag = f"w{client}", f"w{client}"
        self.committed.setdefault(key, 0)
        seq = 0
        reads: dict[str, dict[str, Any]] = {
            "long": {"ttl": 30, "tags": [tag]},
            "swr_sie": {"ttl": 5, "swr": 10, "staleIfError": 300, "tags": [tag]},
        }
        while not self.stop.is_set():
            seq += 1
            ident = f"{client}-{seq}-{uuid.uuid4().hex[:8]}"
            body = {"sql": INSERT_SQL, "params": [ident, client, seq]}
            reply = await self.post(region, "/v1/query", body, self.timeouts.query)
            self.observe(
                Answer(
                    op="write",
                    region=region,
                    started=reply.started,
                    ended=reply.ended,
                    status=reply.status,
                    code=reply.code,
                    key=key,
                    request_id=reply.request_id,
                    extra={"message": reply.message} if reply.message else {},
                )
            )
            if reply.status == 200:
                self.acknowledged.append(ident)
                self.committed[key] = max(self.committed[key], seq)
                purge = await self.purge(region, [tag])
                if purge is not None:
                    strategy = rng.choice(list(reads))
                    read = {"sql": WRITES_SQL, "params": [client], "cacheStrategy": reads[strategy]}
                    await asyncio.gather(
                        *(
                            self.read("readback", r, key, read, (tag,), strategy)
                            for r in sorted(purge.applied)
                            if r in self.regions
                        )
                    )
            await self.pause(rng, 0.1, 0.3)


def _version(reply: Reply) -> tuple[int | None, float | None]:
    """(version, production time in seconds) from a probe's single row, if well-formed."""
    if reply.status != 200 or not isinstance(reply.doc, dict):
        return None, None
    rows = reply.doc.get("rows")
    if not isinstance(rows, list) or len(rows) != 1 or not isinstance(rows[0], list):
        return None, None
    try:
        version, produced_us = rows[0][0], rows[0][1]
        return int(version), int(produced_us) / 1e6
    except (IndexError, TypeError, ValueError):
        return None, None
