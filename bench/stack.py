"""The servers of one scenario, on free loopback ports; all stopped, newest first, on exit.

cache-edge servers are real ``python -m cache_edge.cli`` processes configured by a TOML
file, as a user runs them. Redis, PgBouncer, pgpool-II and (for the storm) a PostgreSQL
are private instances with their own configs in the run's tmp folder. PgBouncer and
PostgreSQL refuse to run as root; as root they run as ``postgres``. Every one is a child
of the process harness (:mod:`cache_edge.devtools.harness`) the tests and ``cache-edge
dev`` use too; Redis and PostgreSQL are started as :mod:`cache_edge.devtools.services`
starts them.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import msgpack
import tomli_w

from bench.context import TENANT, Context
from bench.procs import ROOT
from cache_edge.devtools.harness import (
    Child,
    Children,
    ProcessFailed,
    cache_edge_cmd,
    free_port,
    python_cmd,
    wait_http,
    wait_port,
    wait_until,
)
from cache_edge.devtools.services import (
    initdb,
    pg_accepts,
    postgres_child,
    redis_child,
    service_user,
)

__all__ = ["HttpReply", "Server", "Stack", "metrics", "post"]

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Server:
    proc: Child
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: dict[str, str]
    body: bytes

    def decoded(self) -> Any:
        return msgpack.unpackb(self.body) if self.body else None


def post(url: str, body: bytes, authorization: str = "", timeout: float = 30.0) -> HttpReply:
    """One msgpack POST from the orchestrator (setup and checks, never measured load)."""
    headers = {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}
    if authorization:
        headers["Authorization"] = authorization
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return HttpReply(resp.status, dict(resp.headers.items()), resp.read())
    except urllib.error.HTTPError as exc:
        return HttpReply(exc.code, dict(exc.headers.items()), exc.read())


def metrics(server: Server) -> dict[str, float]:
    """The unlabelled samples of a server's ``GET /metrics`` (Prometheus text format)."""
    with _OPENER.open(server.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if line and not line.startswith("#") and "{" not in name:
            try:
                found[name] = float(value)
            except ValueError:
                continue
    return found


class Stack:
    def __init__(self, ctx: Context, name: str) -> None:
        self.ctx = ctx
        self.dir = ctx.tmp / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self._children = Children()
        self._dirs: list[Path] = []

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        self._children.stop_all()
        while self._dirs:
            shutil.rmtree(self._dirs.pop(), ignore_errors=True)

    def stop(self, proc: Child) -> None:
        self._children.stop(proc)

    def _start(self, proc: Child) -> Child:
        return self._children.start(proc)

    def _server_proc(self, name: str, cmd: list[str], **kw: Any) -> Child:
        return self._pinned(Child(name, cmd, self.dir / f"{name}.log", **kw))

    def _pinned(self, child: Child) -> Child:
        """On the servers' CPU, run from the checkout (``python -m bench...`` must import)."""
        child.cpus, child.cwd = self.ctx.pinning.server, ROOT
        return child

    # ------------------------------------------------------------ cache-edge

    def config(
        self,
        database_url: str,
        *,
        pool_max_size: int = 10,
        node: dict[str, Any] | None = None,
        origin: dict[str, Any] | None = None,
        tenant: dict[str, Any] | None = None,
        name: str = "cache-edge.toml",
    ) -> Path:
        """One TOML file for the origin and every node (listen, region, URLs come as flags)."""
        doc: dict[str, Any] = {
            "node_secret": self.ctx.node_secret,
            # Not "info": the origin logs a line per request there, and we measure the engine.
            "log_level": "warning",
            "tenants": [
                {
                    "id": TENANT,
                    "api_keys_sha256": [self.ctx.api_key_sha256],
                    "database_url": database_url,
                    "pool_max_size": pool_max_size,
                    **(tenant or {}),  # e.g. auto_invalidation, change_streams
                }
            ],
            "origin": {"pool_max_size": pool_max_size, **(origin or {})},
            "node": dict(node or {}),
        }
        path = self.dir / name
        path.write_text(tomli_w.dumps(doc))
        return path

    def _http_server(
        self, name: str, cmd: Callable[[int], list[str]], pinned: bool = True
    ) -> Server:
        """Start ``cmd(port)`` on a free port and wait until its ``/healthz`` answers."""
        port = free_port()
        proc = self._server_proc(name, cmd(port))
        if not pinned:
            proc.cpus = None
        self._start(proc)
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        return Server(proc, port)

    def origin(self, config: Path, name: str = "origin") -> Server:
        return self._http_server(
            name, lambda port: cache_edge_cmd("origin", config, "--listen", f"127.0.0.1:{port}")
        )

    def node(
        self,
        config: Path,
        *,
        region: str,
        redis_url: str,
        origin_url: str,
        name: str = "node",
        extra_args: tuple[str, ...] = (),
        pinned: bool = True,
    ) -> Server:
        args = ["--region", region, "--redis-url", redis_url, "--origin-url", origin_url]
        return self._http_server(
            name,
            lambda port: cache_edge_cmd(
                "node", config, "--listen", f"127.0.0.1:{port}", *args, *extra_args
            ),
            pinned,
        )

    def prime(self, node: Server, body: bytes, expect: str = "ttl", timeout: float = 20.0) -> bytes:
        """Ask until the node answers with cache status ``expect``; return that answer.

        A new region serves nothing from its cache until its applier has synced with the
        origin's purge log, so the first hits of a fresh node can still be misses.
        """
        deadline = time.monotonic() + timeout
        seen = "none"
        while time.monotonic() < deadline:
            node.proc.check_alive()
            reply = post(node.url + "/v1/query", body, self.ctx.authorization)
            if reply.status != 200:
                raise ProcessFailed(f"node answered {reply.status}: {reply.body[:300]!r}")
            seen = reply.headers.get("X-Cache-Status", "?")
            if seen == expect:
                return reply.body
            time.sleep(0.1)
        raise ProcessFailed(f"{node.proc.name} never answered {expect!r} (last: {seen!r})")

    # ------------------------------------------------------------ baselines

    def baseline_fixed(self, body: bytes, name: str = "fixed-body", mode: str = "fixed") -> Server:
        """``mode`` ``fixed-lowlevel``: from aiohttp's low-level server (no Application)."""
        body_file = self.dir / f"{name}.bin"
        body_file.write_bytes(body)
        return self._baseline(name, "--mode", mode, "--body-file", str(body_file))

    def baseline_redis(self, redis_url: str, key: str, name: str = "redis-get") -> Server:
        return self._baseline(name, "--mode", "redis", "--redis-url", redis_url, "--key", key)

    def _baseline(self, name: str, *args: str) -> Server:
        """``bench.baseline_server`` (``bench/baseline_server.py``) with ``args``."""
        return self._http_server(
            name, lambda port: python_cmd("bench.baseline_server", "--port", str(port), *args)
        )

    def relay(self, target_port: int, delay_ms: float, name: str = "relay") -> Server:
        port = free_port()
        cmd = python_cmd(
            "bench.relay", "--listen-port", str(port), "--target", f"127.0.0.1:{target_port}",
            "--delay-ms", str(delay_ms),
        )  # fmt: skip
        proc = self._start(self._server_proc(name, cmd))
        wait_port(port, proc)
        return Server(proc, port)

    # ------------------------------------------------------------ third-party servers

    def redis(self, name: str = "redis") -> str:
        """A private, empty redis-server; returns its URL."""
        import redis

        port = free_port()
        binary = self.ctx.tools.path("redis-server")
        child = redis_child(port, self.dir, self.dir / f"{name}.log", name=name, binary=binary)
        proc = self._start(self._pinned(child))
        wait_port(port, proc)
        client = redis.Redis(port=port)
        try:
            client.ping()
        finally:
            client.close()
        return f"redis://127.0.0.1:{port}/0"

    def _service_dir(self, prefix: str) -> tuple[Path, str | None]:
        """A fresh folder the service user can write (root-owned tmp folders are not)."""
        user = service_user()
        path = Path(tempfile.mkdtemp(prefix=f"cache-edge-bench-{prefix}-"))
        self._dirs.append(path)
        if user is not None:
            shutil.chown(path, user)
        return path, user

    def pgbouncer(self, backend_port: int, pool_size: int, max_clients: int) -> int:
        """PgBouncer in transaction pooling mode in front of 127.0.0.1:``backend_port``."""
        home, user = self._service_dir("pgbouncer")
        port = free_port()
        (home / "users.txt").write_text('"postgres" ""\n')
        ini = f"""[databases]
* = host=127.0.0.1 port={backend_port}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {home}/users.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_db_connections = {pool_size}
max_client_conn = {max_clients}
pidfile = {home}/pgbouncer.pid
"""
        (home / "pgbouncer.ini").write_text(ini)
        if user is not None:
            for f in home.iterdir():
                shutil.chown(f, user)
        cmd = [self.ctx.tools.path("pgbouncer"), str(home / "pgbouncer.ini")]
        proc = self._start(self._server_proc("pgbouncer", cmd, user=user))
        wait_port(port, proc)
        return port

    def pgpool(self, backend_port: int, children: int = 32) -> int:
        """pgpool-II with its in-memory query cache (shmem) in front of the local PostgreSQL."""
        home = self.dir / "pgpool"
        shutil.rmtree(home, ignore_errors=True)
        (home / "oiddir").mkdir(parents=True)
        port, pcp_port = free_port(), free_port()
        conf = f"""backend_clustering_mode = 'raw'
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{home}'
pcp_listen_addresses = ''
pcp_port = {pcp_port}
pcp_socket_dir = '{home}'
backend_hostname0 = '127.0.0.1'
backend_port0 = {backend_port}
backend_weight0 = 1
backend_flag0 = 'DISALLOW_TO_FAILOVER'
enable_pool_hba = off
pool_passwd = ''
num_init_children = {children}
max_pool = 1
pid_file_name = '{home}/pgpool.pid'
logdir = '{home}'
health_check_period = 0
sr_check_period = 0
load_balance_mode = off
memory_cache_enabled = on
memqcache_method = 'shmem'
memqcache_total_size = 64MB
memqcache_max_num_cache = 100000
memqcache_expire = 0
memqcache_maxcache = 409600
memqcache_oiddir = '{home}/oiddir'
log_min_messages = warning
"""
        (home / "pgpool.conf").write_text(conf)
        (home / "pcp.conf").write_text("")
        cmd = [
            self.ctx.tools.path("pgpool"), "-n", "-f", str(home / "pgpool.conf"),
            "-F", str(home / "pcp.conf"),
        ]  # fmt: skip
        # SIGINT is pgpool's fast shutdown; SIGTERM would wait for clients to leave.
        proc = self._start(self._server_proc("pgpool", cmd, stop_signal=signal.SIGINT))
        wait_port(port, proc)
        return port

    def postgres(self, max_connections: int = 100) -> str:
        """A private PostgreSQL (initdb in a tmp folder); returns its admin DSN."""
        bindir = self.ctx.tools.pg_bindir
        if bindir is None:
            raise LookupError(self.ctx.tools.missing_reason("initdb"))
        data, user = self._service_dir("pg")
        initdb(data, user, bindir)
        port = free_port()
        settings = {"max_connections": max_connections, "fsync": "off", "synchronous_commit": "off"}
        proc = postgres_child(
            data, port, self.dir / "postgres.log", user=user, settings=settings, bindir=bindir
        )
        # PostgreSQL is not pinned, like the machine's own server used by the other scenarios.
        self._start(proc)
        dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        wait_until(lambda: pg_accepts(dsn), proc, "did not accept connections", 30.0, 0.2)
        return dsn
