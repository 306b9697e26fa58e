"""The PostgreSQL door: a protocol-3.0 listener beside the HTTP one (docs/postgres-protocol.md).

The node ends each client connection itself (TLS, startup, authentication), so connecting
costs no origin round trip, and relays the session's messages over one multiplexed link to
the origin, which runs them on its pooled database connections.
"""
