"""``python -m bench.load.pgidle SPEC_JSON``: hold idle, authenticated PostgreSQL connections.

A minimal protocol-3.0 client on asyncio streams: each of ``count`` connections sends a
StartupMessage, answers a cleartext password request (or trust), and waits for
ReadyForQuery; then it sits idle. Source addresses rotate over 127.0.0.1 ..
127.0.0.``sources`` so that ephemeral ports cannot run out. When all are open the
process prints ``BENCH_HELD {...}`` and waits for its stdin to close; then it runs
``SELECT 1`` on every held connection (to count how many the server kept usable),
sends Terminate, and prints ``BENCH_JSON {...}``. Used by bench.scenarios.pgdoor.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import time
from collections import Counter
from typing import Any

from bench.procs import raise_fd_limit

__all__ = ["hold"]

_PARALLEL = 200


def _message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def _startup(user: str, database: str) -> bytes:
    params = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in
                      (("user", user), ("database", database)))  # fmt: skip
    body = struct.pack("!I", 196608) + params + b"\0"
    return struct.pack("!I", len(body) + 4) + body


class PgError(Exception):
    """The server answered with an ErrorResponse (or something this client cannot do)."""


async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readexactly(5)
    (length,) = struct.unpack_from("!I", head, 1)
    return head[:1], await reader.readexactly(length - 4)


async def _until_ready(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       password: str) -> None:  # fmt: skip
    while True:
        kind, body = await _read_message(reader)
        if kind == b"E":
            raise PgError(body.decode(errors="replace")[:200])
        if kind == b"R":
            (code,) = struct.unpack_from("!I", body, 0)
            if code == 3:
                writer.write(_message(b"p", password.encode() + b"\0"))
            elif code != 0:
                raise PgError(f"authentication request {code} not supported")
        elif kind == b"Z":
            return


class Held:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def probe(self, timeout: float) -> bool:
        """One simple query; True if it answered a row and ReadyForQuery."""
        try:
            async with asyncio.timeout(timeout):
                self.writer.write(_message(b"Q", b"SELECT 1\0"))
                rows = 0
                while True:
                    kind, _ = await _read_message(self.reader)
                    if kind == b"E":
                        return False
                    if kind == b"D":
                        rows += 1
                    if kind == b"Z":
                        return rows == 1
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            return False

    async def close(self) -> None:
        try:
            self.writer.write(_message(b"X"))
            self.writer.close()
            await self.writer.wait_closed()
        except OSError:
            pass


async def hold(spec: dict[str, Any]) -> dict[str, Any]:
    host, port, count = spec["host"], int(spec["port"]), int(spec["count"])
    user, password, database = spec["user"], spec.get("password", ""), spec["database"]
    sources = max(1, int(spec.get("sources", 1)))
    gate = asyncio.Semaphore(int(spec.get("parallel", _PARALLEL)))
    failed: Counter[str] = Counter()
    startup = _startup(user, database)

    async def one(i: int) -> Held | None:
        async with gate:
            try:
                async with asyncio.timeout(30):
                    reader, writer = await asyncio.open_connection(
                        host, port, local_addr=(f"127.0.0.{1 + i % sources}", 0)
                    )
                    writer.write(startup)
                    await _until_ready(reader, writer, password)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, PgError) as exc:
                failed[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
                return None
            return Held(reader, writer)

    started = time.perf_counter()
    opened = [c for c in await asyncio.gather(*(one(i) for i in range(count))) if c is not None]
    took = time.perf_counter() - started
    held = {"held": len(opened), "seconds": round(took, 2), "failed": dict(failed)}
    print("BENCH_HELD " + json.dumps(held), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until released

    async def still_open(conn: Held) -> bool:
        async with gate:
            return await conn.probe(30)

    probe_started = time.perf_counter()
    alive = sum(await asyncio.gather(*(still_open(c) for c in opened)))
    probe_seconds = time.perf_counter() - probe_started
    await asyncio.gather(*(c.close() for c in opened), return_exceptions=True)
    return {
        "held": len(opened),
        "open_seconds": round(took, 2),
        "still_open": alive,
        "probe_seconds": round(probe_seconds, 2),
        "failed": dict(failed),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.load.pgidle SPEC_JSON", file=sys.stderr)
        return 2
    spec = json.loads(argv[0])
    raise_fd_limit(int(spec["count"]) + 1000)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover
        runner = asyncio.Runner()
    with runner:
        result = runner.run(hold(spec))
    print("BENCH_JSON " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
