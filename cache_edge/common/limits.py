"""Bounds on what one request may carry; the node and the origin both enforce them."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one request may carry (both node and origin enforce them)."""

    max_body_bytes: int = 1_048_576
    max_sql_length: int = 100_000
    max_params: int = 1_000
    max_depth: int = 32
    max_string_length: int = 1_000_000
    max_statements: int = 100
