"""Structured logging: one JSON object per line, set up once by the CLI.

Our own events go through structlog. Libraries log through the standard ``logging``
module (asyncpg's pool when it cannot reconnect, aiohttp's server, asyncio's handler for
exceptions nobody retrieved), and warnings and uncaught exceptions are written by
Python itself; all of those are rendered by the same processors, so a traceback is a
field of one JSON line instead of many plain-text lines that log shippers split apart.
"""

from __future__ import annotations

import logging
import sys
import threading
from types import TracebackType
from typing import Any

import structlog

__all__ = ["configure_logging", "get_logger"]


def configure_logging(level: str = "info", fmt: str = "json", service: str = "cache-edge") -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )

    def add_service(_l: Any, _m: str, ev: structlog.typing.EventDict) -> structlog.typing.EventDict:
        return {"service": service, **ev}

    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    finish: list[structlog.typing.Processor] = [
        structlog.processors.EventRenamer("msg"),
        add_service,
        structlog.processors.format_exc_info,
        renderer,
    ]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.processors.add_log_level,
                stamp,
                structlog.stdlib.add_logger_name,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *finish],
        )
    )
    logging.basicConfig(handlers=[handler], level=level.upper(), force=True)
    logging.captureWarnings(True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            *finish,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    get_logger("cache_edge").critical("uncaught_exception", exc_info=(kind, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    get_logger("cache_edge").error(
        "uncaught_exception_in_thread",
        thread=args.thread.name if args.thread else None,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
