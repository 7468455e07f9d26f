"""Clock-aligned polling: a 60 s meter is read at :00 of every minute, a 15 min meter at :00, :15, :30, :45."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable


def next_tick(now: float, interval: float) -> float:
    """The first multiple of ``interval`` (since the epoch) strictly after ``now``."""
    return (math.floor(now / interval + 1e-9) + 1) * interval


async def sleep_until(
    target: float, stop: asyncio.Event, clock: Callable[[], float] = time.time, max_step: float = 5.0,
    horizon: float | None = None,
) -> bool:
    """Sleep until the wall clock reaches ``target``; False if ``stop`` was set first.

    Sleeps in steps of at most ``max_step`` seconds and looks at the wall clock again after each, so that a clock
    that is stepped (NTP sync) is followed instead of sleeping on a stale plan. Forward, the target is simply
    reached; backward, a target more than ``horizon`` seconds away (one interval) can only be the plan of a clock
    that went back: it returns at once so the caller plans again, instead of waiting out the step.
    """
    while not stop.is_set():
        remaining = target - clock()
        if remaining <= 0 or (horizon is not None and remaining > horizon + 0.5):
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(remaining, max_step)):  # no task of its own: every meter, every tick
                await stop.wait()
    return False
