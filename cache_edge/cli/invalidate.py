"""``cache-edge invalidate``: purge tags (or everything) of a tenant in every region."""

from __future__ import annotations

import argparse
import sys

from cache_edge.cli.query import format_error
from cache_edge.client import CacheEdgeError, Client

__all__ = ["run_invalidate"]


def run_invalidate(args: argparse.Namespace) -> int:
    """Exit 0 when every live region applied the purge, 3 when some are still pending."""
    if not args.tags and not args.tables and not args.all:
        print("error: give --tag T or --table schema.name (repeatable), or --all", file=sys.stderr)
        return 2
    try:
        with Client(args.url, args.api_key, timeout=args.wait + 30) as client:
            if args.all:
                result = client.invalidate_all(wait=args.wait)
            else:
                result = client.invalidate(args.tags, wait=args.wait, tables=args.tables)
    except CacheEdgeError as exc:
        print(format_error(exc), file=sys.stderr)
        return 1
    print(f"invalidation {result.invalidation_id}")
    print(f"  applied in: {', '.join(result.applied_regions) or '-'}")
    print(f"  pending in: {', '.join(result.pending_regions) or '-'}")
    return 0 if result.complete else 3
