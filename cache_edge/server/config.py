"""Typed, frozen settings built once from a TOML file, flags and the environment.

One file can hold everything: node and origin read the sections they need.
Precedence: command-line flags > file > defaults. ``--config`` or the
``CACHE_EDGE_CONFIG`` environment variable names the file. Every invalid value
fails at start with a message naming the key; database passwords never appear
in messages (see :func:`redact_dsn`).
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from cache_edge.common.errors import BadRequest
from cache_edge.common.limits import Limits
from cache_edge.common.strategy import CacheStrategy
from cache_edge.server.node_secrets import SecretsError, resolve_node_secrets

__all__ = [
    "CONFIG_ENV",
    "CacheRule",
    "ConfigError",
    "ConfigSource",
    "HostPort",
    "Limits",
    "NodeConfig",
    "OriginConfig",
    "RateLimit",
    "Settings",
    "TenantConfig",
    "load_settings",
    "normalize_statement",
    "parse_settings",
    "redact_dsn",
]

CONFIG_ENV = "CACHE_EDGE_CONFIG"
_TENANT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_REGION = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_SCRAM_VERIFIER = re.compile(
    r"^SCRAM-SHA-256\$[0-9]+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+$"
)


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key."""


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def redact_dsn(url: str) -> str:
    """Replace the password in a URL with ``***`` so it can be logged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    userinfo, at, hostpart = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    host = hostpart
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket per API key: ``rate`` requests per second, bursts of up to ``burst``."""

    rate: float = 0.0  # 0 = unlimited
    burst: int = 1

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0


@dataclass(frozen=True, slots=True)
class CacheRule:
    """A default strategy for PostgreSQL-door reads that carry no hint (docs/postgres-protocol.md):
    reads of any of ``tables`` ("schema.name"), or of exactly ``statement`` (whitespace-
    and case-normalized), are cached with ``strategy``."""

    strategy: CacheStrategy
    tables: tuple[str, ...] = ()
    statement: str = ""


@dataclass(frozen=True, slots=True)
class TenantConfig:
    id: str
    api_keys_sha256: tuple[str, ...]
    database_url: str = field(repr=False)
    pool_min_size: int | None = None
    pool_max_size: int | None = None
    rate_limit: RateLimit | None = None  # None: the global [rate_limit]
    # Requests admitted at once per origin replica (holding or awaiting a connection);
    # None: origin.max_concurrency.
    max_concurrency: int | None = None
    # Opt-in: capture every committed write from the database's WAL and purge the tables it
    # changed in every region (docs/auto-invalidation.md; needs `setup-auto-invalidation`).
    auto_invalidation: bool = False
    # Opt-in: serve committed row changes at GET /v1/stream (docs/change-streams.md; the
    # same capture and setup as automatic invalidation).
    change_streams: bool = False
    # SCRAM-SHA-256 verifiers of API keys (`cache-edge keygen` prints one per key), in
    # PostgreSQL's pg_authid format: with one, the PostgreSQL door asks for SCRAM instead of
    # a cleartext password (docs/postgres-protocol.md).
    scram_verifiers: tuple[str, ...] = field(default=(), repr=False)
    # PostgreSQL door: strategies for reads without hints. cache_all_reads applies to every
    # read whose result depends on table contents only; cache_rules match first.
    cache_all_reads: CacheStrategy | None = None
    cache_rules: tuple[CacheRule, ...] = ()

    @property
    def captured(self) -> bool:
        return self.auto_invalidation or self.change_streams

    @property
    def safe_dsn(self) -> str:
        return redact_dsn(self.database_url)

    @property
    def database_name(self) -> str:
        """The database a PostgreSQL-door client must name: the one database_url names."""
        parts = urlsplit(self.database_url)
        name = parts.path.lstrip("/")
        if name:
            return unquote(name)
        return unquote(parts.username or "") or "postgres"  # libpq's default: the user name


