"""A live line per scenario while the suite runs: rich on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

__all__ = ["Progress"]

_ICONS = {"pending": "·", "running": "▶", "ok": "✔", "skipped": "-", "failed": "✘"}


@dataclass
class _Row:
    name: str
    title: str
    state: str = "pending"
    detail: str = ""
    started: float = 0.0
    seconds: float = 0.0


class Progress:
    def __init__(self, scenarios: list[tuple[str, str]], live: bool | None = None) -> None:
        self._rows = {name: _Row(name, title) for name, title in scenarios}
        self._current: _Row | None = None
        self._live: Any = None
        use_rich = sys.stdout.isatty() if live is None else live
        if use_rich:
            try:
                from rich.live import Live

                self._live = Live(
                    get_renderable=self._render, refresh_per_second=4, transient=False
                )
            except ImportError:
                self._live = None

    def __enter__(self) -> Progress:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)

    def _print(self, text: str) -> None:
        if self._live is None:
            print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)

    def begin(self, name: str) -> None:
        row = self._rows[name]
        row.state, row.started, row.detail = "running", time.monotonic(), "starting"
        self._current = row
        self._print(f"[{name}] {row.title}")

    def step(self, text: str) -> None:
        if self._current is None:
            self._print(text)
            return
        self._current.detail = text
        self._print(f"[{self._current.name}]   {text}")

    def end(self, name: str, state: str, headline: str) -> None:
        row = self._rows[name]
        row.state, row.detail = state, headline
        row.seconds = time.monotonic() - row.started
        self._current = None
        self._print(f"[{name}] {_ICONS[state]} {state} in {row.seconds:.0f}s: {headline}")

    def _render(self) -> Any:
        from rich.table import Table

        table = Table(box=None, show_header=False, pad_edge=False)
        table.add_column(width=2)
        table.add_column(style="bold", width=9)
        table.add_column(justify="right", width=5)
        table.add_column(overflow="ellipsis", no_wrap=True)
        colors = {"ok": "green", "failed": "red", "skipped": "yellow", "running": "cyan"}
        for row in self._rows.values():
            seconds = time.monotonic() - row.started if row.state == "running" else row.seconds
            elapsed = f"{seconds:.0f}s" if row.state != "pending" else ""
            color = colors.get(row.state, "dim")
            detail = row.detail if row.state != "pending" else row.title
            table.add_row(
                f"[{color}]{_ICONS[row.state]}[/]", row.name, elapsed, f"[{color}]{detail}[/]"
            )
        return table
