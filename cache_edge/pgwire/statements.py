"""What the relay must know about a client's SQL text, read without parsing it.

Transaction pooling breaks a few features that live in one server session. Statements that
use them pin the client to its database connection until it disconnects (temporary tables,
session advisory locks, LISTEN, SQL-level PREPARE, cursors WITH HOLD); statements that
would change who the session is (SET ROLE, SET SESSION AUTHORIZATION) are refused, because
the tenant's role comes from authentication only. Matching is on the text, so it errs
toward pinning: a comment or string literal that contains ``CREATE TEMP TABLE`` pins too,
which costs a connection but never correctness.
"""

from __future__ import annotations

import re

__all__ = ["IDENTITY_REFUSAL", "needs_pin", "refusal_sql", "refused", "touches_settings"]

_PIN = re.compile(
    rb"""
      \bcreate\s+(?:(?:global|local)\s+)?temp(?:orary)?\s
    | \bpg_(?:try_)?advisory_lock(?:_shared)?\s*\(
    | (?:^|;)\s*(?:listen|prepare|load)\s
    | \bwith\s+hold\b
    """,
    re.IGNORECASE | re.VERBOSE,
)
_REFUSE = re.compile(
    rb"(?:^|;)\s*(?:set|reset)\s+(?:(?:session|local)\s+)?(?:role|session\s+authorization)\b",
    re.IGNORECASE,
)
_SET_CONFIG = re.compile(rb"\bset_config\s*\(", re.IGNORECASE)

IDENTITY_REFUSAL = (
    "changing the role is not supported through cache-edge: the database role comes from "
    "the tenant's configuration"
)


def needs_pin(sql: bytes) -> bool:
    return _PIN.search(sql) is not None


def refused(sql: bytes) -> bool:
    return _REFUSE.search(sql) is not None


def touches_settings(sql: bytes) -> bool:
    """set_config() changes settings without a SET command tag to notice."""
    return _SET_CONFIG.search(sql) is not None


def refusal_sql(sqlstate: str, text: str) -> bytes:
    """A statement that makes PostgreSQL itself raise our error, in the exact place of the
    refused statement: the transaction aborts and later messages are skipped as for any
    error, with no reordering of the relayed stream."""
    quoted = text.replace("'", "''")
    return (
        f"DO $ce$BEGIN RAISE EXCEPTION USING ERRCODE = '{sqlstate}', MESSAGE = '{quoted}'; END$ce$"
    ).encode()