@dataclass(frozen=True, slots=True)
class OriginConfig:
    listen: HostPort = HostPort("127.0.0.1", 7400)
    pool_min_size: int = 1
    pool_max_size: int = 10
    pool_timeout: float = 5.0
    statement_timeout: float = 10.0
    max_response_bytes: int = 5_000_000
    # How long a signed node request stays valid; bounds replay of a captured request.
    signature_window: float = 60.0
    connect_timeout: float = 5.0
    # Default per-tenant cap on requests admitted at once (see TenantConfig.max_concurrency):
    # queueing for a connection is fine, an unbounded queue of one tenant is not.
    max_concurrency: int = 1000
    # Closes connections idle this long, and connections that never finish their headers.
    keepalive_timeout: float = 75.0
    # A client that trickles its body must not hold a handler forever.
    body_timeout: float = 30.0
    tls_cert: str = ""  # PEM certificate chain; with tls_key the listener speaks https
    tls_key: str = ""
    # Graceful stop: how long in-flight requests may finish after SIGTERM.
    shutdown_timeout: float = 10.0
    # Set by `--workers N`: every worker binds the same port (SO_REUSEPORT).
    reuse_port: bool = False
    # Pending-connection queue of the listener: a connection storm must not overflow it.
    backlog: int = 4096
    # Automatic invalidation: how often the WAL capture looks for new commits when nothing
    # woke it (a write through this origin wakes it at once).
    capture_interval: float = 0.025
    # Past this much WAL retained for a tenant's slot the capture gives up on it: purges
    # everything of the tenant and starts a new slot, so a stuck slot cannot fill the disk.
    capture_max_lag_mb: int = 1024
    # How long a write through the origin waits for its invalidation to be recorded.
    write_invalidation_wait: float = 2.0
    # PostgreSQL door: a client that keeps a transaction open and silent this long loses
    # its database connection (PostgreSQL's idle_in_transaction_session_timeout), so a
    # vanished client cannot hold one of the pool's few connections.
    idle_in_transaction_timeout: float = 60.0
    # PostgreSQL door: prepared statements kept per database connection; past it the least
    # recently used is closed there (and prepared again where a client needs it).
    max_prepared_statements: int = 500
    # Change streams: seconds of history a resuming subscriber may ask for.
    stream_retention: float = 86400.0


