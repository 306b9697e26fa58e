"""cache-edge: a globally distributed SQL query cache for PostgreSQL.

The package root stays import-light on purpose: the client SDK
(``cache_edge.client``) must load in a serverless function without asyncpg,
redis or the server stack.
"""

__version__ = "0.1.0"
