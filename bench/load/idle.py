"""``python -m bench.load.idle SPEC_JSON``: open idle keep-alive connections and hold them.

Each of ``count`` connections sends ``request_hex`` once, reads the answer, and then
sits idle. When all are open the process prints ``BENCH_HELD {...}`` and waits for
its stdin to close; then it sends one ``GET /healthz`` on every held connection (to
count how many the server kept open), closes them, and prints ``BENCH_JSON {...}``.
The suite measures the server while the connections are held (bench.scenarios.idle).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

from bench.load.rawhttp import Connection, build_get
from bench.procs import raise_fd_limit

__all__ = ["hold"]

_PARALLEL = 200  # connections being opened at once, unless the spec says ``parallel``


async def hold(spec: dict[str, Any]) -> dict[str, Any]:
    host, port, count = spec["host"], int(spec["port"]), int(spec["count"])
    request = bytes.fromhex(spec["request_hex"])
    gate = asyncio.Semaphore(int(spec.get("parallel", _PARALLEL)))
    failed: Counter[str] = Counter()

    async def one() -> Connection | None:
        async with gate:
            try:
                conn = await Connection.open(host, port)
                reply = await conn.request(request)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                failed[type(exc).__name__] += 1
                return None
            if reply.status != 200:
                failed[f"HTTP {reply.status}"] += 1
            return conn

    started = time.perf_counter()
    opened = [c for c in await asyncio.gather(*(one() for _ in range(count))) if c is not None]
    took = time.perf_counter() - started
    print("BENCH_HELD " + json.dumps({"held": len(opened), "seconds": round(took, 2)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until released
    probe = build_get(host, port, "/healthz")

    async def still_open(conn: Connection) -> bool:
        async with gate:
            try:
                return (await conn.request(probe, timeout=10)).status == 200
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                return False

    alive = sum(await asyncio.gather(*(still_open(c) for c in opened)))
    await asyncio.gather(*(c.close() for c in opened), return_exceptions=True)
    return {
        "held": len(opened),
        "open_seconds": round(took, 2),
        "still_open": alive,
        "failed": dict(failed),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.load.idle SPEC_JSON", file=sys.stderr)
        return 2
    spec = json.loads(argv[0])
    raise_fd_limit(int(spec["count"]) + 1000)
    result = asyncio.run(hold(spec))
    print("BENCH_JSON " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