@dataclass(frozen=True, slots=True)
class NodeConfig:
    region: str = "local"
    listen: HostPort = HostPort("127.0.0.1", 7410)
    redis_url: str = "redis://127.0.0.1:6379/0"
    origin_url: str = "http://127.0.0.1:7400"
    # Must exceed the origin's statement_timeout so the origin, not the node, reports it.
    origin_timeout: float = 30.0
    origin_connect_timeout: float = 3.0
    origin_max_connections: int = 100
    # Origin calls clients wait on at once, per process (queued for a connection or in
    # flight); one more gets 503 origin_overloaded at once (cache_edge.node.origin_guard).
    origin_max_waiting: int = 2000
    # Consecutive calls that cannot reach the origin before the node stops trying it
    # (503 origin_down); then one probe call per origin_probe_interval s until one answers.
    origin_breaker_failures: int = 5
    origin_probe_interval: float = 1.0
    redis_timeout: float = 0.5
    redis_max_connections: int = 100
    # After a Redis failure, skip Redis for this long instead of paying its timeout per request.
    redis_retry_after: float = 1.0
    # How long a miss waits for another process of the region to fill the same key.
    coalesce_wait: float = 30.0
    # A region that has not heard from the origin's purge log for this long stops
    # vouching for its entries (bounded staleness for a region cut off from the origin).
    sync_grace: float = 10.0
    # The region's Redis is a Redis Cluster (redis-py's cluster client; see docs/deploy.md).
    redis_cluster: bool = False
    # The in-process hot tier (0 disables it) and how long it trusts the purge feed.
    memory_cache_mb: int = 64
    memory_lease: float = 1.0
    # Change streams: events buffered per subscriber before it is cut off as too slow,
    # recent events a process keeps for resuming subscribers, and the keepalive interval.
    stream_buffer: int = 1000
    stream_ring: int = 10000
    stream_heartbeat: float = 15.0
    shutdown_timeout: float = 10.0
    reuse_port: bool = False
    backlog: int = 4096
    keepalive_timeout: float = 75.0  # as OriginConfig's
    # Open client connections per process (also kept under the file-descriptor limit).
    # At the cap the longest-idle one is closed to make room; if every one is busy, the
    # newcomer is (cache_edge.server.serving).
    max_connections: int = 20000
    body_timeout: float = 30.0
    tls_cert: str = ""
    tls_key: str = ""
    # CA bundle that signed the origin's certificate (a private CA); empty: the system's.
    origin_ca: str = ""
    # The PostgreSQL protocol door (docs/postgres-protocol.md): "HOST:PORT", empty = off.
    pg_listen: str = ""
    # PostgreSQL door: seconds a new connection may take to finish its startup and
    # authentication, and the largest protocol message a client may send.
    pg_startup_timeout: float = 10.0
    pg_max_message_bytes: int = 16_777_216

    @property
    def pg_listen_address(self) -> HostPort | None:
        return _hostport(self.pg_listen, "node.pg_listen") if self.pg_listen else None


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where Settings came from, so that a reload reads them the same way."""

    path: str | None
    overrides: tuple[tuple[str, Any], ...] = ()
    env: Mapping[str, str] | None = field(default=None, compare=False)  # None: os.environ

    def load(self) -> Settings:
        return load_settings(self.path, dict(self.overrides), self.env)


@dataclass(frozen=True, slots=True)
class Settings:
    node_secret: str = field(repr=False)  # nodes sign with it; the origin accepts it
    tenants: tuple[TenantConfig, ...] = ()
    origin: OriginConfig = OriginConfig()
    node: NodeConfig = NodeConfig()
    limits: Limits = Limits()
    log_level: str = "info"
    log_format: str = "json"
    # Older secrets the origin still accepts during a rotation (node_secrets[1:]).
    old_node_secrets: tuple[str, ...] = field(default=(), repr=False)
    node_secret_file: str = ""  # where the secrets were read from, if a file
    rate_limit: RateLimit = RateLimit()  # the default for every API key
    source: ConfigSource | None = field(default=None, compare=False)
    # tenant id -> TenantConfig, built once here so that tenant() (on every request: rate
    # limits, the PostgreSQL door's login and rules, the origin's checks) costs the same
    # at 1 tenant or 10,000. Derived from ``tenants``; every replace() rebuilds it.
    _by_id: dict[str, TenantConfig] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # reversed: of two tenants with one id (only Settings built in code can have
        # them), the first wins, as with the linear scan this replaces.
        object.__setattr__(self, "_by_id", {t.id: t for t in reversed(self.tenants)})

    @property
    def node_secrets(self) -> tuple[str, ...]:
        """Every secret the origin accepts; the first is the one nodes sign with."""
        return (self.node_secret, *self.old_node_secrets)

    def rate_limit_for(self, tenant_id: str) -> RateLimit:
        tenant = self.tenant(tenant_id)
        if tenant is not None and tenant.rate_limit is not None:
            return tenant.rate_limit
        return self.rate_limit

    def max_concurrency_for(self, tenant: TenantConfig) -> int:
        return tenant.max_concurrency or self.origin.max_concurrency

    def tenant(self, tenant_id: str) -> TenantConfig | None:
        """The tenant with this id, or None: one dict lookup."""
        return self._by_id.get(tenant_id)


# ---------------------------------------------------------------- validation


def _pop(table: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    value = table.pop(key)
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, float))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"config key '{where}{key}': expected {names}, got {value!r}")
    return value


_ZERO_MEANS_OFF = frozenset({"memory_cache_mb", "idle_in_transaction_timeout"})


def _positive(value: float, key: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"config key '{key}': must be {'>= 0' if allow_zero else '> 0'}")


def _hostport(value: Any, key: str) -> HostPort:
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"config key '{key}': expected 'HOST:PORT', got {value!r}")
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"config key '{key}': expected 'HOST:PORT', got {value!r}")
    return HostPort(host, int(port))


def _url(value: str, key: str, schemes: tuple[str, ...]) -> str:
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:
        raise ConfigError(f"config key '{key}': not a valid URL: {redact_dsn(value)}") from None
    if parts.scheme not in schemes or not parts.hostname:
        allowed = ", ".join(f"{s}://" for s in schemes)
        raise ConfigError(
            f"config key '{key}': expected a URL starting with {allowed}, got {redact_dsn(value)}"
        )
    return value


def _reject_unknown(table: Mapping[str, Any], where: str) -> None:
    if table:
        key = sorted(table)[0]
        raise ConfigError(f"unknown config key '{where}{key}'")


def _build_dataclass(cls: Any, raw: Any, where: str) -> Any:
    """Fill a flat dataclass of scalars from a TOML table, checking every type."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{where.rstrip('.')}': expected a table")
    table = dict(raw)
    kwargs: dict[str, Any] = {}
    for name, fdef in cls.__dataclass_fields__.items():
        if name not in table:
            continue
        default = fdef.default
        if isinstance(default, HostPort):
            kwargs[name] = _hostport(table.pop(name), where + name)
        elif isinstance(default, bool):
            kwargs[name] = _pop(table, name, where, bool)
        elif isinstance(default, int):
            kwargs[name] = _pop(table, name, where, int)
            _positive(kwargs[name], where + name, allow_zero=name in _ZERO_MEANS_OFF)
        elif isinstance(default, float):
            kwargs[name] = _pop(table, name, where, float)
            _positive(kwargs[name], where + name)
        else:
            kwargs[name] = _pop(table, name, where, str)
    _reject_unknown(table, where)
    return cls(**kwargs)


