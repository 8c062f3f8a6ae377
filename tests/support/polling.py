"""Waiting for what a server does in its own time, without a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """
    Return once `condition()` holds; fail after `timeout` seconds. A slow machine only
    makes the wait longer, where a fixed sleep would make the test fail.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def just_after_a_second_turns() -> None:
    """
    Wait until the wall clock's second has just turned. What a test does next then shares
    one second for nearly all of it: answers dated by the second (`Date`, the TTL header
    of a token taken now, the fast path's kept answers) do not change under it.
    """
    await asyncio.sleep(1.02 - time.time() % 1)
