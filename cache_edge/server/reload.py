"""Config reload without a restart: on SIGHUP, and when a watched file changes.

A :class:`ConfigWatcher` re-reads the config with the real loader (same file,
same flags) on SIGHUP and whenever the config file, the node secret file or a
TLS file changes (polled every ``interval`` seconds by mtime, size and inode; no
inotify dependency, and it works on Kubernetes' symlink-swapped volumes). An
invalid file is refused with one error log line and the running settings stay.
A valid one goes through :func:`cache_edge.server.live_settings.merge_reloadable` into
:class:`LiveSettings`, which tells its subscribers (API keys, origin client,
pools, TLS contexts).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable

from cache_edge.server.config import ConfigError, Settings
from cache_edge.server.live_settings import merge_reloadable
from cache_edge.server.logs import get_logger
from cache_edge.server.tasks import stop_tasks

__all__ = ["ConfigWatcher", "LiveSettings"]

log = get_logger(__name__)

DEFAULT_INTERVAL = 2.0

Fingerprint = tuple[tuple[int, int, int] | None, ...]


class LiveSettings:
    """The settings a running server uses now; the reloadable parts change under it."""

    def __init__(self, settings: Settings) -> None:
        self.current = settings
        self._subscribers: list[Callable[[Settings], None]] = []
        self.reloads = 0  # successful reloads (for tests and logs)

    def subscribe(self, callback: Callable[[Settings], None]) -> None:
        self._subscribers.append(callback)

    def apply(self, loaded: Settings) -> list[str]:
        """Take the reloadable part of ``loaded``; return the changes that need a restart."""
        effective, restart = merge_reloadable(self.current, loaded)
        self.current = effective
        self.reloads += 1
        for callback in self._subscribers:
            try:
                callback(effective)
            except Exception:
                # One failing part (say an unreadable new certificate) must not keep
                # the others (a revoked key) from taking effect.
                log.exception("config_reload_subscriber_failed")
        return restart


def watched_files(settings: Settings) -> tuple[str, ...]:
    paths = [
        settings.source.path if settings.source else None,
        settings.node_secret_file,
        settings.origin.tls_cert,
        settings.origin.tls_key,
        settings.node.tls_cert,
        settings.node.tls_key,
    ]
    return tuple(dict.fromkeys(p for p in paths if p))


def _stat(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: a swapped ..data link changes the target's inode
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ConfigWatcher:
    def __init__(
        self,
        live: LiveSettings,
        *,
        interval: float = DEFAULT_INTERVAL,
        load: Callable[[], Settings] | None = None,
    ) -> None:
        source = live.current.source
        if load is None and source is None:
            raise ValueError("settings without a source cannot be reloaded")
        self._live = live
        self._interval = interval
        self._load: Callable[[], Settings] = load or source.load  # type: ignore[union-attr]
        self._task: asyncio.Task[None] | None = None
        self._hup = False
        self._lock = asyncio.Lock()
        self._fingerprint: Fingerprint = ()
        self._pending: asyncio.Task[bool] | None = None

    def _fingerprint_now(self) -> Fingerprint:
        return tuple(_stat(p) for p in watched_files(self._live.current))

    def start(self) -> None:
        self._fingerprint = self._fingerprint_now()
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            self._hup = True
        except (NotImplementedError, RuntimeError, ValueError):
            # Not the main thread (in-process test servers) or no SIGHUP (Windows).
            self._hup = False
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._hup:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await stop_tasks([self._task])

    def _on_sighup(self) -> None:
        # Keep a reference so the task is not collected; errors are logged inside reload().
        self._pending = asyncio.create_task(self.reload("sighup"))

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            if self._fingerprint_now() != self._fingerprint:
                await self.reload("file_changed")

    async def reload(self, reason: str) -> bool:
        """Load and apply the config now; False (old settings kept) if it is invalid."""
        async with self._lock:
            # Taken before reading: a write landing during the read changes it again.
            self._fingerprint = self._fingerprint_now()
            try:
                loaded = await asyncio.to_thread(self._load)
            except ConfigError as exc:
                # ConfigError messages never carry secrets or passwords (see config.py).
                log.error("config_reload_failed", reason=reason, error=str(exc))
                return False
            except Exception as exc:
                log.error("config_reload_failed", reason=reason, error=type(exc).__name__)
                return False
            # A newly named file (another secret file) changes the fingerprint's shape,
            # so the next poll reloads once more and watches it from then on.
            restart = self._live.apply(loaded)
            log.info("config_reloaded", reason=reason, restart_required=restart or None)
            if restart:
                log.warning("config_changes_need_restart", keys=restart)
            return True
