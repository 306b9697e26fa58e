"""Find a PostgreSQL and a Redis for ``cache-edge dev``: configured, the machine's, or private ones.

Order for each: the environment variable (``DATABASE_URL`` / ``REDIS_URL``) if it answers,
then the machine's default server if it answers, then a private server started from the
binaries on this machine; if none works, :class:`ServiceError` says what to install.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cache_edge.devtools.processes import Child, free_port
from cache_edge.server.config import redact_dsn

__all__ = [
    "DEFAULT_PG",
    "DEFAULT_REDIS",
    "Service",
    "ServiceError",
    "find_postgres",
    "find_redis",
    "pg_bindir",
    "pg_reachable",
    "redis_reachable",
]

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"

INSTALL_PG = (
    "PostgreSQL was not found. Install it (Debian/Ubuntu: `sudo apt-get install postgresql`; "
    "macOS: `brew install postgresql@16`) or set DATABASE_URL=postgresql://USER:PASS@HOST:5432/DB"
)
INSTALL_REDIS = (
    "Redis was not found. Install it (Debian/Ubuntu: `sudo apt-get install redis-server`; "
    "macOS: `brew install redis`) or set REDIS_URL=redis://HOST:6379/0"
)


class ServiceError(RuntimeError):
    """No usable server, and none could be started; the message says what to do."""


@dataclass
class Service:
    """A reachable server: where it is, where it came from, and the child if we started it."""

    url: str
    source: str  # "DATABASE_URL", "REDIS_URL", "default" or "private"
    child: Child | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def safe_url(self) -> str:
        return redact_dsn(self.url)


async def pg_reachable(dsn: str, timeout: float = 2.0) -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(dsn, timeout=timeout)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    await conn.close()
    return True


async def redis_reachable(url: str, timeout: float = 2.0) -> bool:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    client = aioredis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(await client.ping())
    except (OSError, RedisError):
        return False
    finally:
        await client.aclose()


async def _start_and_wait(
    child: Child, check: Callable[[str, float], Awaitable[bool]], url: str, timeout: float
) -> None:
    """Start a private server and wait until it answers; never leave a failed one running."""
    child.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while loop.time() < deadline:
            if child.exited:
                raise ServiceError(f"{child.name} exited at start:\n{child.tail()}")
            if await check(url, 1.0):
                return
            await asyncio.sleep(0.2)
        raise ServiceError(f"{child.name} did not answer within {timeout:.0f}s:\n{child.tail()}")
    except BaseException:
        await asyncio.shield(child.stop())
        raise


def pg_bindir() -> Path | None:
    """The newest PostgreSQL server binaries: Debian's layout first, then PATH."""

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name))

    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()]
    if found:
        return max(found, key=version)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _run_as() -> str | None:
    # PostgreSQL refuses to run as root; as root we run it as the "postgres" user.
    if os.geteuid() != 0:
        return None
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceError(
            "cannot start a private PostgreSQL as root without a 'postgres' user: "
            "run as a normal user or set DATABASE_URL"
        ) from None
    return "postgres"


async def _start_private_postgres(workdir: Path, logs: Path) -> Service:
    bindir = pg_bindir()
    if bindir is None:
        raise ServiceError(INSTALL_PG)
    user = _run_as()
    notes = []
    if user is None:
        data = workdir / "postgres"
    else:
        # The postgres user may not be able to enter a root-owned workdir: use a private tmp dir.
        data = Path(tempfile.mkdtemp(prefix="cache-edge-dev-pg-"))
        shutil.chown(data, user)
        notes.append(f"running as root: PostgreSQL data lives in {data} for this run only")
    if not (data / "PG_VERSION").exists():
        cmd = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
        done = await asyncio.to_thread(
            subprocess.run, [*cmd, "-E", "UTF8", "--no-sync"], capture_output=True, user=user
        )
        if done.returncode != 0:
            raise ServiceError(f"initdb failed:\n{done.stderr.decode(errors='replace')[-2000:]}")
    port = free_port()
    cmd = [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(data)]
    child = Child(
        "postgres",
        # wal_level=logical: the demo tenant gets automatic invalidation and change streams.
        [*cmd, "-c", "listen_addresses=127.0.0.1", "-c", "wal_level=logical"],
        logs / "postgres.log",
        user=user,
        stop_signal="SIGINT",  # PostgreSQL's "fast" shutdown: do not wait for clients
        cleanup=data if user is not None else None,
    )
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    await _start_and_wait(child, pg_reachable, url, 30.0)
    return Service(url, "private", child, notes)


async def _start_private_redis(workdir: Path, logs: Path) -> Service:
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceError(INSTALL_REDIS)
    data = workdir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
    child = Child("redis", [*cmd, "--save", "", "--appendonly", "no"], logs / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    await _start_and_wait(child, redis_reachable, url, 15.0)
    return Service(url, "private", child)


async def find_postgres(
    workdir: Path, logs: Path, env: Mapping[str, str], private: bool = False
) -> Service:
    """An admin DSN that answers, starting a private server if nothing does."""
    notes = []
    if not private:
        configured = env.get("DATABASE_URL")
        if configured:
            if await pg_reachable(configured):
                return Service(configured, "DATABASE_URL")
            notes.append(f"DATABASE_URL ({redact_dsn(configured)}) does not answer")
        if await pg_reachable(DEFAULT_PG):
            return Service(DEFAULT_PG, "default", notes=notes)
    service = await _start_private_postgres(workdir, logs)
    service.notes[:0] = notes
    return service


async def find_redis(
    workdir: Path, logs: Path, env: Mapping[str, str], private: bool = False
) -> Service:
    """A Redis URL that answers, starting a private server if nothing does."""
    notes = []
    if not private:
        configured = env.get("REDIS_URL")
        if configured:
            if await redis_reachable(configured):
                return Service(configured, "REDIS_URL")
            notes.append(f"REDIS_URL ({redact_dsn(configured)}) does not answer")
        if await redis_reachable(DEFAULT_REDIS):
            return Service(DEFAULT_REDIS, "default", notes=notes)
    service = await _start_private_redis(workdir, logs)
    service.notes[:0] = notes
    return service