def _tenant(raw: Any, index: int) -> TenantConfig:
    where = f"tenants[{index}]."
    if not isinstance(raw, dict):
        raise ConfigError(f"config key 'tenants[{index}]': expected a table")
    table = dict(raw)
    for required in ("id", "database_url"):
        if required not in table:
            raise ConfigError(f"config key '{where}{required}' is missing")
    tenant_id = _pop(table, "id", where, str)
    if not _TENANT_ID.match(tenant_id):
        raise ConfigError(f"config key '{where}id': must match [A-Za-z0-9_-]{{1,64}}")
    dsn = _url(
        _pop(table, "database_url", where, str),
        where + "database_url",
        ("postgresql", "postgres"),
    )
    keys_raw = table.pop("api_keys_sha256", [])
    if not isinstance(keys_raw, list) or not all(isinstance(k, str) for k in keys_raw):
        raise ConfigError(f"config key '{where}api_keys_sha256': expected a list of hex strings")
    keys = tuple(k.lower() for k in keys_raw)
    for k in keys:
        if not _SHA256_HEX.match(k):
            raise ConfigError(
                f"config key '{where}api_keys_sha256': {k[:8]}... is not a 64-digit hex sha256 "
                "(run `cache-edge keygen` to make a key and its hash)"
            )
    sizes: dict[str, int] = {}
    for name in ("pool_min_size", "pool_max_size", "max_concurrency"):
        if name in table:
            sizes[name] = _pop(table, name, where, int)
            _positive(sizes[name], where + name, allow_zero=name == "pool_min_size")
    flags = {
        name: bool(_pop(table, name, where, bool)) if name in table else False
        for name in ("auto_invalidation", "change_streams")
    }
    rate_limit = None
    if "rate_limit" in table:
        rate_limit = _rate_limit(table.pop("rate_limit"), where + "rate_limit")
    all_reads = None
    if "cache_all_reads" in table:
        all_reads = _rule_strategy(table.pop("cache_all_reads"), where + "cache_all_reads")
    rules_raw = table.pop("cache_rules", [])
    if not isinstance(rules_raw, list):
        raise ConfigError(f"config key '{where}cache_rules': expected [[tenants.cache_rules]]")
    rules = tuple(_cache_rule(r, f"{where}cache_rules[{i}]") for i, r in enumerate(rules_raw))
    verifiers_raw = table.pop("scram_verifiers", [])
    if not isinstance(verifiers_raw, list) or not all(
        isinstance(v, str) and _SCRAM_VERIFIER.match(v) for v in verifiers_raw
    ):
        raise ConfigError(
            f"config key '{where}scram_verifiers': expected a list of "
            "'SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>' strings "
            "(`cache-edge keygen` prints one)"
        )
    _reject_unknown(table, where)
    return TenantConfig(
        tenant_id,
        keys,
        dsn,
        rate_limit=rate_limit,
        auto_invalidation=flags["auto_invalidation"],
        change_streams=flags["change_streams"],
        scram_verifiers=tuple(verifiers_raw),
        cache_all_reads=all_reads,
        cache_rules=rules,
        **sizes,
    )


