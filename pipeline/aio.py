"""Small asyncio and clock helpers that every long-running part shares.

Every loop in gpuslo sleeps until its next tick *or* until asked to stop, so a
stop never waits a whole interval; one spelling of that lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The wall clock, timezone-aware (the default :data:`Clock`)."""
    return datetime.now(UTC)


async def sleep_or_stop(stop: asyncio.Event, seconds: float | None) -> None:
    """Sleep ``seconds`` (``None``: until stopped), returning early once ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def run_until(stop: asyncio.Event, duration_s: float | None, *aws: Awaitable[object]) -> None:
    """Run ``aws`` concurrently until ``stop`` is set or ``duration_s`` passes."""

    async def timer() -> None:
        if duration_s is not None:
            await sleep_or_stop(stop, duration_s)
            stop.set()

    await asyncio.gather(timer(), *aws)


__all__ = ["Clock", "run_until", "sleep_or_stop", "utc_now"]
