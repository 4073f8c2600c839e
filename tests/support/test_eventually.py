"""The shared polling helper: what it returns, what it retries, when it gives up."""

from __future__ import annotations

import time

import pytest

from tests.support.eventually import eventually, eventually_sync


def counter(truthy_from: int, value: object = "done"):  # type: ignore[no-untyped-def]
    calls = {"n": 0}

    def check() -> object:
        calls["n"] += 1
        return value if calls["n"] >= truthy_from else None

    return check, calls


async def test_returns_the_first_truthy_value_of_a_plain_or_async_check() -> None:
    check, calls = counter(3, {"ok": 1})
    assert await eventually(check, interval_s=0.001) == {"ok": 1}
    assert calls["n"] == 3

    async def later() -> int:
        return 7

    assert await eventually(later) == 7


async def test_ignored_exceptions_are_retried_others_end_the_wait_at_once() -> None:
    seen = []

    def flaky() -> bool:
        seen.append(1)
        if len(seen) < 3:
            raise KeyError("not yet")
        return True

    assert await eventually(flaky, interval_s=0.001, ignoring=(KeyError,)) is True
    started = time.monotonic()
    with pytest.raises(ValueError):
        await eventually(lambda: int("x"), timeout_s=5)
    assert time.monotonic() - started < 1


async def test_gives_up_naming_the_condition_and_what_it_last_saw() -> None:
    with pytest.raises(AssertionError, match=r"queue empty: not met within 0.05s \(last returned 0\)"):
        await eventually(lambda: 0, timeout_s=0.05, interval_s=0.01, what="queue empty")

    def missing() -> object:
        return {}["k"]

    with pytest.raises(AssertionError, match=r"missing: .*last raised KeyError") as info:
        await eventually(missing, timeout_s=0.05, interval_s=0.01, ignoring=(KeyError,))
    assert isinstance(info.value.__cause__, KeyError)


def test_the_blocking_flavour_polls_the_same_way() -> None:
    check, calls = counter(2)
    assert eventually_sync(check, interval_s=0.001) == "done"
    assert calls["n"] == 2
    with pytest.raises(AssertionError, match="not met within"):
        eventually_sync(lambda: False, timeout_s=0.03, interval_s=0.01)
