"""The error tree: codes registered by their classes, unique, and all documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

# Every module that declares error classes, so that all of them are registered here.
import cache_edge.node.tiers.redis
import cache_edge.server.bodies
import cache_edge.server.http_errors  # noqa: F401
from cache_edge.common.errors import (
    BadRequest,
    CacheEdgeError,
    InternalError,
    QueryError,
    RedisUnavailable,
    error_classes,
    error_from_body,
)
from cache_edge.node.tiers.redis import TierUnavailable
from cache_edge.server.bodies import BodyTimeout

README = Path(__file__).resolve().parents[3] / "README.md"


def _readme_errors() -> dict[str, str]:
    """code -> HTTP column of README's errors table."""
    text = README.read_text()
    table = text[text.index("## Errors") :]
    table = table[: table.index("\n## ", 1)]
    return dict(re.findall(r"^\| `([a-z_]+)` \| ([^|]+?) \|", table, re.MULTILINE))


def test_every_code_is_unique_and_declared_by_one_class() -> None:
    classes = error_classes()
    assert len(set(classes.values())) == len(classes)
    for code, cls in classes.items():
        assert cls.code == code and cls.__dict__["code"] == code
        assert issubclass(cls, CacheEdgeError)
    # The tree as the module docstring draws it, at least.
    assert {"bad_request", "internal", "query_error", "redis_unavailable"} <= set(classes)


def test_every_code_is_documented_in_the_readme_with_its_status() -> None:
    documented = _readme_errors()
    for code, cls in error_classes().items():
        assert code in documented, f"{code} is missing from README's errors table"
        column = documented[code]
        if column.strip() not in ("—", "-"):
            assert str(cls.status) in column, (code, cls.status, column)
    assert set(documented) == set(error_classes()), "README documents codes nobody raises"


def test_a_subclass_keeping_its_parents_code_is_not_a_new_code() -> None:
    assert error_classes()["bad_request"] is BadRequest  # not BodyTimeout
    assert issubclass(BodyTimeout, BadRequest)
    assert error_classes()["redis_unavailable"] is RedisUnavailable  # not TierUnavailable
    assert TierUnavailable("x").code == "redis_unavailable"


def test_a_second_class_with_a_taken_code_is_refused() -> None:
    with pytest.raises(TypeError, match="already"):

        class Duplicate(CacheEdgeError):
            code = "query_error"

    assert error_classes()["query_error"] is QueryError


def test_error_bodies_become_the_registered_class() -> None:
    for code, cls in error_classes().items():
        exc = error_from_body({"error": {"code": code, "message": "m"}}, cls.status)
        assert type(exc) is cls and exc.message == "m"
    unknown = error_from_body({"error": {"code": "from_the_future", "message": "m"}}, 500)
    assert type(unknown) is InternalError and unknown.extra["originalCode"] == "from_the_future"
