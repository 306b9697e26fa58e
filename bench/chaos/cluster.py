"""The servers of a chaos run, all private, and the blunt ways to hurt them.

A PostgreSQL cluster of its own (initdb in a temporary folder, so it may be restarted),
one redis-server per region, one origin and one node per region, each a real process on
a fixed loopback port that survives its restarts. Every fault here acts only on
processes this module started.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import tomli_w

from cache_edge.devtools.harness import (
    Child,
    cache_edge_cmd,
    free_port,
    wait_http,
    wait_port,
    wait_until,
)
from cache_edge.devtools.services import (
    initdb,
    pg_accepts,
    pg_bindir,
    postgres_child,
    redis_child,
    service_user,
)

__all__ = ["API_KEY", "TENANT", "Cluster"]

TENANT = "chaos"
API_KEY = "ce_chaos_key_0123456789abcdef"
NODE_SECRET = "chaos-node-secret-0123456789abcdef"
DATABASE = "chaos"

SCHEMA = """
CREATE TABLE IF NOT EXISTS chaos_probe (id int PRIMARY KEY, version bigint NOT NULL);
CREATE TABLE IF NOT EXISTS chaos_writes (
    id text PRIMARY KEY, client int NOT NULL, seq bigint NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE INDEX IF NOT EXISTS chaos_writes_client ON chaos_writes (client, seq);
"""


@dataclass
class Region:
    name: str
    redis_port: int
    node_port: int
    redis: Child | None = None
    node: Child | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.node_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"


@dataclass
class Cluster:
    """Start with ``with Cluster(...) as c:``; everything stops on exit, newest first."""

    workdir: Path
    region_names: tuple[str, ...] = ("region-1", "region-2")
    node: dict[str, Any] = field(default_factory=dict)  # [node] settings
    origin_settings: dict[str, Any] = field(default_factory=dict)  # [origin] settings
    probes: int = 6
    pg_port: int = 0
    origin_port: int = 0
    regions: list[Region] = field(default_factory=list)
    _pg: Child | None = None
    _origin: Child | None = None
    _pgdata: Path | None = None
    _user: str | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/postgres"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/{DATABASE}"

    @property
    def origin_url(self) -> str:
        return f"http://127.0.0.1:{self.origin_port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._start_postgres()
        self._prepare_database()
        self.origin_port = free_port()
        self.regions = [Region(name, free_port(), free_port()) for name in self.region_names]
        config = self._write_config()
        self._origin = self._proc("origin", self._origin_cmd(config))
        self._origin.start()
        for region in self.regions:
            region.redis = self._redis(region)
            region.redis.start()
            wait_port(region.redis_port, region.redis)
        wait_http(self.origin_url + "/healthz", self._origin)
        for region in self.regions:
            region.node = self._proc(f"node-{region.name}", self._node_cmd(config, region))
            region.node.start()
        for region in self.regions:
            assert region.node is not None
            wait_http(region.url + "/healthz", region.node)

    def stop(self) -> None:
        for region in reversed(self.regions):
            for proc in (region.node, region.redis):
                if proc is not None:
                    proc.stop()
        if self._origin is not None:
            self._origin.stop()
        if self._pg is not None:
            self._pg.stop()
        if self._pgdata is not None:
            shutil.rmtree(self._pgdata, ignore_errors=True)
            self._pgdata = None

    def _proc(self, name: str, cmd: list[str]) -> Child:
        return Child(name, cmd, self.logs / f"{name}.log")

    # ------------------------------------------------------------------ PostgreSQL

    def _start_postgres(self) -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise LookupError(
                "PostgreSQL server binaries (initdb) not found: apt-get install postgresql"
            )
        self._user = service_user()
        self._pgdata = Path(tempfile.mkdtemp(prefix="cache-edge-chaos-pg-"))
        if self._user is not None:
            shutil.chown(self._pgdata, self._user)
        initdb(self._pgdata, self._user, bindir)
        self.pg_port = free_port()
        self._pg = postgres_child(
            self._pgdata,
            self.pg_port,
            self.logs / "postgres.log",
            user=self._user,
            settings={"max_connections": 60, "fsync": "off"},
            bindir=bindir,
        )
        self._pg.start()
        self._wait_pg()

    def _prepare_database(self) -> None:
        import asyncpg

        async def prepare() -> None:
            conn = await asyncpg.connect(self.admin_dsn, timeout=10)
            try:
                await conn.execute(f"CREATE DATABASE {DATABASE}")
            finally:
                await conn.close()
            conn = await asyncpg.connect(self.dsn, timeout=10)
            try:
                await conn.execute(SCHEMA)
                await conn.executemany(
                    "INSERT INTO chaos_probe VALUES ($1, 0)", [(i,) for i in range(self.probes)]
                )
            finally:
                await conn.close()

        asyncio.run(prepare())

    # ------------------------------------------------------------------ commands

    def _write_config(self) -> Path:
        doc: dict[str, Any] = {
            "node_secret": NODE_SECRET,
            "log_level": "warning",
            "tenants": [
                {
                    "id": TENANT,
                    "api_keys_sha256": [_sha256(API_KEY)],
                    "database_url": self.dsn,
                }
            ],
            "origin": dict(self.origin_settings),
            "node": dict(self.node),
        }
        path = self.workdir / "cache-edge.toml"
        path.write_text(tomli_w.dumps(doc))
        return path

    def _origin_cmd(self, config: Path) -> list[str]:
        return cache_edge_cmd("origin", config, "--listen", f"127.0.0.1:{self.origin_port}")

    def _node_cmd(self, config: Path, region: Region) -> list[str]:
        return cache_edge_cmd(
            "node", config,
            "--listen", f"127.0.0.1:{region.node_port}", "--region", region.name,
            "--redis-url", region.redis_url, "--origin-url", self.origin_url,
        )  # fmt: skip

    def _redis(self, region: Region) -> Child:
        return redis_child(
            region.redis_port,
            self.workdir / f"redis-{region.name}",
            self.logs / f"redis-{region.name}.log",
            "--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru",
            name=f"redis-{region.name}",
        )  # fmt: skip

    def _wait_pg(self) -> None:
        assert self._pg is not None
        dsn = self.admin_dsn
        wait_until(lambda: pg_accepts(dsn), self._pg, "did not accept connections", 30.0, 0.1)

    # ------------------------------------------------------------------ faults

    def region(self, name: str) -> Region:
        return next(r for r in self.regions if r.name == name)

    async def kill_node(self, name: str) -> None:
        node = self.region(name).node
        assert node is not None
        await node.astop(15.0, signal.SIGKILL)

    async def start_node(self, name: str) -> None:
        region = self.region(name)
        assert region.node is not None
        region.node.start()
        await asyncio.to_thread(wait_http, region.url + "/healthz", region.node)

    async def stop_redis(self, name: str) -> None:
        redis = self.region(name).redis
        assert redis is not None
        await redis.astop(15.0, signal.SIGTERM)

    async def start_redis(self, name: str) -> None:
        region = self.region(name)
        assert region.redis is not None
        region.redis.start()
        await asyncio.to_thread(wait_port, region.redis_port, region.redis)

    async def flushall(self, name: str) -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.region(name).redis_url, socket_timeout=5)
        try:
            await client.flushall()
        finally:
            await client.aclose()

    async def kill_redis_clients(self, name: str) -> None:
        """Cut every normal client connection of the region's Redis (the nodes' pools)."""
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.region(name).redis_url, socket_timeout=5)
        try:
            await client.client_kill_filter(_type="normal", skipme=True)
        finally:
            await client.aclose()

    async def stop_origin(self, sig: int) -> None:
        assert self._origin is not None
        await self._origin.astop(15.0, sig)

    async def start_origin(self) -> None:
        assert self._origin is not None
        self._origin.start()
        await asyncio.to_thread(wait_http, self.origin_url + "/healthz", self._origin)

    async def stop_postgres(self, immediate: bool) -> None:
        assert self._pg is not None
        # SIGINT: fast shutdown (clients cut off, checkpoint); SIGQUIT: immediate (a crash).
        await self._pg.astop(15.0, signal.SIGQUIT if immediate else signal.SIGINT)

    async def start_postgres(self) -> None:
        assert self._pg is not None
        self._pg.start()
        await asyncio.to_thread(self._wait_pg)


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()