def _rule_strategy(raw: Any, key: str, extra: tuple[str, ...] = ()) -> CacheStrategy:
    """``{ttl = 300, swr = 60, stale_if_error = 600, tags = ["a"]}`` (what a hint can say)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{key}': expected a table like {{ttl = 300, swr = 60}}")
    table = {k: v for k, v in raw.items() if k not in extra}
    values: dict[str, Any] = {}
    for name in ("ttl", "swr", "stale_if_error"):
        if name in table:
            values[name] = _pop(table, name, key + ".", int)
    if "tags" in table:
        tags = table.pop("tags")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ConfigError(f"config key '{key}.tags': expected a list of tags")
        values["tags"] = tuple(tags)
    _reject_unknown(table, key + ".")
    try:
        strategy = CacheStrategy(**values)
    except BadRequest as exc:
        raise ConfigError(f"config key '{key}': {exc.message}") from None
    if not strategy.cached:
        raise ConfigError(f"config key '{key}': needs ttl or swr above 0")
    return strategy


def _cache_rule(raw: Any, key: str) -> CacheRule:
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{key}': expected a table")
    strategy = _rule_strategy(raw, key, extra=("tables", "statement"))
    tables = raw.get("tables", [])
    if not isinstance(tables, list) or not all(isinstance(t, str) and t for t in tables):
        raise ConfigError(f"config key '{key}.tables': expected a list of table names")
    statement = raw.get("statement", "")
    if not isinstance(statement, str):
        raise ConfigError(f"config key '{key}.statement': expected a string")
    if not tables and not statement:
        raise ConfigError(f"config key '{key}': give tables = [...] or statement = \"...\"")
    qualified = tuple(t.lower() if "." in t else "public." + t.lower() for t in tables)
    return CacheRule(strategy, qualified, normalize_statement(statement) if statement else "")


def normalize_statement(sql: str) -> str:
    """Whitespace collapsed, case folded, no trailing semicolon: how rules compare texts."""
    return " ".join(sql.split()).rstrip(";").strip().lower()


def _rate_limit(raw: Any, key: str) -> RateLimit:
    """``{rate = 100.0, burst = 200}``; ``rate = 0`` means unlimited, burst defaults to rate."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{key}': expected a table like {{rate = 10.0, burst = 20}}")
    table = dict(raw)
    if "rate" not in table:
        raise ConfigError(f"config key '{key}.rate' is missing (requests/s, 0 = unlimited)")
    rate = _pop(table, "rate", key + ".", float)
    _positive(rate, key + ".rate", allow_zero=True)
    burst = max(1, math.ceil(rate))
    if "burst" in table:
        burst = _pop(table, "burst", key + ".", int)
        _positive(burst, key + ".burst")
    _reject_unknown(table, key + ".")
    return RateLimit(rate, burst)


