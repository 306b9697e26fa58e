"""asyncpg's private API that ``origin/core/session.py`` drives, checked without a database.

``session.bind_execute`` and ``session.execute_more`` call ``conn._protocol.bind_execute``
and ``conn._protocol.execute`` with ``prepared._state``: asyncpg's public API has no
one-round-trip, row-limited execution that says whether it completed. Nothing in asyncpg
promises these stay as they are, so pyproject.toml bounds asyncpg to the releases tested,
and these tests fail loudly, naming the call, when an asyncpg release changes them.
"""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

import asyncpg
import asyncpg.prepared_stmt
import pytest
from asyncpg.protocol import Protocol

ROOT = Path(__file__).resolve().parents[3]

# The parameters session.py passes, by position, after ``self`` (keep in step with it).
PRIVATE_CALLS = {
    "bind_execute": ["state", "args", "portal_name", "limit", "return_extra", "timeout"],
    "execute": ["state", "portal_name", "limit", "return_extra", "timeout"],
}


def _broken(what: str) -> str:
    return (
        f"asyncpg {asyncpg.__version__}: {what}. origin/core/session.py drives this private "
        "asyncpg API (bind_execute / execute_more); adapt them to this release, then widen "
        "the asyncpg bound in pyproject.toml."
    )


def _bound() -> tuple[tuple[int, ...], tuple[int, ...]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    spec = next(s for s in project["optional-dependencies"]["server"] if s.startswith("asyncpg"))
    low = re.search(r">=\s*([\d.]+)", spec)
    high = re.search(r"<\s*([\d.]+)", spec)
    assert low and high, f"pyproject.toml must bound asyncpg on both sides, not {spec!r}"
    return _version(low.group(1)), _version(high.group(1))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def test_the_installed_asyncpg_is_one_the_bound_allows() -> None:
    low, high = _bound()
    installed = _version(asyncpg.__version__)
    assert low <= installed < high, _broken(
        f"installed, outside the tested range >={low}, <{high} in pyproject.toml"
    )


def _call_problem(cls: type, name: str, expected: list[str]) -> str | None:
    """What keeps session.py's positional call ``cls.name(self, *expected)`` from working."""
    method = getattr(cls, name, None)
    if method is None:
        return f"{cls.__name__}.{name} is gone"
    try:
        signature = inspect.signature(method)
    except (TypeError, ValueError) as exc:
        return f"the signature of {cls.__name__}.{name} cannot be read ({exc})"
    params = list(signature.parameters)[1:]  # after self
    if params != expected:
        return f"{cls.__name__}.{name} now takes {params}, session.py passes {expected}"
    return None


@pytest.mark.parametrize("name", sorted(PRIVATE_CALLS))
def test_the_protocol_calls_session_makes_still_exist_with_their_parameters(name: str) -> None:
    problem = _call_problem(Protocol, name, PRIVATE_CALLS[name])
    assert problem is None, _broken(problem or "")


def test_a_changed_or_missing_call_is_named() -> None:
    class Protocol:  # what a future asyncpg could ship
        async def bind_execute(self, state: object, args: object, limit: int) -> None: ...

    expected = PRIVATE_CALLS["bind_execute"]
    assert "now takes ['state', 'args', 'limit']" in str(
        _call_problem(Protocol, "bind_execute", expected)
    )
    assert _call_problem(Protocol, "execute", PRIVATE_CALLS["execute"]) == (
        "Protocol.execute is gone"
    )


def test_the_attributes_session_reads_still_exist() -> None:
    slots = {
        "Connection._protocol": asyncpg.connection.Connection,
        "PreparedStatement._state": asyncpg.prepared_stmt.PreparedStatement,
    }
    for label, cls in slots.items():
        attr = label.split(".")[1]
        found = any(attr in getattr(k, "__slots__", ()) for k in cls.__mro__) or hasattr(cls, attr)
        assert found, _broken(f"{label} is gone")
