"""``cache-edge dev``: one command that runs PostgreSQL, Redis, an origin and N regions locally.

Ports: the origin listens on ``base-port``, region i's node on ``base-port + 10 + i`` and,
with ``--wan-delay``, region i's delay relay to the origin on ``base-port + 20 + i``, and
region i's PostgreSQL door on ``base-port + 30 + i``.
Region i caches in Redis database number ``i`` (plus the database of ``REDIS_URL``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from cache_edge.devtools.check import check_region, format_checks
from cache_edge.devtools.config_file import DEMO_TENANT, load_or_make_secrets, write_config
from cache_edge.devtools.delay_relay import DelayRelay
from cache_edge.devtools.demo_db import ensure_demo_database
from cache_edge.devtools.harness import (
    Child,
    ProcessFailed,
    cache_edge_cmd,
    port_in_use,
    wait_healthy,
)
from cache_edge.devtools.services import Service, ServiceError, find_postgres, find_redis
from cache_edge.server.config import redact_dsn

__all__ = ["DevOptions", "parse_delay", "redis_url_for_region", "render_banner", "run_dev"]

HOST = "127.0.0.1"
MAX_REGIONS = 9  # keeps node ports (base+11..19) clear of relay ports (base+21..29)


def parse_delay(text: str) -> float:
    """``40ms``, ``0.04s`` or ``40`` (milliseconds) -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*", text)
    if not match:
        raise ValueError(f"--wan-delay: expected a delay like 40ms or 0.04s, got {text!r}")
    value = float(match.group(1))
    return value if match.group(2) == "s" else value / 1000


@dataclass(frozen=True)
class DevOptions:
    regions: int
    base_port: int
    wan_delay: float  # seconds, one way
    workdir: Path
    check: bool = False
    private_servers: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DevOptions:
        if not 1 <= args.regions <= MAX_REGIONS:
            raise ValueError(f"--regions: between 1 and {MAX_REGIONS}, got {args.regions}")
        if not 1024 <= args.base_port <= 65535 - 40:
            raise ValueError(f"--base-port: between 1024 and 65495, got {args.base_port}")
        delay = parse_delay(args.wan_delay)
        if delay > 10:
            raise ValueError("--wan-delay: at most 10s")
        return cls(
            regions=args.regions,
            base_port=args.base_port,
            wan_delay=delay,
            workdir=Path(args.workdir).resolve(),
            check=bool(getattr(args, "check", False)),
            private_servers=bool(getattr(args, "private_servers", False)),
        )

    def node_port(self, i: int) -> int:
        return self.base_port + 10 + i

    def relay_port(self, i: int) -> int:
        return self.base_port + 20 + i

    def pg_port(self, i: int) -> int:
        return self.base_port + 30 + i

    def ports(self) -> list[int]:
        ports = [self.base_port] + [self.node_port(i) for i in range(1, self.regions + 1)]
        ports += [self.pg_port(i) for i in range(1, self.regions + 1)]
        if self.wan_delay > 0:
            ports += [self.relay_port(i) for i in range(1, self.regions + 1)]
        return ports


def redis_url_for_region(url: str, region_index: int) -> str:
    """The same Redis, database number (the URL's database + region index)."""
    parts = urlsplit(url)
    base = parts.path.strip("/")
    db = (int(base) if base.isdigit() else 0) + region_index
    if db > 15:
        raise ServiceError(f"region {region_index} would use Redis database {db}; Redis has 0-15")
    return urlunsplit(parts._replace(path=f"/{db}"))


@dataclass(frozen=True)
class Region:
    name: str
    url: str
    redis_url: str
    pg_url: str = ""  # the PostgreSQL door, as a postgresql:// URL psql accepts as is


async def _set_up_capture(database_url: str, notes: list[str]) -> bool:
    """Automatic invalidation and change streams for the demo tenant, where PostgreSQL can."""
    import asyncpg

    from cache_edge.common.errors import CaptureUnavailable
    from origin.capture.setup import setup

    try:
        conn = await asyncpg.connect(database_url, timeout=5)
        try:
            await setup(conn, DEMO_TENANT)
        finally:
            await conn.close()
    except CaptureUnavailable as exc:
        notes.append(f"automatic invalidation and change streams are off: {exc.message}")
        return False
    except (OSError, asyncpg.PostgresError) as exc:
        notes.append(f"automatic invalidation and change streams are off: {exc}")
        return False
    return True


