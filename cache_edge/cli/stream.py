"""``cache-edge stream``: print committed row changes as they arrive, resuming by itself."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import sys
from typing import Any, TextIO

from cache_edge.cli.query import format_error
from cache_edge.client import AsyncClient, CacheEdgeError, ChangeEvent
from cache_edge.common.wire import json_dumps

__all__ = ["OPS", "format_event", "run_stream"]

OPS = ("insert", "update", "delete", "truncate")


def _json(value: Any) -> str:
    return json_dumps(value).decode()


def _when(moment: dt.datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_event(event: ChangeEvent) -> str:
    """One line: commit time, op, table, the row(s), then transaction and cursor.

    ``2026-11-25T01:16:19.123Z update public.orders {"id":7,...} old={"id":7} xid=812 cursor=...``
    """
    parts = [_when(event.commit_time), event.op, event.table]
    if event.new is not None:
        parts.append(_json(event.new))
    if event.old is not None:
        parts.append(("old_key=" if event.old_is_key else "old=") + _json(event.old))
    if event.unchanged:
        parts.append("unchanged=" + ",".join(event.unchanged))
    parts.append(f"xid={event.xid if event.xid is not None else '-'}")
    parts.append(f"cursor={event.cursor}")
    return " ".join(parts)


async def _print_events(args: argparse.Namespace, out: TextIO, state: dict[str, str]) -> None:
    async with AsyncClient(args.url, args.api_key) as client:
        stream = client.stream(args.tables, ops=args.ops or None, cursor=args.cursor)
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                line = _json(event.raw) if args.json else format_event(event)
                out.write(line + "\n")
                out.flush()
                state["cursor"] = event.cursor


def _show_reconnects(err: TextIO) -> logging.Handler:
    """The SDK logs each reconnect at warning level: show those lines on stderr."""
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("cache-edge stream: %(message)s"))
    logger = logging.getLogger("cache_edge.client")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    return handler


def run_stream(args: argparse.Namespace) -> int:
    """Exit 0 on Ctrl-C, 1 on an error a reconnect cannot cure (bad table, key, gap...)."""
    if not args.tables:
        print("error: give --table schema.name (repeatable)", file=sys.stderr)
        return 2
    state: dict[str, str] = {}
    if args.cursor:
        state["cursor"] = args.cursor
    handler = _show_reconnects(sys.stderr)
    ops = f" ({', '.join(args.ops)})" if args.ops else ""
    print(f"streaming {', '.join(args.tables)}{ops} from {args.url}", file=sys.stderr, flush=True)
    try:
        asyncio.run(_print_events(args, sys.stdout, state))
    except KeyboardInterrupt:
        cursor = state.get("cursor")
        if cursor:
            print(f"stopped; resume with --cursor {cursor}", file=sys.stderr)
        return 0
    except CacheEdgeError as exc:
        print(format_error(exc), file=sys.stderr)
        return 1
    except (ValueError, TypeError) as exc:  # a malformed --url or table name
        print(f"error: bad_request: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, without a second error at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        logging.getLogger("cache_edge.client").removeHandler(handler)
    return 0
