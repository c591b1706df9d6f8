"""A simulated GPU fleet that speaks the real exporters' formats, with a fault catalog.

Pure core: :class:`Fleet` (state + coupled step, time passed in) and the
renderers in :mod:`simulator.formats`.  Async shell: :class:`FleetServer`.
"""

from __future__ import annotations

from gpuslo.simulator.clock import ManualClock, SimClock
from gpuslo.simulator.endpoints import Endpoint, endpoints
from gpuslo.simulator.faults import CATALOG, FaultError, FaultKind, FaultSpec
from gpuslo.simulator.fleet import Fleet
from gpuslo.simulator.server import FileTarget, FleetServer, Target
from gpuslo.simulator.spec import FleetSpec, ServiceSpec, TrainingSpec, default_services

__all__ = [
    "CATALOG",
    "Endpoint",
    "FaultError",
    "FaultKind",
    "FaultSpec",
    "FileTarget",
    "Fleet",
    "FleetServer",
    "FleetSpec",
    "ManualClock",
    "ServiceSpec",
    "SimClock",
    "Target",
    "TrainingSpec",
    "default_services",
    "endpoints",
]