async def _remove_capture(database_url: str) -> None:
    """A slot nobody reads keeps WAL for ever: a stopped dev world must not leave one."""
    import asyncpg

    from origin.capture.setup import remove

    try:
        conn = await asyncpg.connect(database_url, timeout=5)
        try:
            await remove(conn, DEMO_TENANT)
        finally:
            await conn.close()
    except (OSError, asyncpg.PostgresError):
        pass  # the server is gone already (a private one stops with us)


class DevStack:
    """Everything ``cache-edge dev`` started, so it can all be stopped in reverse order."""

    def __init__(self, opts: DevOptions) -> None:
        self.opts = opts
        self.logs = opts.workdir / "logs"
        self.config = opts.workdir / "cache-edge.toml"
        self.pg: Service | None = None
        self.redis: Service | None = None
        self.origin: Child | None = None
        self.nodes: list[Child] = []
        self.relays: list[DelayRelay] = []
        self.regions: list[Region] = []
        self.database_url = ""
        self.api_key = ""
        self.notes: list[str] = []
        self.captured = False

    async def start(self) -> None:
        opts = self.opts
        self.logs.mkdir(parents=True, exist_ok=True)
        busy = [p for p in opts.ports() if port_in_use(p)]
        if busy:
            raise ServiceError(
                f"port {busy[0]} is in use (another `cache-edge dev`?): choose another --base-port"
            )
        env = os.environ
        self.pg = pg = await find_postgres(opts.workdir, self.logs, env, opts.private_servers)
        self.redis = redis = await find_redis(opts.workdir, self.logs, env, opts.private_servers)
        self.notes += pg.notes + redis.notes
        self.database_url, db_notes = await ensure_demo_database(pg.url)
        self.notes += db_notes

        keys = load_or_make_secrets(opts.workdir)
        self.api_key = keys.api_key
        origin_url = f"http://{HOST}:{opts.base_port}"
        self.captured = await _set_up_capture(self.database_url, self.notes)
        write_config(
            self.config,
            keys,
            self.database_url,
            f"{HOST}:{opts.base_port}",
            origin_url,
            captured=self.captured,
        )

        self.origin = self._child("origin", ["origin", "--listen", f"{HOST}:{opts.base_port}"])
        await wait_healthy(self.origin, origin_url + "/healthz")

        for i in range(1, opts.regions + 1):
            name = f"region-{i}"
            upstream = origin_url
            if opts.wan_delay > 0:
                relay = DelayRelay(HOST, opts.base_port, opts.wan_delay, HOST, opts.relay_port(i))
                self.relays.append(await relay.start())
                upstream = f"http://{HOST}:{relay.port}"
            database = urlsplit(self.database_url).path.lstrip("/")
            region = Region(
                name,
                f"http://{HOST}:{opts.node_port(i)}",
                redis_url_for_region(redis.url, i),
                f"postgresql://{DEMO_TENANT}:{quote(self.api_key, safe='')}@{HOST}:"
                f"{opts.pg_port(i)}/{database}",
            )
            self.regions.append(region)
            args = ["node", "--region", name, "--listen", f"{HOST}:{opts.node_port(i)}"]
            args += ["--pg-listen", f"{HOST}:{opts.pg_port(i)}"]
            args += ["--redis-url", region.redis_url, "--origin-url", upstream]
            self.nodes.append(self._child(name, args))
        await asyncio.gather(
            *(
                wait_healthy(n, r.url + "/healthz")
                for n, r in zip(self.nodes, self.regions, strict=True)
            )
        )

    def _child(self, name: str, args: list[str]) -> Child:
        cmd = cache_edge_cmd(args[0], self.config, *args[1:])
        return Child(name, cmd, self.logs / f"{name}.log").start()

    async def stop(self) -> None:
        # Reverse order of start: nodes, relays, origin, then the servers we started ourselves.
        await asyncio.gather(*(n.astop() for n in self.nodes))
        for relay in self.relays:
            await relay.close()
        if self.origin is not None:
            await self.origin.astop()
        if self.captured:
            await _remove_capture(self.database_url)
        for service in (self.redis, self.pg):
            if service is not None and service.child is not None:
                await service.child.astop()


