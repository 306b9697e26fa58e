"""``python -m bench.relay``: an emulated WAN link (one-way delay) as its own process.

It runs :class:`cache_edge.devtools.delay_relay.DelayRelay`, the relay behind
``cache-edge dev --wan-delay``, so the suite measures the same link developers use.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from cache_edge.devtools.delay_relay import DelayRelay


async def serve(target_host: str, target_port: int, delay: float, listen_port: int) -> None:
    relay = await DelayRelay(target_host, target_port, delay, listen_port=listen_port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"relay 127.0.0.1:{relay.port} -> {target_host}:{target_port} +{delay * 1000:.0f} ms")
    await stop.wait()
    await relay.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover
        runner = asyncio.Runner()
    with runner:
        runner.run(serve(host, int(port), args.delay_ms / 1000, args.listen_port))


if __name__ == "__main__":
    main()
