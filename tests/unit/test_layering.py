"""Dependencies point one way: an allow-list of which package may import which.

Leaves (``common``) import nothing above them; the SDK (``client``) imports only
``common`` and no server library; the node and the origin share ``common`` and
``server`` but never import each other; only the composition roots (``cli``,
``devtools``) see everything. Every import in every module is checked, including
those inside functions (lazy imports count: they run in the same process).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# package -> the project packages its modules may import
ALLOWED: dict[str, set[str]] = {
    "cache_edge.common": {"cache_edge.common"},
    "cache_edge.client": {"cache_edge.common", "cache_edge.client", "cache_edge"},
    "cache_edge.pgwire": {"cache_edge.pgwire"},
    "cache_edge.server": {"cache_edge.common", "cache_edge.server"},
    "cache_edge.node": {
        "cache_edge.common",
        "cache_edge.pgwire",
        "cache_edge.server",
        "cache_edge.node",
    },
    "origin": {"cache_edge.common", "cache_edge.pgwire", "cache_edge.server", "origin"},
    "cache_edge.cli": {"*"},
    "cache_edge.devtools": {"*"},
}
# Third-party libraries a package must not load: the SDK runs in serverless functions
# whose cold start pays for every import, and leaves stay leaves.
FORBIDDEN_LIBS: dict[str, set[str]] = {
    "cache_edge.common": {"asyncpg", "redis", "aiohttp", "structlog", "prometheus_client"},
    "cache_edge.pgwire": {"asyncpg", "redis", "aiohttp", "structlog", "prometheus_client"},
    "cache_edge.client": {"asyncpg", "redis", "structlog", "prometheus_client", "uvloop"},
}
PROJECT = ("cache_edge", "origin")


def _package_of(module: str) -> str | None:
    best = None
    for pkg in ALLOWED:
        if (module == pkg or module.startswith(pkg + ".")) and (
            best is None or len(pkg) > len(best)
        ):
            best = pkg
    return best


def _imports(source: str, module: str) -> list[tuple[int, str]]:
    """Absolute names of everything ``source`` (the module ``module``) imports."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: -node.level]
                base = ".".join([*parts, base] if base else parts)
            # `from pkg import sub` may import a submodule: count pkg.sub too
            out.append((node.lineno, base))
            out.extend((node.lineno, f"{base}.{a.name}") for a in node.names)
    return out


def violations(source: str, module: str) -> list[str]:
    pkg = _package_of(module)
    if pkg is None:
        return []
    allowed = ALLOWED[pkg]
    found: list[str] = []
    for line, name in _imports(source, module):
        top = name.split(".")[0]
        if top in FORBIDDEN_LIBS.get(pkg, set()):
            found.append(f"{module}:{line} imports {name} (a library {pkg} must not load)")
        if top not in PROJECT or "*" in allowed or name == "cache_edge.__version__":
            continue
        target = _package_of(name)
        if target is None:
            # cache_edge itself (the package root) or a name inside a module
            if name in ("cache_edge",) or any(name.startswith(a + ".") for a in allowed):
                continue
            found.append(f"{module}:{line} imports {name} (not in any layer)")
        elif target not in allowed:
            found.append(f"{module}:{line} imports {name}: {pkg} may import only {sorted(allowed)}")
    return found


def _modules() -> list[tuple[str, Path]]:
    out = []
    for top in PROJECT:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out.append((".".join(parts), path))
    return out


def test_every_module_belongs_to_a_layer() -> None:
    loose = [m for m, _ in _modules() if _package_of(m) is None and m not in PROJECT]
    assert loose == [], f"modules outside every layer: {loose}"


@pytest.mark.parametrize("module,path", _modules(), ids=[m for m, _ in _modules()])
def test_imports_follow_the_layers(module: str, path: Path) -> None:
    assert violations(path.read_text(), module) == []


@pytest.mark.parametrize(
    "module,source",
    [
        ("cache_edge.common.keys", "from cache_edge.node.read_path import QueryCache\n"),
        ("cache_edge.client.core", "def f():\n    import cache_edge.server.config\n"),
        ("cache_edge.client.core", "import asyncpg\n"),
        ("origin.core.app", "from cache_edge.node import app\n"),
        ("cache_edge.node.app", "from origin.core.pool import Pool\n"),
        ("cache_edge.server.logs", "from ..node import metrics\n"),
    ],
)
def test_a_forbidden_import_is_caught(module: str, source: str) -> None:
    """The check can fail: each of these would be a layering violation."""
    assert violations(source, module) != []


def test_allowed_imports_pass() -> None:
    assert violations("from cache_edge.common.errors import BadRequest\n", "origin.core.app") == []
    assert violations("from cache_edge.node.app import run_node\n", "cache_edge.cli.main") == []


def test_the_origin_app_exposes_its_entry_points() -> None:
    from origin.core import app

    assert callable(app.create_origin_app) and callable(app.run_origin)
