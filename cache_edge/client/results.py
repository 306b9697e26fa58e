"""What a query returns to SDK users: rows addressable by position and name, plus cache info."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

__all__ = ["Column", "Info", "InvalidationResult", "Result", "Row", "Rows"]

_HIT_STATUSES = frozenset({"ttl", "swr", "stale"})


@dataclass(frozen=True, slots=True)
class Column:
    """One result column: its name and PostgreSQL type name (``int4``, ``numeric``, ``int4[]``)."""

    name: str
    type: str


@dataclass(frozen=True, slots=True)
class Info:
    """How an answer was produced: cache status, serving region, freshness and request id."""

    cache_status: str  # none | miss | ttl | swr | stale
    region: str
    last_modified: dt.datetime | None  # aware; None only if the node did not say
    age: float  # seconds since the origin produced the answer
    request_id: str
    signature: str | None = None
    error: Any = None  # set when a stale answer was served because the origin failed
    cache_error: Any = None  # set when the cache tier failed and the origin answered directly
    warnings: tuple[str, ...] = ()

    @property
    def hit(self) -> bool:
        """True when the answer came from the cache (fresh, revalidating or stale)."""
        return self.cache_status in _HIT_STATUSES


class _Names:
    """Column names and a name -> position index, built once and shared by every row."""

    __slots__ = ("index", "names")

    def __init__(self, names: Iterable[str]) -> None:
        self.names: tuple[str, ...] = tuple(names)
        self.index: dict[str, int] = {}
        for i, name in enumerate(self.names):
            # Duplicate names (SELECT 1 AS a, 2 AS a): by name you get the first, like asyncpg.
            self.index.setdefault(name, i)


class Row(Sequence[Any]):
    """A tuple-like row: ``row[0]``, ``row["id"]``, ``row.keys()``, ``dict(row)``, unpacking."""

    __slots__ = ("_names", "_values")

    def __init__(self, values: Iterable[Any], names: Iterable[str]) -> None:
        self._values: tuple[Any, ...] = tuple(values)
        self._names = names if isinstance(names, _Names) else _Names(names)
        if len(self._values) != len(self._names.names):
            raise ValueError(
                f"a row of {len(self._values)} values for {len(self._names.names)} columns"
            )

    @classmethod
    def _make(cls, values: tuple[Any, ...], names: _Names) -> Row:
        # The decoder's fast path: no copying, no length check (the decoder checked once).
        row = cls.__new__(cls)
        row._values = values
        row._names = names
        return row

    @overload
    def __getitem__(self, key: int | str) -> Any: ...
    @overload
    def __getitem__(self, key: slice) -> tuple[Any, ...]: ...
    def __getitem__(self, key: int | str | slice) -> Any:
        if isinstance(key, str):
            try:
                return self._values[self._names.index[key]]
            except KeyError:
                shown = ", ".join(self._names.names)
                raise KeyError(f"no column {key!r}; the columns are: {shown}") from None
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __eq__(self, other: object) -> bool:
        # Compares like a tuple of its values, so ``row == (1, "a")`` reads naturally.
        if isinstance(other, Row):
            return self._values == other._values
        if isinstance(other, tuple):
            return self._values == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        fields = " ".join(
            f"{n}={v!r}" for n, v in zip(self._names.names, self._values, strict=True)
        )
        return f"<Row {fields}>"

    def __getstate__(self) -> tuple[tuple[Any, ...], tuple[str, ...]]:
        return self._values, self._names.names

    def __setstate__(self, state: tuple[tuple[Any, ...], tuple[str, ...]]) -> None:
        self._values, names = state
        self._names = _Names(names)

    def keys(self) -> tuple[str, ...]:
        return self._names.names

    def values(self) -> tuple[Any, ...]:
        return self._values

    def items(self) -> Iterator[tuple[str, Any]]:
        return zip(self._names.names, self._values, strict=True)

    def get(self, key: str, default: Any = None) -> Any:
        i = self._names.index.get(key)
        return default if i is None else self._values[i]


class Rows(list[Row]):
    """The rows of one result, with the result's ``.columns`` and ``.info`` attached."""

    __slots__ = ("columns", "info")

    def __init__(self, rows: Iterable[Row], columns: Sequence[Column], info: Info) -> None:
        super().__init__(rows)
        self.columns: tuple[Column, ...] = tuple(columns)
        self.info = info

    @classmethod
    def from_values(
        cls, columns: Sequence[Column], values: Iterable[Sequence[Any]], info: Info
    ) -> Rows:
        """Build rows from raw value lists, sharing one name index across all of them."""
        names = _Names(c.name for c in columns)
        width = len(names.names)
        rows = []
        for i, raw in enumerate(values):
            row = tuple(raw)
            if len(row) != width:
                raise ValueError(f"row {i} has {len(row)} values for {width} columns")
            rows.append(Row._make(row, names))
        return cls(rows, columns, info)


@dataclass(frozen=True, slots=True)
class Result:
    """Everything one statement returned: rows, columns, row count and cache info."""

    rows: Rows
    row_count: int

    @property
    def columns(self) -> tuple[Column, ...]:
        return self.rows.columns

    @property
    def info(self) -> Info:
        return self.rows.info


@dataclass(frozen=True, slots=True)
class InvalidationResult:
    """The answer to an invalidation: its id and which regions have applied it so far."""

    invalidation_id: str
    applied_regions: tuple[str, ...] = ()
    pending_regions: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.pending_regions
