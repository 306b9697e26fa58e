"""Find a PostgreSQL and a Redis for ``cache-edge dev``: configured, the machine's, or private ones.

Order for each: the environment variable (``DATABASE_URL`` / ``REDIS_URL``) if it answers,
then the machine's default server if it answers, then a private server started from the
binaries on this machine; if none works, :class:`ServiceError` says what to install.
The private servers are harness children (:func:`postgres_child`, :func:`redis_child`),
which the tests and ``bench/`` start too.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cache_edge.devtools.harness import Child, ProcessFailed, free_port, wait_ready
from cache_edge.server.config import redact_dsn

__all__ = [
    "DEFAULT_PG",
    "DEFAULT_REDIS",
    "Service",
    "ServiceError",
    "find_postgres",
    "find_redis",
    "initdb",
    "pg_accepts",
    "pg_bindir",
    "pg_reachable",
    "postgres_child",
    "redis_child",
    "redis_reachable",
    "service_user",
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


class ServiceError(ProcessFailed):
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


def pg_accepts(dsn: str) -> bool:
    """:func:`pg_reachable` for code without an event loop."""
    return asyncio.run(pg_reachable(dsn))


async def _start_and_wait(
    child: Child, check: Callable[[str, float], Awaitable[bool]], url: str, timeout: float
) -> None:
    """Start a private server and wait until it answers; never leave a failed one running."""
    child.start()
    try:
        await wait_ready(child, lambda: check(url, 1.0), f"did not answer {url}", timeout, 0.2)
    except ProcessFailed as exc:
        await asyncio.shield(child.astop())
        raise ServiceError(str(exc)) from None
    except BaseException:
        await asyncio.shield(child.astop())
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


def service_user() -> str | None:
    """Who runs PostgreSQL (and PgBouncer): we, or ``postgres`` when we are root (they
    refuse to run as root)."""
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


def initdb(data: Path, user: str | None, bindir: Path | None = None) -> None:
    """Make a PostgreSQL cluster in ``data`` (trust auth, superuser ``postgres``) unless
    one is there already."""
    bindir = bindir or pg_bindir()
    if bindir is None:
        raise ServiceError(INSTALL_PG)
    if (data / "PG_VERSION").exists():
        return
    cmd = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
    done = subprocess.run([*cmd, "-E", "UTF8", "--no-sync"], capture_output=True, user=user)
    if done.returncode != 0:
        raise ServiceError(f"initdb failed:\n{done.stderr.decode(errors='replace')[-2000:]}")


def postgres_child(
    data: Path,
    port: int,
    log: Path,
    *,
    user: str | None,
    settings: Mapping[str, object] | None = None,
    bindir: Path | None = None,
    cleanup: Path | None = None,
) -> Child:
    """A PostgreSQL on 127.0.0.1:``port`` serving the cluster in ``data`` (see :func:`initdb`);
    ``settings`` become ``-c name=value`` options."""
    bindir = bindir or pg_bindir()
    if bindir is None:
        raise ServiceError(INSTALL_PG)
    cmd = [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(data)]
    cmd += ["-c", "listen_addresses=127.0.0.1"]
    for name, value in (settings or {}).items():
        cmd += ["-c", f"{name}={value}"]
    return Child(
        "postgres",
        cmd,
        log,
        user=user,
        stop_signal=signal.SIGINT,  # PostgreSQL's "fast" shutdown: do not wait for clients
        cleanup=cleanup,
    )


def redis_child(
    port: int, data: Path, log: Path, *options: str, name: str = "redis", binary: str | None = None
) -> Child:
    """A redis-server on 127.0.0.1:``port`` that persists nothing; ``options`` are added."""
    binary = binary or shutil.which("redis-server")
    if binary is None:
        raise ServiceError(INSTALL_REDIS)
    data.mkdir(parents=True, exist_ok=True)
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
    return Child(name, [*cmd, "--save", "", "--appendonly", "no", *options], log)


async def _start_private_postgres(workdir: Path, logs: Path) -> Service:
    bindir = pg_bindir()
    if bindir is None:
        raise ServiceError(INSTALL_PG)
    user = service_user()
    notes = []
    if user is None:
        data = workdir / "postgres"
    else:
        # The postgres user may not be able to enter a root-owned workdir: use a private tmp dir.
        data = Path(tempfile.mkdtemp(prefix="cache-edge-dev-pg-"))
        shutil.chown(data, user)
        notes.append(f"running as root: PostgreSQL data lives in {data} for this run only")
    await asyncio.to_thread(initdb, data, user, bindir)
    port = free_port()
    child = postgres_child(
        data,
        port,
        logs / "postgres.log",
        user=user,
        # wal_level=logical: the demo tenant gets automatic invalidation and change streams.
        settings={"wal_level": "logical"},
        bindir=bindir,
        cleanup=data if user is not None else None,
    )
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    await _start_and_wait(child, pg_reachable, url, 30.0)
    return Service(url, "private", child, notes)


async def _start_private_redis(workdir: Path, logs: Path) -> Service:
    port = free_port()
    child = redis_child(port, workdir / "redis", logs / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    await _start_and_wait(child, redis_reachable, url, 15.0)
    return Service(url, "private", child)


async def _find(
    variable: str,
    default: str,
    reachable: Callable[[str], Awaitable[bool]],
    start_private: Callable[[], Awaitable[Service]],
    env: Mapping[str, str],
    private: bool,
) -> Service:
    """``env[variable]`` if it answers, else ``default`` if it answers, else a private one."""
    notes = []
    if not private:
        configured = env.get(variable)
        if configured:
            if await reachable(configured):
                return Service(configured, variable)
            notes.append(f"{variable} ({redact_dsn(configured)}) does not answer")
        if await reachable(default):
            return Service(default, "default", notes=notes)
    service = await start_private()
    service.notes[:0] = notes
    return service


async def find_postgres(
    workdir: Path, logs: Path, env: Mapping[str, str], private: bool = False
) -> Service:
    """An admin DSN that answers, starting a private server if nothing does."""
    return await _find(
        "DATABASE_URL",
        DEFAULT_PG,
        pg_reachable,
        lambda: _start_private_postgres(workdir, logs),
        env,
        private,
    )


async def find_redis(
    workdir: Path, logs: Path, env: Mapping[str, str], private: bool = False
) -> Service:
    """A Redis URL that answers, starting a private server if nothing does."""
    return await _find(
        "REDIS_URL",
        DEFAULT_REDIS,
        redis_reachable,
        lambda: _start_private_redis(workdir, logs),
        env,
        private,
    )
