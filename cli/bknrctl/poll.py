"""The one way bknrctl waits for a condition: ask, and ask again until a deadline.

``poll`` (threads) and ``apoll`` (asyncio) call ``check`` at once and then every ``interval``
seconds until it returns something other than None, and return that; when ``timeout`` seconds
have passed they return None and the caller raises the error that names what did not happen.
``check`` runs at least once, and never after the deadline: a caller's last look is the one its
error reports. Exceptions from ``check`` propagate (a check that tolerates some catches them).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def poll(check: Callable[[], T | None], timeout: float, interval: float = 0.05) -> T | None:
    """``check()``'s first non-None answer, or None once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


async def apoll(check: Callable[[], Awaitable[T | None]], timeout: float,
                interval: float = 0.05) -> T | None:
    """``poll`` for a coroutine ``check`` inside an event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(interval)