def _check_tls(cert: str, key: str, where: str, ca: str = "") -> None:
    """Both halves of a key pair or neither, and every named file readable."""
    if bool(cert) != bool(key):
        raise ConfigError(f"config key '{where}tls_cert': tls_cert and tls_key go together")
    for name, path in (("tls_cert", cert), ("tls_key", key), ("origin_ca", ca)):
        if path and not os.access(path, os.R_OK):
            raise ConfigError(f"config key '{where}{name}': cannot read {path}")


def parse_settings(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Settings:
    """Validate a decoded TOML document (with overrides applied) into Settings.

    ``env`` is consulted only for the node secret when the document names none
    (see :mod:`cache_edge.server.node_secrets`); None means no environment at all.
    """
    table = dict(raw)
    try:
        secrets = resolve_node_secrets(table, {} if env is None else env)
    except SecretsError as exc:
        raise ConfigError(str(exc)) from None
    rate_limit = RateLimit()
    if "rate_limit" in table:
        rate_limit = _rate_limit(table.pop("rate_limit"), "rate_limit")
    tenants_raw = table.pop("tenants", [])
    if not isinstance(tenants_raw, list):
        raise ConfigError("config key 'tenants': expected an array of tables ([[tenants]])")
    tenants = tuple(_tenant(t, i) for i, t in enumerate(tenants_raw))
    seen: set[str] = set()
    for t in tenants:
        if t.id in seen:
            raise ConfigError(f"config key 'tenants': duplicate tenant id {t.id!r}")
        seen.add(t.id)
    origin = _build_dataclass(OriginConfig, table.pop("origin", {}), "origin.")
    node = _build_dataclass(NodeConfig, table.pop("node", {}), "node.")
    limits = _build_dataclass(Limits, table.pop("limits", {}), "limits.")
    if origin.pool_min_size > origin.pool_max_size:
        raise ConfigError("config key 'origin.pool_min_size': is greater than origin.pool_max_size")
    if not _REGION.match(node.region):
        raise ConfigError("config key 'node.region': must match [A-Za-z0-9_.-]{1,64}")
    _url(node.redis_url, "node.redis_url", ("redis", "rediss", "unix"))
    _url(node.origin_url, "node.origin_url", ("http", "https"))
    _ = node.pg_listen_address  # validates HOST:PORT
    _check_tls(origin.tls_cert, origin.tls_key, "origin.")
    _check_tls(node.tls_cert, node.tls_key, "node.", node.origin_ca)
    log_level = table.pop("log_level", "info")
    if log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError("config key 'log_level': one of debug, info, warning, error")
    log_format = table.pop("log_format", "json")
    if log_format not in ("json", "console"):
        raise ConfigError("config key 'log_format': one of json, console")
    _reject_unknown(table, "")
    return Settings(
        node_secret=secrets.secrets[0],
        old_node_secrets=secrets.secrets[1:],
        node_secret_file=secrets.file,
        tenants=tenants,
        origin=origin,
        node=node,
        limits=limits,
        log_level=log_level,
        log_format=log_format,
        rate_limit=rate_limit,
    )


def _apply_override(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    cursor = doc
    for part in path:
        nxt = cursor.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"config key '{part}': expected a table")
        cursor = nxt
    cursor[last] = value


def load_settings(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Read the TOML file (``path`` or ``$CACHE_EDGE_CONFIG``), apply flag overrides, validate.

    ``overrides`` maps dotted keys (``"node.region"``) to values; ``None`` values are skipped
    so that unset flags do not clobber the file.
    """
    environ = os.environ if env is None else env
    chosen = path if path is not None else environ.get(CONFIG_ENV)
    doc: dict[str, Any] = {}
    if chosen:
        file = Path(chosen)
        try:
            doc = tomllib.loads(file.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {file}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
    for key, value in (overrides or {}).items():
        if value is not None:
            _apply_override(doc, key, value)
    settings = parse_settings(doc, environ)
    given = tuple((k, v) for k, v in (overrides or {}).items() if v is not None)
    source = ConfigSource(str(chosen) if chosen else None, given, env)
    return replace(settings, source=source)
