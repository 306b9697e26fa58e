"""The PostgreSQL door answers psql: the smallest end-to-end proof (more in test_pg_*.py)."""

from __future__ import annotations

import subprocess

from tests.integration.door_helpers import Door, door  # noqa: F401  (fixture)


def test_psql_runs_a_query_through_the_node(door: Door) -> None:  # noqa: F811
    out = subprocess.run(
        ["psql", door.url(), "-XAtc", "SELECT 40 + 2, current_database()"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42|cache_edge_test"
