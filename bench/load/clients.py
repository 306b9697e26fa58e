"""Python load generators: closed loops over asyncpg or raw HTTP, a burst, sequential purges.

Each takes a JSON spec and returns a JSON summary, and runs in its own process
(``python -m bench.load KIND SPEC``) pinned to the load core, never inside a server.
Closed loop: every client connects first (refusals are counted, not retried), then
sends one request at a time for ``warmup + duration`` seconds; only requests that
start after the warmup are measured.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import resource
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgpack

from bench.load.capture import run_autoinv, run_sse
from bench.load.rawhttp import Connection, build_get, build_request
from bench.load.stats import summarize

__all__ = ["run_burst", "run_http", "run_pg", "run_purges"]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _params(spec: str) -> Callable[[], list[Any]]:
    """``none`` | ``random:LO:HI`` | ``sequence:START``: the parameters of the next request."""
    kind, _, rest = spec.partition(":")
    if kind == "none":
        return list
    if kind == "random":
        lo, hi = (int(x) for x in rest.split(":"))
        return lambda: [random.randint(lo, hi)]
    if kind == "sequence":
        counter = itertools.count(int(rest))
        return lambda: [next(counter)]
    raise ValueError(f"unknown params spec {spec!r}")


async def _connect_all(
    count: int, connect: Callable[[int], Awaitable[Any]]
) -> tuple[list[Any], Counter[str]]:
    outcomes = await asyncio.gather(*(connect(i) for i in range(count)), return_exceptions=True)
    refused: Counter[str] = Counter()
    conns = []
    for got in outcomes:
        if isinstance(got, BaseException):
            refused[type(got).__name__] += 1
        else:
            conns.append(got)
    return conns, refused


async def _closed_loop(
    conns: list[Any],
    call: Callable[[Any], Awaitable[str]],
    warmup: float,
    duration: float,
    count: int | None = None,
) -> dict[str, Any]:
    """Drive every connection one request at a time; measure after the warmup."""
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    started = time.perf_counter()
    measure_from = started + warmup
    end = measure_from + duration
    remaining = itertools.count() if count is not None else None
    cpu_at: list[float] = []

    async def mark_cpu() -> None:
        await asyncio.sleep(warmup)
        cpu_at.append(_cpu())

    async def worker(conn: Any) -> None:
        while True:
            if remaining is not None:
                if next(remaining) >= (count or 0):
                    return
            elif time.perf_counter() >= end:
                return
            t0 = time.perf_counter()
            try:
                outcome = await call(conn)
            except Exception as exc:
                errors[type(exc).__name__] += 1
                if isinstance(exc, (OSError, asyncio.IncompleteReadError, ConnectionError)):
                    return  # this client lost its connection: it stops, as a real one would
                continue
            t1 = time.perf_counter()
            if t0 >= measure_from:
                latencies.append(t1 - t0)
                outcomes[outcome] += 1

    marker = asyncio.create_task(mark_cpu())
    await asyncio.gather(*(worker(c) for c in conns))
    finished = time.perf_counter()
    marker.cancel()
    cpu_start = cpu_at[0] if cpu_at else _cpu()
    window = max(1e-9, finished - max(measure_from, started))
    result = summarize(latencies, window)
    result["outcomes"] = dict(outcomes)
    result["errors"] = dict(errors)
    result["error_count"] = sum(errors.values())
    result["client_cpu"] = round((_cpu() - cpu_start) / window, 3)
    return result


# ------------------------------------------------------------------ asyncpg


async def run_pg(spec: dict[str, Any]) -> dict[str, Any]:
    import asyncpg

    dsn, sql = spec["dsn"], spec["sql"]
    cache_size = int(spec.get("statement_cache_size", 100))
    next_params = _params(spec.get("params", "none"))

    async def connect(_i: int) -> Any:
        return await asyncpg.connect(dsn, statement_cache_size=cache_size, timeout=30)

    conns, refused = await _connect_all(int(spec["concurrency"]), connect)

    async def call(conn: Any) -> str:
        await conn.fetch(sql, *next_params())
        return "ok"

    try:
        result = await _closed_loop(conns, call, float(spec["warmup"]), float(spec["duration"]))
    finally:
        await asyncio.gather(*(c.close(timeout=5) for c in conns), return_exceptions=True)
    result["connected"] = len(conns)
    result["refused"] = sum(refused.values())
    result["refused_kinds"] = dict(refused)
    result["error_count"] += result["refused"]
    result["client"] = f"asyncpg x{spec['concurrency']}"
    return result


# ---------------------------------------------------------------- raw HTTP


def _http_request_maker(spec: dict[str, Any]) -> Callable[[], bytes]:
    host, port, path = spec["host"], int(spec["port"]), spec["path"]
    headers = dict(spec.get("headers", {}))
    if "body_hex" in spec:
        raw = build_request(host, port, path, headers, bytes.fromhex(spec["body_hex"]))
        return lambda: raw
    template: dict[str, Any] = spec["template"]
    next_params = _params(spec["params"])

    def make() -> bytes:
        body = msgpack.packb({**template, "params": next_params()})
        return build_request(host, port, path, headers, body)

    return make


async def run_http(spec: dict[str, Any]) -> dict[str, Any]:
    """Closed loop of keep-alive HTTP clients; ``count`` stops after that many requests."""
    host, port = spec["host"], int(spec["port"])
    make = _http_request_maker(spec)

    async def connect(_i: int) -> Connection:
        return await Connection.open(host, port)

    conns, refused = await _connect_all(int(spec["concurrency"]), connect)

    async def call(conn: Connection) -> str:
        resp = await conn.request(make())
        return f"{resp.status} {resp.headers.get('x-cache-status', '-')}"

    count = spec.get("count")
    try:
        result = await _closed_loop(
            conns,
            call,
            float(spec.get("warmup", 0)),
            float(spec.get("duration", 3600)),
            int(count) if count is not None else None,
        )
    finally:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    result["connected"] = len(conns)
    result["refused"] = sum(refused.values())
    result["refused_kinds"] = dict(refused)
    result["error_count"] += result["refused"]
    non_200 = sum(n for k, n in result["outcomes"].items() if not k.startswith("200 "))
    result["error_count"] += non_200
    result["client"] = f"python raw-http x{spec['concurrency']}"
    return result


async def run_burst(spec: dict[str, Any]) -> dict[str, Any]:
    """Open ``clients`` connections (spread over ``ports``), then send one request on each
    at the same moment; latency is from that moment to each full response.

    Before the burst every connection answers a ``GET /healthz``: a connection the client
    sees as open may still wait in the server's accept queue, and the burst is about
    clients that are already connected, not about the server's accept backlog.
    """
    host, ports = spec["host"], [int(p) for p in spec["ports"]]
    body = bytes.fromhex(spec["body_hex"])
    raws = {p: build_request(host, p, spec["path"], spec["headers"], body) for p in ports}

    async def connect(i: int) -> tuple[int, Connection]:
        port = ports[i % len(ports)]
        conn = await Connection.open(host, port)
        await conn.request(build_get(host, port, "/healthz"))
        return port, conn

    connect_started = time.perf_counter()
    conns, refused = await _connect_all(int(spec["clients"]), connect)
    connect_seconds = time.perf_counter() - connect_started
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    started = time.perf_counter()
    for port, conn in conns:
        conn.send(raws[port])

    async def receive(conn: Connection) -> None:
        try:
            resp = await conn.receive()
        except Exception as exc:
            errors[type(exc).__name__] += 1
            return
        latencies.append(time.perf_counter() - started)
        statuses[f"{resp.status} {resp.headers.get('x-cache-status', '-')}"] += 1

    await asyncio.gather(*(receive(c) for _, c in conns))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(c.close() for _, c in conns), return_exceptions=True)
    result = summarize(latencies, elapsed)
    result["outcomes"] = dict(statuses)
    result["errors"] = dict(errors)
    result["refused"] = sum(refused.values())
    non_200 = sum(n for k, n in statuses.items() if not k.startswith("200 "))
    result["error_count"] = sum(errors.values()) + result["refused"] + non_200
    result["connect_seconds"] = round(connect_seconds, 3)
    result["client"] = f"python raw-http burst x{spec['clients']}"
    return result


async def run_purges(spec: dict[str, Any]) -> dict[str, Any]:
    """``count`` purges one after another; each must come back applied in every region."""
    host, port = spec["host"], int(spec["port"])
    expected = set(spec["regions"])
    headers = {
        "Content-Type": "application/msgpack",
        "Accept": "application/msgpack",
        "Authorization": f"Bearer {spec['api_key']}",
    }
    conn = await Connection.open(host, port)
    latencies: list[float] = []
    incomplete = 0
    errors: Counter[str] = Counter()
    samples: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        for i in range(int(spec["count"])):
            body = msgpack.packb({"tags": [f"{spec['tag_prefix']}{i}"], "wait": spec["wait"]})
            raw = build_request(host, port, "/v1/invalidate", headers, body)
            t0 = time.perf_counter()
            resp = await conn.request(raw)
            elapsed = time.perf_counter() - t0
            if resp.status != 200:
                errors[f"http {resp.status}"] += 1
                continue
            answer = msgpack.unpackb(resp.body)
            latencies.append(elapsed)
            applied = set(answer.get("appliedRegions", []))
            if applied != expected or answer.get("pendingRegions"):
                incomplete += 1
                if len(samples) < 5:
                    samples.append(answer)
    finally:
        await conn.close()
    result = summarize(latencies, time.perf_counter() - started)
    result["incomplete"] = incomplete
    result["incomplete_samples"] = samples
    result["errors"] = dict(errors)
    result["error_count"] = sum(errors.values()) + incomplete
    # In call order, so a slow purge can be placed in time (the first? periodic?).
    result["latencies_ms"] = [round(v * 1000, 3) for v in latencies]
    slowest = sorted(range(len(latencies)), key=latencies.__getitem__, reverse=True)[:5]
    result["slowest"] = [{"index": i, "ms": round(latencies[i] * 1000, 1)} for i in slowest]
    result["client"] = "python raw-http, sequential"
    return result


RUNNERS: dict[str, Callable[[dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]] = {
    "pg": run_pg,
    "http": run_http,
    "burst": run_burst,
    "purge": run_purges,
    "autoinv": run_autoinv,  # bench.load.capture: invalidation lag, SSE subscribers
    "sse": run_sse,
}
