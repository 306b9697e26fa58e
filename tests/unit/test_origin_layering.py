"""Dependencies point one way: the origin never imports the node, its tiers or the SDK."""

from __future__ import annotations

import ast
from pathlib import Path

ORIGIN = Path(__file__).resolve().parents[2] / "origin"
FORBIDDEN = (
    "cache_edge.app",
    "cache_edge.cache",
    "cache_edge.tiers",
    "cache_edge.origin_client",
    "cache_edge.client",
    "redis",
)


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_origin_imports_only_shared_leaves() -> None:
    files = sorted(ORIGIN.glob("*.py"))
    assert files
    for path in files:
        for name in imported_modules(path):
            assert not any(name == f or name.startswith(f + ".") for f in FORBIDDEN), (
                f"{path.name} imports {name}"
            )


def test_app_module_exposes_the_entry_points() -> None:
    from origin import app

    assert callable(app.create_origin_app) and callable(app.run_origin)
