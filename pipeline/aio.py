"""Small asyncio and clock helpers that every long-running part shares.

Every loop in gpuslo sleeps until its next tick *or* until asked to stop, so a
stop never waits a whole interval; one spelling of that lives here.  So does
:func:`retry_until`: a process that starts before its Kafka does keeps trying
(and says why it is not ready) instead of exiting, until it connects or is
asked to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from gpuslo.pipeline.errors import GpusloError

Clock = Callable[[], datetime]
T = TypeVar("T")


class StopRequested(Exception):
    """Raised by :func:`retry_until` when ``stop`` is set before the attempt succeeded.

    Unwinds a process that is still starting (Kafka not reached yet) the same way
    it unwinds one that runs: the command line exits 0 on it.
    """


def utc_now() -> datetime:
    """The wall clock, timezone-aware (the default :data:`Clock`)."""
    return datetime.now(UTC)


class StopEvent(asyncio.Event):
    """The stop event of a process, which remembers why and when it was first set.

    A process prints one line as it exits saying what stopped it and how long
    the drain took; every loop still just waits on it as on any event.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reason: str | None = None
        self.requested_at: float | None = None  # time.monotonic()

    def request(self, reason: str) -> None:
        """Set the event; the first caller's ``reason`` (``SIGTERM``, ``--duration``) is kept."""
        if not self.is_set():
            self.reason = reason
            self.requested_at = time.monotonic()
        self.set()

    def elapsed_s(self) -> float:
        """Seconds since the stop was requested (0 before)."""
        return 0.0 if self.requested_at is None else time.monotonic() - self.requested_at


def stop_line(stop: asyncio.Event, stopped: Sequence[str]) -> str:
    """The one line a process prints as it exits: why, how long the drain took, what stopped."""
    if isinstance(stop, StopEvent):
        why = stop.reason or "finished"
        return f"stopped ({why}) in {stop.elapsed_s():.1f}s: {'; '.join(stopped)}"
    return f"stopped: {'; '.join(stopped)}"


async def sleep_or_stop(stop: asyncio.Event, seconds: float | None) -> None:
    """Sleep ``seconds`` (``None``: until stopped), returning early once ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def run_until(stop: asyncio.Event, duration_s: float | None, *aws: Awaitable[object]) -> None:
    """Run ``aws`` concurrently until ``stop`` is set or ``duration_s`` passes."""

    async def timer() -> None:
        if duration_s is not None:
            await sleep_or_stop(stop, duration_s)
            if isinstance(stop, StopEvent):
                stop.request(f"--duration {duration_s:g}")
            else:
                stop.set()

    await asyncio.gather(timer(), *aws)


async def retry_until(
    stop: asyncio.Event,
    attempt: Callable[[], Awaitable[T]],
    *,
    on_retry: Callable[[GpusloError, float], object] | None = None,
    initial_s: float = 0.5,
    max_s: float = 10.0,
) -> T:
    """``await attempt()`` until it succeeds, retrying retriable :class:`GpusloError` s.

    An attempt in flight when ``stop`` is set is cancelled.  Waits ``initial_s``
    after the first failure, doubling up to ``max_s``;
    ``on_retry(error, wait_s)`` is told of each failure before the wait (to
    log it and mark readiness).  A non-retriable error is raised at once.

    Raises:
        StopRequested: ``stop`` was set before an attempt succeeded.
    """
    wait = initial_s
    while True:
        if stop.is_set():
            raise StopRequested
        try:
            return await _unless_stopped(stop, attempt)
        except GpusloError as exc:
            if not exc.retriable:
                raise
            if on_retry is not None:
                on_retry(exc, wait)
        await sleep_or_stop(stop, wait)
        wait = min(max_s, wait * 2)


async def _unless_stopped(stop: asyncio.Event, attempt: Callable[[], Awaitable[T]]) -> T:
    """``await attempt()``, cancelled if ``stop`` is set first (a Kafka client's start can
    take seconds: a Ctrl-C must not wait for it)."""
    task = asyncio.ensure_future(attempt())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if task.cancelled():
            raise StopRequested
    return task.result()


__all__ = [
    "Clock",
    "StopEvent",
    "StopRequested",
    "retry_until",
    "run_until",
    "sleep_or_stop",
    "stop_line",
    "utc_now",
]
