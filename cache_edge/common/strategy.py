"""Per-query cache strategy: ttl, swr, tags and staleIfError, validated and pure."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

from cache_edge.common.errors import BadRequest

__all__ = ["MAX_SECONDS", "MAX_TAGS", "NO_CACHE", "TAG_PATTERN", "CacheStrategy", "parse_tags"]

MAX_SECONDS = 31_536_000  # one year
MAX_TAGS = 5
TAG_PATTERN = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_FIELDS = frozenset({"ttl", "swr", "tags", "staleIfError"})


@dataclass(frozen=True, slots=True)
class CacheStrategy:
    """How long an answer may be served: fresh for ``ttl`` s, stale-while-revalidate for
    ``swr`` s more, and on origin failure stale for ``stale_if_error`` s beyond that."""

    ttl: int = 0
    swr: int = 0
    tags: tuple[str, ...] = field(default=())
    stale_if_error: int = 0

    def __post_init__(self) -> None:
        for name, value in (
            ("ttl", self.ttl),
            ("swr", self.swr),
            ("staleIfError", self.stale_if_error),
        ):
            _check_seconds(f"cacheStrategy.{name}", value)
        # Canonical form: tags are a set, so order and duplicates must not change the key.
        object.__setattr__(
            self,
            "tags",
            tuple(sorted(set(parse_tags(list(self.tags), "cacheStrategy.tags", MAX_TAGS)))),
        )

    @property
    def cached(self) -> bool:
        return self.ttl > 0 or self.swr > 0

    @property
    def retention(self) -> int:
        """Seconds an entry is kept in the shared tier (the Redis expiry)."""
        return self.ttl + self.swr + self.stale_if_error

    @classmethod
    def from_wire(cls, raw: Any) -> CacheStrategy:
        """Parse the ``cacheStrategy`` object of a request; None means not cached."""
        if raw is None:
            return NO_CACHE
        if not isinstance(raw, dict):
            raise BadRequest(
                'cacheStrategy must be an object like {"ttl": 60}', field="cacheStrategy"
            )
        unknown = set(raw) - _FIELDS
        if unknown:
            name = sorted(map(str, unknown))[0]
            raise BadRequest(
                f"unknown field cacheStrategy.{name}: allowed are ttl, swr, tags, staleIfError",
                field=f"cacheStrategy.{name}",
            )
        tags = raw.get("tags", [])
        if not isinstance(tags, list):
            raise BadRequest(
                "cacheStrategy.tags must be an array of strings", field="cacheStrategy.tags"
            )
        args = (raw.get("ttl", 0), raw.get("swr", 0), tuple(tags), raw.get("staleIfError", 0))
        try:
            return _interned(*args)
        except TypeError:  # an unhashable value: let validation name the field
            return cls(*args)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ttl": self.ttl, "swr": self.swr}
        if self.tags:
            out["tags"] = list(self.tags)
        if self.stale_if_error:
            out["staleIfError"] = self.stale_if_error
        return out


def _check_seconds(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be a whole number of seconds, got {value!r}", field=name)
    if not 0 <= value <= MAX_SECONDS:
        raise BadRequest(
            f"{name} must be between 0 and {MAX_SECONDS} seconds, got {value}", field=name
        )


def parse_tags(tags: list[Any], name: str, limit: int) -> list[str]:
    """Check a tag list: at most ``limit`` tags, each ``[A-Za-z0-9_]{1,64}``."""
    if len(tags) > limit:
        raise BadRequest(f"{name}: at most {limit} tags, got {len(tags)}", field=name)
    for tag in tags:
        if not isinstance(tag, str) or not TAG_PATTERN.match(tag):
            shown = repr(tag)[:80]
            raise BadRequest(f"{name}: invalid tag {shown}: use 1-64 of A-Z a-z 0-9 _", field=name)
    return tags


@functools.lru_cache(maxsize=4096, typed=True)
def _interned(ttl: Any, swr: Any, tags: tuple[Any, ...], stale_if_error: Any) -> CacheStrategy:
    """Applications repeat a handful of strategies: validate each once. ``typed`` keeps
    ``True``/``1``/``1.0`` apart, so a cached valid ``1`` never admits an invalid ``True``."""
    return CacheStrategy(ttl, swr, tags, stale_if_error)


NO_CACHE = CacheStrategy()
