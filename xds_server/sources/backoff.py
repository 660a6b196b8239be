"""How long to wait before asking the API server again: exponential with full jitter.

Every way a request can end too soon counts, not only errors: a watch the server ends at once
(a proxy with a short idle timeout, an overloaded API server), a `410 Gone` on every watch,
a `429`. Without that, a misbehaving API is asked in a hot loop by every replica at once.
An attempt that stayed healthy for `HEALTHY_AFTER` seconds starts the count again.
"""

from __future__ import annotations

import email.utils
import random
import time
from typing import Any

FIRST, MAXIMUM = 0.2, 30.0
"""The first wait (before jitter) and the longest (client-go's reflector: 0.8 s to 30 s)."""
HEALTHY_AFTER = 10.0
"""Seconds an attempt must last before the next starts with no wait."""
RETRY_AFTER_MAX = 300.0
"""The longest Retry-After honoured: a server asking for an hour is asked again in 5 min."""


class Backoff:
    def __init__(self, first: float = FIRST, maximum: float = MAXIMUM) -> None:
        self.first, self.maximum = first, maximum
        self.attempts = 0
        """Attempts in a row that ended too soon or failed."""

    def after(self, lasted: float, failed: bool = False, retry_after: float | None = None) -> float:
        """Seconds to wait after an attempt that lasted `lasted` s (0: go on at once)."""
        if not failed and lasted >= HEALTHY_AFTER:
            self.attempts = 0
            return 0.0
        self.attempts += 1
        delay = random.uniform(0, min(self.maximum, self.first * 2**self.attempts))
        if retry_after is not None:
            delay = max(delay, min(retry_after, RETRY_AFTER_MAX))
        return delay


def retry_after(exc: BaseException) -> float | None:
    """The seconds a 429/503's Retry-After header asks for (delta-seconds or an HTTP date)."""
    headers: Any = getattr(exc, "headers", None)
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
