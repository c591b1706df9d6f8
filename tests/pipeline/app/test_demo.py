"""`run_demo` in-process: faults injected up front and over HTTP reach the view.

The fleet panel's signals are folded from the *consumed* samples, so a symptom
seen there has gone fleet → collector → broker → consumer.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import polars as pl
import pytest
from rich.console import Console

from gpuslo.collectors.exposition import parse_text
from gpuslo.pipeline.app.demo import DemoSettings, run_demo
from gpuslo.pipeline.app.views.fleet import FleetSignals
from gpuslo.simulator import Fleet, FleetSpec
from gpuslo.simulator.endpoints import endpoints
from gpuslo.simulator.faults import FaultError, FaultSpec
from gpuslo.simulator.scenario import read_ground_truth

pytestmark = pytest.mark.integration


def scrape(fleet: Fleet, kinds: Sequence[str]) -> pl.DataFrame:
    frames = [parse_text(body, node=ep.node, source=ep.source,
                         scrape_ts_ms=int(fleet.t * 1000))
              for ep in endpoints(fleet) if ep.kind in kinds
              for body in [ep.render(fleet, int(fleet.t * 1000))] if body is not None]
    return pl.concat(frames)


def test_fleet_signals_follow_the_samples() -> None:
    fleet = Fleet(FleetSpec(nodes=2, gpus_per_node=4, ib_ports=2, training=None))
    fleet.advance(fleet.t + 300)
    signals = FleetSignals()
    signals.add(scrape(fleet, ("dcgm", "node_exporter", "vllm")))
    calm = signals.nodes["node-0"]
    assert (calm.gpus, calm.lost, calm.xid, calm.ports_down) == (4, [], {}, 0)
    assert calm.temp_max is not None and calm.temp_max < 80
    fleet.inject(FaultSpec("xid_79", "node-0/gpu1", fleet.t, 600))
    fleet.inject(FaultSpec("xid_94", "node-0/gpu2", fleet.t, 600))
    fleet.inject(FaultSpec("ib_link_flap", "node-1/mlx5_0", fleet.t, 600))
    fleet.advance(fleet.t + 15)
    signals.add(scrape(fleet, ("dcgm", "node_exporter", "vllm")))
    s0, s1 = signals.nodes["node-0"], signals.nodes["node-1"]
    assert (s0.gpus, s0.lost, s0.xid) == (3, ["1"], {"2": 94})
    assert s1.ports_down == 1 and s1.ib_errors > 0
    assert any(s.ttft_mean_s for s in signals.nodes.values())


async def test_injected_faults_show_up_in_the_view(tmp_path: Path) -> None:
    posted: list[int] = []
    tasks: list[asyncio.Task[None]] = []

    def fleet_started(base: str) -> None:
        tasks.append(asyncio.get_running_loop().create_task(post_fault(base)))

    async def post_fault(base: str) -> None:
        await asyncio.sleep(0.5)  # while the demo runs, as `gpuslo inject` would
        async with aiohttp.ClientSession() as http, http.post(
            f"{base}/faults", json={"kind": "ib_symbol_errors", "target": "node-1/mlx5_0"}
        ) as resp:
            posted.append(resp.status)

    out = io.StringIO()
    truth = tmp_path / "truth.jsonl"
    tail = await run_demo(
        DemoSettings(duration_s=4.0, interval_s=0.5, nodes=2, inject=["xid_48:node-0/gpu0"],
                     sim_port=0, ground_truth=truth),
        Console(file=out, width=200), on_fleet_started=fleet_started,
    )
    assert posted == [201]
    assert tail.samples > 0 and "samples seen:" in out.getvalue()
    # The causes are in the view's fault list and in the ground truth file...
    active = {(f["kind"], f["target"], f["origin"]) for f in tail.active_faults()}
    assert {("xid_48", "node-0/gpu0", "injected"),
            ("ib_symbol_errors", "node-1/mlx5_0", "injected")} <= active
    records = read_ground_truth(truth)
    assert [r["fault"] for r in records if r["origin"] == "injected"] == [
        "xid_48", "ib_symbol_errors"]
    assert all(r["entity"] != "node-7/mlx5_1" for r in records)  # dropped: 2-node demo
    # ...and their symptoms came back through Kafka.
    node0, node1 = tail.signals.nodes["node-0"], tail.signals.nodes["node-1"]
    assert node0.xid == {"0": 48}
    assert node1.ib_errors > 0 and node0.ib_errors == 0
    assert tail.endpoints > 0 and tail.endpoints_down >= 1  # the crashed replica's page
    assert "xid_48" in out.getvalue() and "gpu0:48" in out.getvalue()


async def test_bad_inject_fails_before_anything_starts() -> None:
    with pytest.raises(FaultError, match="no gpu named"):
        await run_demo(DemoSettings(duration_s=1.0, nodes=2, inject=["xid_48:node-5/gpu0"],
                                    sim_port=0), Console(file=io.StringIO()))
