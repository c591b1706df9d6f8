"""node_exporter's ``/metrics`` restricted to the collectors the fleet simulates.

Families are sorted by name, as client_golang's registry gathers them.
"""

from __future__ import annotations

from gpuslo.simulator.fleet import Fleet
from gpuslo.simulator.formats.disk import disk_families
from gpuslo.simulator.formats.exposition import render
from gpuslo.simulator.formats.rdma import infiniband_families


def render_node_exporter(fleet: Fleet, node: str, ts_ms: int | None = None) -> str:
    """``node_infiniband_*`` and ``node_disk_*`` for ``node``."""
    fams = infiniband_families(fleet, node) + disk_families(fleet, node)
    return render(sorted(fams, key=lambda f: f.name), ts_ms)
