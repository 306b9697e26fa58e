"""``python -m bench.load KIND SPEC_JSON``: run one Python load generator, print its JSON summary.

The suite starts this as its own process on the load core (see bench.load.run).
"""

from __future__ import annotations

import asyncio
import json
import sys

from bench.load.clients import RUNNERS
from bench.procs import raise_fd_limit


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in RUNNERS:
        print(f"usage: python -m bench.load {{{','.join(RUNNERS)}}} SPEC_JSON", file=sys.stderr)
        return 2
    raise_fd_limit()
    spec = json.loads(argv[1])
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        result = runner.run(RUNNERS[argv[0]](spec))
    print("BENCH_JSON " + json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
