"""Polling until a condition holds: the one helper for what a test must wait for.

`await eventually(check)` calls `check()` (a plain function, or one returning an awaitable:
an `async def`) until it returns something truthy, and returns that value. An exception of
a type in `ignoring` counts as "not yet"; any other exception ends the wait at once (so a
check can fail fast, e.g. on a task that died). When `timeout_s` runs out it fails with an
AssertionError naming the condition and the last value or exception it saw.
`eventually_sync` is the same for code without an event loop (blocking sleeps).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["eventually", "eventually_sync"]


def _give_up(what: str | None, check: Callable[..., Any], timeout_s: float, last: Any,
             error: BaseException | None) -> AssertionError:
    name = what or getattr(check, "__name__", repr(check))
    seen = f"last raised {error!r}" if error is not None else f"last returned {last!r}"
    return AssertionError(f"{name}: not met within {timeout_s}s ({seen})")


async def eventually(check: Callable[[], T | Awaitable[T]], timeout_s: float = 10.0, *,
                     interval_s: float = 0.05, ignoring: tuple[type[BaseException], ...] = (),
                     what: str | None = None) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        last: Any = None
        error: BaseException | None = None
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            last = result
        except ignoring as exc:
            error = exc
        if time.monotonic() >= deadline:
            raise _give_up(what, check, timeout_s, last, error) from error
        await asyncio.sleep(interval_s)


def eventually_sync(check: Callable[[], T], timeout_s: float = 10.0, *, interval_s: float = 0.05,
                    ignoring: tuple[type[BaseException], ...] = (), what: str | None = None) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        last: Any = None
        error: BaseException | None = None
        try:
            result = check()
            if result:
                return result
            last = result
        except ignoring as exc:
            error = exc
        if time.monotonic() >= deadline:
            raise _give_up(what, check, timeout_s, last, error) from error
        time.sleep(interval_s)
