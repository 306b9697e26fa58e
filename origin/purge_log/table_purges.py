"""Turning captured commits into purges: the sink behind automatic invalidation.

Every table a committed transaction wrote becomes the implicit tag ``table:<schema>.<name>``
that cached results reading it carry; a batch of commits becomes one purge in the tenant's
ordinary purge log, so it reaches every region, durably and in order, exactly like a
manual one. Schema changes of a table purge that table; schema changes whose reach cannot
be traced (views, functions, policies, types...) purge everything of the tenant.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from cache_edge.common.protocol import ANY_TABLE_TAG, table_tag
from cache_edge.server.logs import get_logger
from origin.capture.reader import Transaction
from origin.purge_log.log import InvalidationLog

__all__ = ["TablePurges", "table_tag"]

log = get_logger("origin.purge_log.table_purges")


class TablePurges:
    def __init__(
        self,
        tenant: str,
        purge_log: InvalidationLog,
        forget_dependencies: Callable[[str], None],
        observe_lag: Callable[[float], None] | None = None,
    ) -> None:
        self._tenant = tenant
        self._log = purge_log
        self._forget = forget_dependencies
        self._observe_lag = observe_lag
        self.purges = 0

    async def apply(self, batch: Sequence[Transaction]) -> None:
        tags: set[str] = set()
        purge_all = False
        schema_changed = False
        for txn in batch:
            tags.update(table_tag(t) for t in txn.tables)
            for event in txn.ddl:
                schema_changed = True
                if event.kind == "table" and event.schema and event.name:
                    tags.add(table_tag(f"{event.schema}.{event.name}"))
                else:
                    purge_all = True
        if schema_changed:
            self._forget(self._tenant)  # plans (and so dependencies) may have changed
        if not tags and not purge_all:
            return
        if tags:
            tags.add(ANY_TABLE_TAG)  # results whose tables could not be determined
        inv = await self._log.record(sorted(tags), purge_all)
        self.purges += 1
        if self._observe_lag is not None:
            now = time.time()
            for txn in batch:
                self._observe_lag(max(0.0, now - txn.commit_time.timestamp()))
        log.info(
            "table_purge_recorded",
            tenant=self._tenant,
            seq=inv.seq,
            tables=len(tags),
            purge_all=purge_all,
            transactions=len(batch),
        )

    async def partial(self, txn: Transaction) -> None:
        pass  # tables are purged once the whole transaction has been read

    async def started(self, confirmed_lsn: int) -> None:
        pass  # purges need no starting point: the slot holds everything not yet confirmed

    async def reset(self, reason: str) -> None:
        self._forget(self._tenant)
        inv = await self._log.record([], True)
        log.warning("table_purge_all", tenant=self._tenant, seq=inv.seq, reason=reason)
