"""Cache hints carried in SQL comments, and the session-level ``cache_edge.*`` settings.

Two comment forms, at the start or the end of a statement:

- sqlcommenter (OpenTelemetry; what Prisma 7 ``comments:`` plugins, Django, SQLAlchemy,
  Rails, Knex and Drizzle emit): ``/*cache_ttl='60',cache_swr='30',cache_tags='a%2Cb'*/``.
  Values are URL-encoded and single-quoted; keys other than ``cache_*`` (``traceparent``,
  ``route``...) are ignored.
- a short form for people typing in psql: ``/* cache ttl=60 swr=30 tags=a,b */``.

:func:`read_hints` returns the statement text without the comment (what the cache key is
built from: two statements that differ only in their hints share an entry) and the text
to run (the comment minus its ``cache_*`` keys, so tracing comments still reach the
database), with the hinted strategy fields. A malformed hint is reported, never ignored:
the door answers it with a WARNING notice and runs the statement uncached.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from urllib.parse import unquote

from cache_edge.common.errors import BadRequest
from cache_edge.common.strategy import CacheStrategy

__all__ = [
    "HINT_KEYS",
    "HintError",
    "Hinted",
    "SessionHints",
    "read_hints",
    "strategy_from",
]

# name in hints and SET -> CacheStrategy field
HINT_KEYS = {"ttl": "ttl", "swr": "swr", "tags": "tags", "stale_if_error": "stale_if_error"}

_LEADING = re.compile(r"\A\s*/\*(?P<body>.*?)\*/", re.DOTALL)
_TRAILING = re.compile(r"/\*(?P<body>(?:(?!/\*).)*?)\*/\s*;?\s*\Z", re.DOTALL)
_COMMENTER_PAIR = re.compile(r"\s*([A-Za-z0-9_.\-]+)\s*=\s*'([^']*)'\s*")
_SHORT = re.compile(r"\A\s*cache\s+(?P<rest>.*?)\s*\Z", re.DOTALL | re.IGNORECASE)


class HintError(ValueError):
    """A malformed hint; the message names the problem (sent as a WARNING notice)."""


@dataclass(frozen=True, slots=True)
class Hinted:
    key_sql: str  # the statement without its hint comment: what the cache key is built from
    run_sql: str  # what the database runs (tracing comments kept, cache keys removed)
    # hinted strategy fields, raw (read_hints answers are shared: never mutate them)
    fields: dict[str, str] = field(default_factory=dict)
    error: str = ""  # a malformed hint (the statement then runs uncached)


def _commenter(body: str) -> tuple[dict[str, str], list[str]] | None:
    """The pairs of a sqlcommenter comment (None: not one); cache keys and the others."""
    pairs: dict[str, str] = {}
    others: list[str] = []
    text = body.strip()
    if not text:
        return None
    for part in _split_commas(text):
        match = _COMMENTER_PAIR.fullmatch(part)
        if match is None:
            return None
        key, value = match.group(1), match.group(2)
        if key.startswith("cache_"):
            pairs[key[len("cache_") :]] = unquote(value)
        else:
            others.append(part.strip())
    return pairs, others


def _split_commas(text: str) -> list[str]:
    """Split on commas outside single quotes (sqlcommenter escapes commas in values)."""
    parts: list[str] = []
    current = ""
    quoted = False
    for ch in text:
        if ch == "'":
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def _short(body: str) -> dict[str, str] | None:
    match = _SHORT.match(body)
    if match is None:
        return None
    out: dict[str, str] = {}
    for word in match.group("rest").split():
        name, sep, value = word.partition("=")
        if not sep:
            raise HintError(f"cache hint: expected name=value, got {word!r}")
        out[name.lower().replace("-", "_")] = value
    return out


@functools.lru_cache(maxsize=4096)
def read_hints(sql: str) -> Hinted:
    """Find a hint comment at the start or the end of ``sql`` (see the module docstring)."""
    for pattern in (_LEADING, _TRAILING):
        match = pattern.search(sql)
        if match is None:
            continue
        body = match.group("body")
        before, after = sql[: match.start()], sql[match.end() :]
        # The database runs the text with the hint blanked out, not cut out: the positions
        # in its error messages (P) then point into the text the client sent.
        start, end = match.start("body") - 2, match.end("body") + 2
        try:
            short = _short(body)
        except HintError as exc:
            return Hinted(sql, sql, error=str(exc))
        if short is not None:
            key = (before + after).strip()
            return _checked(Hinted(key, sql[:start] + " " * (end - start) + sql[end:], short))
        parsed = _commenter(body)
        if parsed is None:
            continue
        pairs, others = parsed
        key = (before + after).strip()
        if not pairs:
            # A tracing comment alone: not part of the key (it changes every request).
            return Hinted(key, sql)
        kept = f"/*{','.join(others)}*/" if others else ""
        run = sql[:start] + kept.ljust(end - start) + sql[end:]
        return _checked(Hinted(key, run, pairs))
    return Hinted(sql, sql)


def _checked(hinted: Hinted) -> Hinted:
    try:
        strategy_from(hinted.fields)
    except HintError as exc:
        return Hinted(hinted.key_sql, hinted.run_sql, error=str(exc))
    return hinted


def strategy_from(fields: dict[str, str], base: dict[str, str] | None = None) -> CacheStrategy:
    """A strategy from hint or session fields (hint fields override session ones)."""
    merged = {**(base or {}), **fields}
    return _strategy(tuple(sorted(merged.items())))


@functools.lru_cache(maxsize=4096)
def _strategy(items: tuple[tuple[str, str], ...]) -> CacheStrategy:
    # Hits re-read the same few hints all day: parse and validate each combination once
    # (about a fifth of a door hit's CPU before). Errors are not cached; they are rare.
    merged = dict(items)
    unknown = sorted(set(merged) - set(HINT_KEYS))
    if unknown:
        raise HintError(
            f"cache hint: unknown key {unknown[0]!r} (use ttl, swr, tags, stale_if_error)"
        )
    values: dict[str, object] = {}
    for name, raw in merged.items():
        if name == "tags":
            values["tags"] = tuple(t.strip() for t in raw.split(",") if t.strip())
            continue
        try:
            values[HINT_KEYS[name]] = int(raw)
        except ValueError:
            raise HintError(
                f"cache hint: {name} must be a whole number of seconds, got {raw!r}"
            ) from None
    try:
        return CacheStrategy(**values)  # type: ignore[arg-type]
    except BadRequest as exc:
        raise HintError(f"cache hint: {exc.message}") from None


@dataclass(slots=True)
class SessionHints:
    """``SET cache_edge.ttl = 60`` and friends: one client session's default strategy."""

    fields: dict[str, str] = field(default_factory=dict)

    def set(self, name: str, value: str) -> None:
        if name not in HINT_KEYS:
            raise HintError(
                f'unrecognized configuration parameter "cache_edge.{name}" '
                "(cache_edge.ttl, swr, tags, stale_if_error, last_status)"
            )
        trial = {**self.fields, name: value}
        strategy_from(trial)  # refuse an invalid value now, as PostgreSQL refuses a bad SET
        self.fields = trial

    def reset(self, name: str | None) -> None:
        if name is None:
            self.fields.clear()
        else:
            self.fields.pop(name, None)
