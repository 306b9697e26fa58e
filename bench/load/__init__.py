"""Package bench.load generates load from its own process: wrk, asyncpg and raw HTTP clients."""