def render_banner(stack: DevStack) -> str:
    """The box a developer reads once: where everything is and two commands to try."""
    opts = stack.opts
    pg, redis = stack.pg, stack.redis
    wan = f"   (+{opts.wan_delay * 1000:g} ms each way to the origin)" if opts.wan_delay else ""
    sql = "SELECT id, name, price FROM products WHERE id = $1"
    first = stack.regions[0].url if stack.regions else ""
    rule = "=" * 72
    lines = [
        "== cache-edge dev " + "=" * 54,
        f"  origin     http://{HOST}:{opts.base_port}",
        *(f"  {r.name:<10} {r.url}{wan}" for r in stack.regions),
        f"  database   {redact_dsn(stack.database_url)}" + (f"   ({pg.source})" if pg else ""),
    ]
    if redis is not None:
        dbs = ", ".join(urlsplit(r.redis_url).path.strip("/") for r in stack.regions)
        lines.append(f"  redis      {redact_dsn(redis.url)}   (databases {dbs}; {redis.source})")
    lines += [
        f"  api key    {stack.api_key}",
        f"  config     {stack.config}",
        f"  logs       {stack.logs}/",
        *(f"  note: {n}" for n in stack.notes),
        "",
        "  Try it (run either twice and watch the cache status go from miss to ttl):",
        f"    curl -s {first}/v1/query -H 'Authorization: Bearer {stack.api_key}' "
        f'-H \'Content-Type: application/json\' -d \'{{"sql": "{sql}", "params": [7], '
        '"cacheStrategy": {"ttl": 60}}\'',
        f"    cache-edge query --url {first} --api-key {stack.api_key} --ttl 60 '{sql}' 7",
    ]
    if stack.regions and stack.regions[0].pg_url:
        lines += [
            "",
            "  Or connect any PostgreSQL client or ORM to a region (pooled at the origin):",
            f"    psql '{stack.regions[0].pg_url}'",
        ]
    if stack.captured:
        lines += [
            "",
            "  Automatic invalidation is on: change a product in psql and query again;",
            "  watch row changes live in another terminal:",
            f"    cache-edge stream --url {first} --api-key {stack.api_key} "
            "--table public.products",
        ]
    lines.append(rule)
    return "\n".join(lines)


async def _serve(opts: DevOptions) -> int:
    stack = DevStack(opts)
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    state = {"started": False, "stopping": False}

    def on_signal() -> None:
        # A second Ctrl-C while stopping must not abandon children half-stopped.
        if not state["stopping"]:
            main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        await stack.start()
        state["started"] = True
        print(render_banner(stack), flush=True)
        if opts.check:
            checks = [
                await check_region(r.name, r.url, stack.api_key, pg_url=r.pg_url)
                for r in stack.regions
            ]
            print(format_checks(checks), flush=True)
            return 0 if all(c.ok for c in checks) else 1
        print("Press Ctrl-C to stop.", flush=True)
        await asyncio.Event().wait()
        return 0
    except asyncio.CancelledError:
        main.uncancel()
        print("\nstopping...", file=sys.stderr, flush=True)
        return 0 if state["started"] else 130
    except ProcessFailed as exc:  # ServiceError too
        print(f"cache-edge dev: {exc}", file=sys.stderr)
        return 1
    finally:
        state["stopping"] = True
        await stack.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_dev(args: argparse.Namespace) -> int:
    try:
        opts = DevOptions.from_args(args)
    except ValueError as exc:
        print(f"cache-edge dev: {exc}", file=sys.stderr)
        return 2
    missing = [m for m in ("asyncpg", "redis") if importlib.util.find_spec(m) is None]
    if missing:
        print(
            f"cache-edge dev needs {' and '.join(missing)}: pip install 'cache-edge[server]'",
            file=sys.stderr,
        )
        return 1
    return asyncio.run(_serve(opts))
