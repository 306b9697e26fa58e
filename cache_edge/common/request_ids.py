"""Request ids, one rule for node and origin: keep a sane incoming ``X-Request-Id``, else
make one.

A client's id travels node -> origin -> logs, so both services accept exactly the same
ids (letters, digits and ``._:-``, up to 128 characters: nothing a log line could be
forged with). Made ids are a random per-process prefix and a counter: unique without an
``os.urandom`` call on every request of the hit path.
"""

from __future__ import annotations

import itertools
import re
import uuid

__all__ = ["REQUEST_ID_HEADER", "request_id"]

REQUEST_ID_HEADER = "X-Request-Id"
_SANE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_PREFIX = uuid.uuid4().hex[:16]
_COUNTER = itertools.count(1)


def request_id(incoming: str | None) -> str:
    if incoming and _SANE.match(incoming):
        return incoming
    return f"{_PREFIX}{next(_COUNTER):016x}"
