"""Simulated time: a fixed origin plus real elapsed time times a speed factor.

The model never reads a clock; the server asks this object for "now" and hands
the answer in.  The real clock is injectable so tests can move time by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class SimClock:
    """``now() = start_s + (real() - real_at_start) * speed``, in simulated epoch seconds."""

    def __init__(
        self,
        start_s: float,
        speed: float = 1.0,
        real: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.start_s = start_s
        self.speed = speed
        self._real = real
        self._real0 = real()

    def now(self) -> float:
        """The current simulated time in epoch seconds."""
        return self.start_s + (self._real() - self._real0) * self.speed


class ManualClock:
    """A clock that moves only when told to: for tests and for replay."""

    def __init__(self, start_s: float) -> None:
        self.t = start_s

    def now(self) -> float:
        """The current simulated time."""
        return self.t

    def advance(self, seconds: float) -> float:
        """Move forward and return the new time."""
        self.t += seconds
        return self.t
