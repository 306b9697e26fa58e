"""Load generators for the WAL-capture scenarios: invalidation lag, and SSE subscribers.

``run_autoinv`` commits an UPDATE (directly with asyncpg, or through a node) and polls
every region until it has applied the change; one iteration at a time. ``run_sse``
holds many ``GET /v1/stream`` subscribers, prints ``BENCH_READY`` once every one has its
``ready`` event, and records when each change arrives (wall clock, so that the suite
process that commits can compute commit-to-event latency).
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from collections import Counter
from typing import Any

import msgpack

from bench.load.rawhttp import Connection, build_request
from bench.load.stats import summarize

__all__ = ["run_autoinv", "run_sse"]

_ITERATION_TIMEOUT = 10.0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _headers(api_key: str) -> dict[str, str]:
    return {
        "Content-Type": "application/msgpack",
        "Accept": "application/msgpack",
        "Authorization": f"Bearer {api_key}",
    }


def _get(host: str, port: int, path: str, api_key: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: application/msgpack\r\n"
        f"Authorization: Bearer {api_key}\r\n\r\n"
    ).encode("latin-1")


async def _poll_value(
    conn: Connection, raw: bytes, value: int, interval: float, statuses: Counter[str]
) -> float:
    """Read until the answer carries ``value``; the first answer's cache status is counted."""
    first = True
    while True:
        resp = await conn.request(raw)
        if resp.status != 200:
            raise RuntimeError(f"read answered {resp.status}: {resp.body[:200]!r}")
        if first:
            statuses[resp.headers.get("x-cache-status", "-")] += 1
            first = False
        rows = msgpack.unpackb(resp.body, timestamp=3)["rows"]
        if rows and rows[0][0] == value:
            return time.perf_counter()
        await asyncio.sleep(interval)


