"""Is this process ready for traffic?  Named checks that the parts of a process mark.

Kubernetes asks two questions of a pod: is it alive (``/healthz``: the event
loop answers, nothing more, so a slow Kafka never gets a healthy process
restarted), and is it ready (``/readyz``: every part did what it needs before
its output means anything: Kafka reached, targets discovered, checkpoints
restored).  The second is this object: each part registers a check as pending
when the process is put together and marks it ok (or not, with the reason)
as it gets there.  It is pure, so stages at any layer can hold it, and the
HTTP handlers that serve it (``pipeline/app/wiring.py``) only read it.

A check can go back to not ok (Kafka lost, draining after SIGTERM): readiness
is the current state, not a latch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Check:
    """One named condition: ``ok`` with a human-readable ``reason``, since ``changed_at``."""

    ok: bool
    reason: str
    changed_at: float  # wall-clock seconds (time.time()) of the last change of ``ok``


class Readiness:
    """Named checks; ready when every registered check is ok.

    ``clock`` gives the wall-clock seconds written as ``changed_at`` (tests pass
    their own).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._checks: dict[str, Check] = {}

    def expect(self, name: str, reason: str) -> None:
        """Register ``name`` as pending (not ok, ``reason`` says what it waits for).

        Register every check when the process is put together, before anything
        starts: a check nobody registered cannot hold readiness back.
        """
        self.mark(name, False, reason)

    def mark(self, name: str, ok: bool, reason: str = "") -> None:
        """Set ``name`` ok or not, with why; registers it when new."""
        old = self._checks.get(name)
        changed = self._clock() if old is None or old.ok != ok else old.changed_at
        self._checks[name] = Check(ok, reason, changed)

    def ok(self, name: str, reason: str = "") -> None:
        """Shorthand for ``mark(name, True, reason)``."""
        self.mark(name, True, reason)

    def fail(self, name: str, reason: str) -> None:
        """Shorthand for ``mark(name, False, reason)``."""
        self.mark(name, False, reason)

    @property
    def ready(self) -> bool:
        """Every registered check is ok (true with none registered)."""
        return all(c.ok for c in self._checks.values())

    def check(self, name: str) -> Check | None:
        """The check ``name`` (None when not registered)."""
        return self._checks.get(name)

    def checks(self) -> dict[str, Check]:
        """A copy of the checks by name, in registration order."""
        return dict(self._checks)

    def pending(self) -> list[str]:
        """Names of the checks that are not ok."""
        return [n for n, c in self._checks.items() if not c.ok]

    def to_json(self) -> dict[str, Any]:
        """What ``/readyz`` answers: ``{"ready": bool, "checks": {name: {...}}}``."""
        return {
            "ready": self.ready,
            "checks": {
                n: {"ok": c.ok, "reason": c.reason, "changed_at": c.changed_at}
                for n, c in self._checks.items()
            },
        }


# The checks gpuslo's parts register; a stage runner's check is named after its stage
# (``stage1``, ``stage2``).
READY_LIFECYCLE = "lifecycle"  # not ok once the process is stopping
READY_KAFKA = "kafka"  # the process's Kafka clients are connected
READY_TARGETS = "targets"  # collect: every collector has listed its targets once

__all__ = ["READY_KAFKA", "READY_LIFECYCLE", "READY_TARGETS", "Check", "Readiness"]
