"""``cache-edge query``: run one statement through a node and print the rows and cache status."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from cache_edge.client import CacheEdgeError, CacheStrategy, Client, Info, Result
from cache_edge.client.table import format_table
from cache_edge.common.wire import json_dumps

__all__ = ["format_error", "format_status", "print_result", "run_query"]


def format_status(info: Info) -> str:
    """The line under the rows: how the answer was served."""
    region = info.region or "?"
    return (
        f"cache: {info.cache_status}  region: {region}  age: {info.age:.1f}s  "
        f"request: {info.request_id or '?'}"
    )


def format_error(exc: CacheEdgeError) -> str:
    """``error: <code>: <message>``, then one indented line per detail the server gave."""
    lines = [f"error: {exc.code}: {exc.message}"]
    lines += [f"  {key}: {value}" for key, value in exc.extra.items()]
    return "\n".join(lines)


def _strategy(args: argparse.Namespace) -> CacheStrategy | None:
    if not (args.ttl or args.swr or args.tags):
        return None
    return CacheStrategy(ttl=args.ttl, swr=args.swr, tags=tuple(args.tags))


def print_result(result: Result, as_json: bool, out: TextIO, err: TextIO) -> None:
    if as_json:
        # stdout stays pure JSON lines (one object per row) so it can be piped to jq.
        for row in result.rows:
            out.write(json_dumps(dict(row.items())).decode() + "\n")
        err.write(format_status(result.info) + "\n")
        return
    if result.columns:
        names = [c.name for c in result.columns]
        types = [c.type for c in result.columns]
        out.write(format_table(names, types, result.rows) + "\n")
    else:
        n = result.row_count
        out.write(f"({n} row{'' if n == 1 else 's'} affected)\n")
    out.write(format_status(result.info) + "\n")


def run_query(args: argparse.Namespace) -> int:
    """Run ``args.sql`` with ``args.params`` (sent as text; PostgreSQL coerces them)."""
    try:
        strategy = _strategy(args)
        with Client(args.url, args.api_key) as client:
            result = client.query(args.sql, *args.params, cache=strategy)
    except CacheEdgeError as exc:
        print(format_error(exc), file=sys.stderr)
        return 1
    except ValueError as exc:  # a malformed --url
        print(f"error: bad_request: {exc}", file=sys.stderr)
        return 1
    print_result(result, args.json, sys.stdout, sys.stderr)
    return 0
