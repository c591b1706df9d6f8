"""Hand each new SLO evaluation to the exporters (Prometheus, OTLP, Alertmanager).

Shared by every process that runs stage 2 (`gpuslo demo`, `gpuslo aggregate`), so
they publish the same snapshot the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from gpuslo.exporters.base import ExportHub, HealthSnapshot, Snapshot
from gpuslo.pipeline.stages import ReportBoard
from gpuslo.slo.spec import SloSpec


async def publish_board(
    board: ReportBoard,
    hub: ExportHub,
    specs: Sequence[SloSpec],
    stop: asyncio.Event,
    health: Callable[[], HealthSnapshot] = HealthSnapshot,
) -> None:
    """Publish every new board version until ``stop``.

    ``taken_at`` is the wall clock even when the engine runs on a simulated one:
    Alertmanager judges ``endsAt`` against its own clock.
    """
    version = 0
    while not stop.is_set():
        snap = await board.wait(version, timeout_s=0.5)
        if snap.version == version:
            continue
        version = snap.version
        await hub.publish(
            Snapshot.build(
                reports=snap.reports,
                alerts=snap.alerts,
                health=health(),
                taken_at=datetime.now(UTC),
                specs=specs,
            )
        )
