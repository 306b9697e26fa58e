"""What a cached query's result depends on: the tables in its plan, and anything else.

The planner has already expanded views and inlined SQL functions, so the relations
in ``EXPLAIN (VERBOSE, FORMAT JSON)`` are the base tables the rows come from. What
table contents cannot explain — the clock, randomness, the session, functions the
planner cannot see into — is reported as a warning, so nobody mistakes such a
result for one that only changes when tables do (docs/auto-invalidation.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Dependencies", "explain_dependencies", "plan_dependencies"]

# Stable (not volatile) in PostgreSQL, yet their results change with time or session.
_TIME_OR_SESSION = frozenset(
    {
        "now", "statement_timestamp", "transaction_timestamp", "current_setting",
        "current_schema", "current_schemas", "current_database", "inet_client_addr",
        "pg_backend_pid", "current_query", "to_char", "timeofday",
    }
)  # fmt: skip
# SQL-standard keywords that VERBOSE output prints without parentheses.
_KEYWORDS = re.compile(
    r"\b(CURRENT_USER|SESSION_USER|CURRENT_ROLE|CURRENT_TIMESTAMP|CURRENT_DATE|CURRENT_TIME"
    r"|LOCALTIMESTAMP|LOCALTIME|CURRENT_CATALOG|CURRENT_SCHEMA)\b"
)
_CALL = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\(")
_EXPRESSION_KEYS = (
    "Output", "Filter", "Index Cond", "Recheck Cond", "Join Filter", "Hash Cond",
    "Merge Cond", "One-Time Filter", "Function Call", "Sort Key", "Group Key",
    "Table Function Call",
)  # fmt: skip
# Words before "(" in plan text that are syntax, not functions.
_NOT_FUNCTIONS = frozenset({"ANY", "ALL", "ARRAY", "ROW", "CASE", "SubPlan", "InitPlan"})


@dataclass(frozen=True, slots=True)
class Dependencies:
    tables: tuple[str, ...]  # "schema.name", sorted
    warnings: tuple[str, ...] = ()
    known: bool = True  # False: it may read tables not in the plan (or EXPLAIN failed)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


def _texts(node: dict[str, Any]) -> Iterator[str]:
    for key in _EXPRESSION_KEYS:
        value = node.get(key)
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            yield from (v for v in value if isinstance(v, str))


def plan_dependencies(plan: dict[str, Any]) -> tuple[set[str], set[str], set[str]]:
    """(tables, called function names, SQL keywords) of one plan tree."""
    tables: set[str] = set()
    functions: set[str] = set()
    keywords: set[str] = set()
    for node in _nodes(plan):
        if "Relation Name" in node:
            tables.add(f"{node.get('Schema', 'public')}.{node['Relation Name']}")
        if "Function Name" in node:
            functions.add(str(node["Function Name"]))
        for text in _texts(node):
            functions.update(m for m in _CALL.findall(text) if m not in _NOT_FUNCTIONS)
            keywords.update(k.lower() for k in _KEYWORDS.findall(text))
    return tables, functions, keywords


# The plan is remembered per statement text, so it must hold for every argument: a generic
# plan (nothing folded away for the first call's values) without partition pruning (every
# partition the statement could read is in it). PostgreSQL 15 has no EXPLAIN (GENERIC_PLAN).
# One round trip each way; a failing PREPARE rolls the SETs back with it (one implicit
# transaction), and the undo runs only after PREPARE succeeded.
_GENERIC = (
    "SET plan_cache_mode = force_generic_plan; SET enable_partition_pruning = off; "
    "PREPARE cache_edge_deps AS "
)
_UNDO = "DEALLOCATE cache_edge_deps; RESET plan_cache_mode; RESET enable_partition_pruning"
# Functions still in the plan (not inlined): volatile ones change without a table changing;
# user-defined ones (not C/internal, not in the system schemas) may read tables the plan
# does not show.
_FUNCTIONS = """
SELECT p.proname,
       bool_or(p.provolatile = 'v') AS volatile,
       bool_or(l.lanname NOT IN ('internal', 'c')
               AND n.nspname NOT IN ('pg_catalog', 'information_schema')) AS opaque
FROM pg_proc p
JOIN pg_language l ON l.oid = p.prolang
JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE p.proname = ANY($1::text[])
GROUP BY p.proname
"""
_ROOTS = """
SELECT DISTINCT rn.nspname || '.' || r.relname AS root
FROM unnest($1::text[], $2::text[]) AS t(schema_name, rel_name)
JOIN pg_namespace n ON n.nspname = t.schema_name
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.rel_name AND c.relispartition
JOIN pg_class r ON r.oid = pg_partition_root(c.oid)
JOIN pg_namespace rn ON rn.oid = r.relnamespace
"""


async def _generic_plan(conn: Any, sql: str, nargs: int, timeout: float | None) -> dict[str, Any]:
    await conn.execute(_GENERIC + sql, timeout=timeout)
    try:
        values = "(" + ", ".join(["NULL"] * nargs) + ")" if nargs else ""
        raw = await conn.fetchval("EXPLAIN (VERBOSE, FORMAT JSON) EXECUTE cache_edge_deps" + values)
    finally:
        await conn.execute(_UNDO, timeout=timeout)
    doc = raw if isinstance(raw, list) else json.loads(raw)
    plan: dict[str, Any] = doc[0]["Plan"]
    return plan


async def explain_dependencies(
    conn: Any, sql: str, args: list[Any], timeout: float | None = None
) -> Dependencies:
    """Plan ``sql`` for any arguments (outside a transaction block) and read the plan.

    Partitions come with their partitioned root: writes to partitions are published as
    writes to the root (``publish_via_partition_root``), whichever partition they hit.
    """
    plan = await _generic_plan(conn, sql, len(args), timeout)
    tables, functions, keywords = plan_dependencies(plan)
    partitions = sorted(tables)
    if partitions:
        schemas, names = zip(*(t.split(".", 1) for t in partitions), strict=True)
        rows = await conn.fetch(_ROOTS, list(schemas), list(names))
        tables.update(r["root"] for r in rows)
    volatile: set[str] = set()
    opaque: set[str] = set()
    if functions:
        rows = await conn.fetch(_FUNCTIONS, sorted(functions))
        volatile = {r["proname"] for r in rows if r["volatile"]}
        opaque = {r["proname"] for r in rows if r["opaque"]}
    warnings = [
        f"depends on {name}(), which changes without any table changing"
        for name in sorted(volatile | (functions & _TIME_OR_SESSION))
    ]
    warnings += [
        f"calls {name}(), whose reads the planner cannot see: any write invalidates this result"
        for name in sorted(opaque)
    ]
    warnings += [f"depends on {kw}, which is not table data" for kw in sorted(keywords)]
    # A user-defined function left in the plan may read any table: follow every write.
    return Dependencies(tuple(sorted(tables)), tuple(warnings), known=not opaque)
