"""Waiting for a condition instead of sleeping a guess: a busy machine only makes it slower."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable

Check = Callable[..., object]
"""Returns a truth value, or an awaitable of one."""

POLL = 0.05
"""Seconds between two looks: often enough that no test waits noticeably longer than needed."""


async def until(check: Check, timeout: float = 10, what: str = "condition") -> None:
    """Returns once `check()` (plain or async) is true; fails the test after `timeout` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert loop.time() < deadline, f"{what} not reached within {timeout} s"
        await asyncio.sleep(POLL)
