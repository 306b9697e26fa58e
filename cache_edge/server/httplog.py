"""Keep clients from writing tracebacks into our logs through aiohttp's server logger.

aiohttp logs every malformed HTTP request (a bad header character, a broken
request line) as "Error handling request" at ERROR level with a full traceback,
in plain text. That is the client's fault, not ours: any client could flood the
log with it and bury real errors. :func:`quiet_client_errors` turns those into
one debug line without traceback (dropped unless debug logging is on); errors
of our own (5xx) are left as they are.
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["quiet_client_errors"]

_SERVER_LOGGER = "aiohttp.server"


class _ClientErrorFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError) or (exc.code or 400) >= 500:
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg, record.args = "malformed_http_request: %s", (type(exc).__name__,)
        record.exc_info, record.exc_text = None, None
        return True


def quiet_client_errors() -> None:
    """Install the filter once (idempotent)."""
    logger = logging.getLogger(_SERVER_LOGGER)
    if not any(isinstance(f, _ClientErrorFilter) for f in logger.filters):
        logger.addFilter(_ClientErrorFilter())
