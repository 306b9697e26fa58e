"""PostgreSQL frontend/backend protocol 3.0: framing and the messages both ends build.

A shared leaf: the node (the PostgreSQL door) and the origin (its wire pool) relay
backend messages byte for byte, so both need the framing; no Python library exposes it.
"""
