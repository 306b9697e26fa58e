"""The origin's half of the PostgreSQL door: raw database connections, pooled per tenant,
that client sessions from the nodes borrow one transaction at a time (docs/postgres-protocol.md).
"""
