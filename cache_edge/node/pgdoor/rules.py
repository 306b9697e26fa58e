"""Cache rules: strategies for PostgreSQL-door reads that carry no hint.

Per tenant, in the config (hot-reloaded with it): ``cache_all_reads`` and
``[[tenants.cache_rules]]`` matched by the tables a statement reads or by its normalized
text. The tables come from the origin, which reads them from the statement's plan (the
same plan reading that gives automatic invalidation its table tags). A node learns them
once per statement text, in the background: the first execution of a new text runs
uncached, later ones are cached by the rule that matches.

Never cached by a rule: statements whose result depends on more than table contents
(``now()``, ``random()``, session or volatile functions: only an explicit hint caches
them), statements that write (the read-only transaction refuses them once; the node
remembers), and anything inside a transaction.

When several rules match, the shortest ttl wins: the most careful promise.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cache_edge.common.strategy import CacheStrategy
from cache_edge.node.pgdoor.link import LinkDown, OriginLink
from cache_edge.server.config import TenantConfig, normalize_statement
from cache_edge.server.logs import get_logger

__all__ = ["Classification", "RuleBook"]

log = get_logger("cache_edge.node.pgdoor.rules")

_LEARNED_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Classification:
    tables: tuple[str, ...]
    volatile: bool  # depends on more than table contents
    writes: bool = False  # refused by the read-only transaction


class RuleBook:
    """One node process's rule matching and what it learned about statement texts."""

    def __init__(
        self, tenant: Callable[[str], TenantConfig | None], link: OriginLink, timeout: float
    ) -> None:
        self._tenant = tenant
        self._link = link
        self._timeout = timeout
        self._learned: OrderedDict[tuple[str, str], Classification] = OrderedDict()
        self._learning: dict[tuple[str, str], asyncio.Task[None]] = {}

    def has_rules(self, tenant_id: str) -> bool:
        tenant = self._tenant(tenant_id)
        return tenant is not None and (
            tenant.cache_all_reads is not None or bool(tenant.cache_rules)
        )

    def strategy(self, tenant_id: str, sql: str, parse: bytes, bind: bytes) -> CacheStrategy | None:
        """The rule strategy for this read, or None (not matched, or not learned yet: then
        it is learned in the background for next time)."""
        tenant = self._tenant(tenant_id)
        if tenant is None or (tenant.cache_all_reads is None and not tenant.cache_rules):
            return None
        known = self._learned.get((tenant_id, sql))
        if known is None:
            self._learn(tenant_id, sql, parse, bind)
            return None
        if known.volatile or known.writes:
            return None
        text = normalize_statement(sql)
        found = [
            r.strategy
            for r in tenant.cache_rules
            if (r.statement and r.statement == text)
            or (r.tables and any(t in r.tables for t in known.tables))
        ]
        if found:
            return min(found, key=lambda s: (s.ttl, s.swr))
        return tenant.cache_all_reads

    def writes(self, tenant_id: str, sql: str) -> None:
        """The read-only transaction refused it: never try a rule on this text again."""
        known = self._learned.get((tenant_id, sql))
        self._remember((tenant_id, sql), Classification(known.tables if known else (), True, True))

    def _remember(self, key: tuple[str, str], value: Classification) -> None:
        self._learned[key] = value
        self._learned.move_to_end(key)
        while len(self._learned) > _LEARNED_MAX:
            self._learned.popitem(last=False)

    def _learn(self, tenant_id: str, sql: str, parse: bytes, bind: bytes) -> None:
        key = (tenant_id, sql)
        if key in self._learning:
            return
        task = asyncio.create_task(self._ask(key, parse, bind))
        self._learning[key] = task
        task.add_done_callback(lambda _t: self._learning.pop(key, None))

    async def _ask(self, key: tuple[str, str], parse: bytes, bind: bytes) -> None:
        payload = {
            "classify": True,
            "tenant": key[0],
            "sql": key[1],
            "parse": parse,
            "bind": bind,
            "settings": {},
        }
        try:
            answer = await self._link.read(payload, self._timeout)
        except (LinkDown, TimeoutError) as exc:
            log.info("cache_rule_learning_failed", tenant=key[0], error=str(exc))
            return
        if isinstance(answer, dict) and "tables" in answer:
            tables = tuple(str(t) for t in answer["tables"])
            self._remember(key, Classification(tables, bool(answer.get("volatile"))))

    async def close(self) -> None:
        for task in list(self._learning.values()):
            task.cancel()
