"""Sample frames of a small simulated fleet in which one GPU overheats (RCA tests).

3 nodes x 4 GPUs serving one model on vLLM; after a 5-minute warm-up, scraped
every 30 s (DCGM, node_exporter, vLLM pages parsed as the collectors would)
for ``minutes``, the first replica's GPU throttling from ``fault_min`` on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import polars as pl

from gpuslo.collectors.exposition import parse_exposition
from gpuslo.simulator import Fleet, FleetSpec, ServiceSpec
from gpuslo.simulator.endpoints import endpoints
from gpuslo.simulator.faults import FaultSpec

SOURCES = frozenset({"dcgm", "node_exporter", "vllm"})


@dataclass(frozen=True)
class Incident:
    batches: list[tuple[str, pl.DataFrame]]  # (node, one scrape's frame), in time order
    hot_uuid: str
    hot_node: str

    @property
    def samples(self) -> pl.DataFrame:
        return pl.concat([f for _, f in self.batches])


def hot_gpu_incident(end: datetime, *, minutes: int = 26, fault_min: int = 16,
                     seed: int = 5) -> Incident:
    """Scrapes ending at ``end``; the hot GPU's UUID and node."""
    fleet = Fleet(FleetSpec(nodes=3, gpus_per_node=4, seed=seed,
                            start_s=end.timestamp() - minutes * 60 - 300,
                            services=(ServiceSpec("llama", "vllm", replicas=2, tp=1,
                                                  base_rps=8.0),)))
    fleet.advance(fleet.t + 300)
    hot = fleet.replicas[0].gpus[0]
    fleet.inject(FaultSpec("thermal_throttle", f"{hot.node}/gpu{hot.index}",
                           fleet.t + fault_min * 60, 1800.0, 1.0))
    batches = []
    for _ in range(minutes * 2):
        fleet.advance(fleet.t + 30)
        ts = int(fleet.t * 1000)
        for ep in endpoints(fleet):
            if ep.kind not in SOURCES:
                continue
            body = ep.render(fleet, ts)
            if body is not None:
                batches.append((ep.node, parse_exposition(body, node=ep.node, source=ep.source,
                                                          scrape_ts_ms=ts)))
    return Incident(batches, hot.uuid, hot.node)