async def run_autoinv(spec: dict[str, Any]) -> dict[str, Any]:
    """``mode=direct``: UPDATE over asyncpg, then poll each region's read until it answers
    the new value. ``mode=node``: the UPDATE through region 1's node, then poll
    ``GET /v1/invalidations/{id}`` until every region applied it, then check the reads."""
    import asyncpg

    host, ports, key = spec["host"], [int(p) for p in spec["ports"]], spec["api_key"]
    interval, mode, count = float(spec["poll_interval"]), spec["mode"], int(spec["count"])
    read = msgpack.packb(spec["read"])
    reads = {p: build_request(host, p, "/v1/query", _headers(key), read) for p in ports}
    conns = {p: await Connection.open(host, p) for p in ports}
    writer = await Connection.open(host, ports[0])
    pg = await asyncpg.connect(spec["dsn"], timeout=10)
    per_region: dict[int, list[float]] = {p: [] for p in ports}
    both: list[float] = []
    answered: list[float] = []  # node mode: from sending the write to applied everywhere
    write_ms: list[float] = []
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    stale = 0
    started = time.perf_counter()
    try:
        for i in range(count):
            value = int(spec["start"]) + i
            try:
                async with asyncio.timeout(_ITERATION_TIMEOUT):
                    if mode == "direct":
                        await pg.execute(spec["update"], value)  # returns after COMMIT
                        t0 = time.perf_counter()
                        done = await asyncio.gather(
                            *(
                                _poll_value(conns[p], reads[p], value, interval, statuses)
                                for p in ports
                            )
                        )
                        for p, t in zip(ports, done, strict=True):
                            per_region[p].append(t - t0)
                        both.append(max(done) - t0)
                    else:
                        body = msgpack.packb({"sql": spec["update"], "params": [value]})
                        sent = time.perf_counter()
                        resp = await writer.request(
                            build_request(host, ports[0], "/v1/query", _headers(key), body)
                        )
                        t0 = time.perf_counter()
                        if resp.status != 200:
                            raise RuntimeError(f"write answered {resp.status}")
                        inv = msgpack.unpackb(resp.body, timestamp=3)["info"]["invalidation"]
                        path = f"/v1/invalidations/{inv['id']}"
                        status_req = _get(host, ports[0], path, key)
                        while True:
                            got = await writer.request(status_req)
                            applied = msgpack.unpackb(got.body).get("appliedRegions", [])
                            if set(spec["regions"]) <= set(applied):
                                break
                            await asyncio.sleep(interval)
                        t1 = time.perf_counter()
                        both.append(t1 - t0)
                        answered.append(t1 - sent)
                        write_ms.append((t0 - sent) * 1000)
                        for p in ports:  # applied means the next read has the new value
                            r = await conns[p].request(reads[p])
                            rows = msgpack.unpackb(r.body, timestamp=3)["rows"]
                            stale += int(not rows or rows[0][0] != value)
            except TimeoutError:
                errors["no new value within 10 s"] += 1
            except Exception as exc:
                errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
    finally:
        await pg.close()
        for c in [*conns.values(), writer]:
            await c.close()
    result = summarize(both, time.perf_counter() - started)
    result["per_region"] = {
        str(p): {k: v for k, v in summarize(per_region[p], 1).items() if k.endswith("_ms")}
        for p in ports
        if per_region[p]
    }
    if answered:
        result["from_write_sent"] = {
            k: v for k, v in summarize(answered, 1).items() if k.endswith("_ms")
        }
        ordered = sorted(write_ms)
        result["write_p50_ms"] = round(ordered[len(ordered) // 2], 3)
    result["latencies_ms"] = [round(v * 1000, 3) for v in both]
    result["first_read_status"] = dict(statuses)
    result["stale_reads_after_applied"] = stale
    result["errors"] = dict(errors)
    result["error_count"] = sum(errors.values()) + stale
    result["client"] = "python raw-http + asyncpg, sequential"
    return result


# ------------------------------------------------------------------ SSE subscribers


class _Subscriber:
    """One ``GET /v1/stream`` client that resumes with its last cursor when cut off."""

    def __init__(
        self, spec: dict[str, Any], ready: asyncio.Event, all_ready: Any, marks: dict[str, float]
    ) -> None:
        self._marks = marks  # shared: CPU time when the first burst event arrived
        self.spec = spec
        self.cursor = b""
        self.latency_recv: dict[int, float] = {}  # latency-table row id -> arrival (time.time)
        self.burst = 0
        self.burst_last = 0.0
        self.tx_last: list[float] = []  # arrival of the last event of each burst transaction
        self._tx = b""
        self.cutoffs = 0
        self.errors: Counter[str] = Counter()
        self._ready = ready
        self._all_ready = all_ready

    @property
    def done(self) -> bool:
        return (
            len(self.latency_recv) >= self.spec["latency_rows"]
            and self.burst >= self.spec["burst_rows"]
        )

    def _block(self, block: bytes) -> str | None:
        """One SSE event (the node writes ``id``, ``event``, ``data`` lines in that order)."""
        if block.startswith(b":"):
            return None
        cursor = b""
        if block.startswith(b"id: "):
            nl = block.index(b"\n")
            cursor, block = block[4:nl], block[nl + 1 :]
        if block.startswith(b"event: change"):
            if cursor <= self.cursor:
                return None  # at-least-once: already seen before a resume
            self.cursor = cursor
            now = time.time()
            if self.spec["burst_mark"] in block:
                if not self._marks:
                    self._marks.update(cpu=_cpu(), at=time.monotonic())
                self.burst += 1
                self.burst_last = now
                tx = cursor.split(b"-", 1)[0]
                if tx != self._tx:
                    self._tx = tx
                    self.tx_last.append(now)
                else:
                    self.tx_last[-1] = now
            else:
                data = json.loads(block[block.index(b"data: ") + 6 :])
                self.latency_recv[int(data["new"]["id"])] = now
            return None
        if block.startswith(b"event: ready"):
            if not self.cursor:
                data = json.loads(block[block.index(b"data: ") + 6 :])
                self.cursor = data["cursor"].encode()
            if not self._ready.is_set():
                self._ready.set()
                self._all_ready()
            return None
        if block.startswith(b"event: error"):
            data = json.loads(block[block.index(b"data: ") + 6 :])
            return str(data["error"]["code"])
        return None

    async def run(self, session: Any, url: str) -> None:
        headers = {"Authorization": f"Bearer {self.spec['api_key']}"}
        while not self.done:
            if self.cursor:
                headers["Last-Event-ID"] = self.cursor.decode()
            try:
                async with session.get(url, headers=headers) as resp:
                    if resp.status != 200:
                        self.errors[f"http {resp.status}"] += 1
                        await asyncio.sleep(0.5)
                        continue
                    code = await self._read(resp)
            except Exception as exc:
                self.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.1)
                continue
            if code == "subscriber_too_slow":
                self.cutoffs += 1
            elif code is not None:
                self.errors[code] += 1
                await asyncio.sleep(0.1)

    async def _read(self, resp: Any) -> str | None:
        buf = b""
        async for chunk in resp.content.iter_any():
            buf += chunk
            *blocks, buf = buf.split(b"\n\n")
            for block in blocks:
                code = self._block(block)
                if code is not None:
                    return code
            if self.done:
                return None
        return "ended"


async def run_sse(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    spec = {**spec, "burst_mark": spec["burst_table"].encode()}
    url = f"http://{spec['host']}:{spec['port']}/v1/stream?tables={spec['tables']}"
    count = int(spec["subscribers"])
    waiting = [count]

    def one_ready() -> None:
        waiting[0] -= 1
        if waiting[0] == 0:
            print("BENCH_READY", flush=True)

    marks: dict[str, float] = {}
    subs = [_Subscriber(spec, asyncio.Event(), one_ready, marks) for _ in range(count)]
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        tasks = [asyncio.create_task(s.run(session, url)) for s in subs]
        _, pending = await asyncio.wait(tasks, timeout=float(spec["timeout"]))
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    # Cores used while the burst was delivered (from its first event to the end).
    cpu = (_cpu() - marks["cpu"]) / max(1e-9, time.monotonic() - marks["at"]) if marks else 0.0
    errors: Counter[str] = Counter()
    for s in subs:
        errors.update(s.errors)
    return {
        "subscribers": [
            {
                "latency_recv": {str(k): v for k, v in s.latency_recv.items()},
                "burst": s.burst,
                "burst_last": s.burst_last,
                "tx_last": s.tx_last,
                "cutoffs": s.cutoffs,
            }
            for s in subs
        ],
        "timed_out": len(pending),
        "client_cpu": round(cpu, 3),
        "errors": dict(errors),
        "client": f"python aiohttp SSE x{count}",
    }
