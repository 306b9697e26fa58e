"""The ``cache-edge`` command: run an origin or a node, make keys, query, run a local world.

Subcommands import what they need lazily so ``cache-edge query`` stays light.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file (default: $CACHE_EDGE_CONFIG)")


def _load(args: argparse.Namespace, overrides: dict[str, Any]) -> Any:
    from cache_edge.server.config import ConfigError, load_settings

    try:
        return load_settings(args.config, overrides)
    except ConfigError as exc:
        print(f"cache-edge: invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_keygen(args: argparse.Namespace) -> int:
    key = "ce_" + secrets.token_urlsafe(32)
    print(f"api_key        = {key}")
    print(f"api_key_sha256 = {hashlib.sha256(key.encode()).hexdigest()}")
    print("# put the sha256 in [[tenants]].api_keys_sha256; give the key to the application")
    try:  # scramp comes with the server extra; keygen works without it
        from cache_edge.pgwire.scram import make_verifier
    except ImportError:
        print("# scram_verifier: needs the server extra (pip install 'cache-edge[server]')")
        return 0
    print(f"scram_verifier = {make_verifier(key)}")
    print(
        "# PostgreSQL door (the key is the password): put scram_verifier in "
        "[[tenants]].scram_verifiers, first entry (logins check only the first)"
    )
    return 0


def _supervise(args: argparse.Namespace, settings: Any, shutdown_timeout: float) -> int:
    from cache_edge.server.logs import configure_logging
    from cache_edge.server.workers import Supervisor

    configure_logging(settings.log_level, settings.log_format, service="cache-edge-supervisor")
    return Supervisor(sys.argv[1:], args.workers, grace=shutdown_timeout + 5).run()


def cmd_origin(args: argparse.Namespace) -> int:
    settings = _load(args, {"origin.listen": args.listen, "origin.reuse_port": args.reuse_port})
    if args.action != "run":
        from origin.capture.setup_cli import run_setup_command

        return run_setup_command(settings, args)
    if args.workers > 1:
        return _supervise(args, settings, settings.origin.shutdown_timeout)
    from origin.core.app import run_origin

    run_origin(settings)
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    settings = _load(
        args,
        {
            "node.region": args.region,
            "node.listen": args.listen,
            "node.redis_url": args.redis_url,
            "node.origin_url": args.origin_url,
            "node.pg_listen": args.pg_listen,
            "node.reuse_port": args.reuse_port,
        },
    )
    if args.workers > 1:
        return _supervise(args, settings, settings.node.shutdown_timeout)
    from cache_edge.node.app import run_node

    run_node(settings)
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from cache_edge.cli.query import run_query

    return int(run_query(args))


def cmd_invalidate(args: argparse.Namespace) -> int:
    from cache_edge.cli.invalidate import run_invalidate

    return int(run_invalidate(args))


def cmd_stream(args: argparse.Namespace) -> int:
    from cache_edge.cli.stream import run_stream

    return int(run_stream(args))


def cmd_dev(args: argparse.Namespace) -> int:
    from cache_edge.devtools.dev import run_dev

    return int(run_dev(args))


def _worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)"
    )
    # Set by the supervisor for its workers; True-or-None so it never clobbers the file.
    p.add_argument("--reuse-port", action="store_const", const=True, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cache-edge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("keygen", help="print a new random API key and its sha256")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("origin", help="run the origin pooler next to PostgreSQL")
    p.add_argument(
        "action",
        nargs="?",
        default="run",
        choices=("run", "setup-auto-invalidation", "remove-auto-invalidation"),
        help="run the server (default), or set up / remove automatic invalidation for --tenant",
    )
    p.add_argument("--tenant", help="tenant id (setup-/remove-auto-invalidation)")
    p.add_argument(
        "--admin-database-url",
        help="superuser DSN for the setup, if the tenant's own role is not one",
    )
    _config_args(p)
    p.add_argument("--listen", help="HOST:PORT (overrides origin.listen)")
    _worker_args(p)
    p.set_defaults(func=cmd_origin)

    p = sub.add_parser("node", help="run a regional cache node")
    _config_args(p)
    p.add_argument("--region")
    p.add_argument("--listen", help="HOST:PORT (overrides node.listen)")
    p.add_argument("--redis-url")
    p.add_argument("--origin-url")
    p.add_argument(
        "--pg-listen", help="HOST:PORT of the PostgreSQL protocol door (overrides node.pg_listen)"
    )
    _worker_args(p)
    p.set_defaults(func=cmd_node)

    p = sub.add_parser("query", help="run one query through a node and print the rows")
    p.add_argument("--url", default="http://127.0.0.1:7410", help="node URL")
    p.add_argument("--api-key", required=True)
    p.add_argument("--ttl", type=int, default=0)
    p.add_argument("--swr", type=int, default=0)
    p.add_argument("--tag", action="append", default=[], dest="tags")
    p.add_argument("--json", action="store_true", help="print rows as JSON lines")
    p.add_argument("sql")
    p.add_argument("params", nargs="*", help="parameters, passed as text ($1, $2, ...)")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("invalidate", help="purge tags (or all) in every region, and wait")
    p.add_argument("--url", default="http://127.0.0.1:7410", help="any node's URL")
    p.add_argument("--api-key", required=True)
    p.add_argument("--tag", action="append", default=[], dest="tags", help="repeatable")
    p.add_argument(
        "--table",
        action="append",
        default=[],
        dest="tables",
        help="schema.name: results that read it (automatic invalidation); repeatable",
    )
    p.add_argument("--all", action="store_true", help="everything of this tenant")
    p.add_argument("--wait", type=float, default=5.0, help="seconds to wait for regions (0-30)")
    p.set_defaults(func=cmd_invalidate)

    p = sub.add_parser("stream", help="print committed row changes as they arrive (Ctrl-C stops)")
    p.add_argument("--url", default="http://127.0.0.1:7410", help="any node's URL")
    p.add_argument("--api-key", required=True)
    p.add_argument(
        "--table", action="append", default=[], dest="tables", help="schema.name, repeatable"
    )
    p.add_argument(
        "--op",
        action="append",
        choices=("insert", "update", "delete", "truncate"),
        dest="ops",
        help="only these operations (repeatable; default all)",
    )
    p.add_argument("--cursor", help="resume after this event's cursor")
    p.add_argument("--json", action="store_true", help="print events as JSON lines")
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("dev", help="run origin + regions + a demo table locally")
    p.add_argument("--regions", type=int, default=2)
    p.add_argument("--base-port", type=int, default=7400)
    p.add_argument("--wan-delay", default="0ms", help="emulated one-way delay node->origin")
    p.add_argument("--workdir", default=".dev", help="where private servers keep their data")
    p.add_argument(
        "--check",
        action="store_true",
        help="start, query each region twice (expect miss then ttl), stop; exit 0 if all pass",
    )
    p.add_argument(
        "--private-servers",
        action="store_true",
        help="always start private PostgreSQL and Redis in --workdir",
    )
    p.set_defaults(func=cmd_dev)
    return parser


# What `pip install cache-edge` leaves out: the SDK and `cache-edge query` need none of it.
_SERVER_PACKAGES = frozenset(
    {"asyncpg", "redis", "hiredis", "prometheus_client", "structlog", "uvloop"}
)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _SERVER_PACKAGES:
            raise
        print(
            f"cache-edge: this command runs a server and needs the server extra "
            f"({exc.name} is not installed): pip install 'cache-edge[server]'",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
