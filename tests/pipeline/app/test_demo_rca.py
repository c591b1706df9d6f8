"""End to end on the real broker: one injected fault → an SLO alert → its ranked causes.

The demo runs the production wiring (collectors → embedded broker → SLO stages,
the anomaly scoring stage and stage 2's ranking side, the exporters) on a
simulated fleet that is calm for a quarter of an hour and then gets one fault.
The alert it raises must reach a real Alertmanager with an ``rca`` annotation
whose first line names the faulted GPU, the first notification Alertmanager
sends the pager (a webhook) must carry it, and /metrics must carry the same top
cause on ``gpuslo_slo_alert_cause``.
"""

from __future__ import annotations

import asyncio
import io
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pipeline_processes import Webhook, alertmanager_config
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from servers import free_port, start_alertmanager

from gpuslo.pipeline.app.demo import DemoSettings, run_demo
from gpuslo.simulator.scenario import parse_scenario

pytestmark = pytest.mark.integration

FAULTED = ("node-1", "2")  # node, GPU index
SCENARIO = {
    "name": "one-fault",
    "seed": 3,
    "speed": 60.0,
    "warmup": "5m",
    "fleet": {"nodes": 3, "gpus_per_node": 4},
    "faults": [{"kind": "thermal_throttle", "target": f"{FAULTED[0]}/gpu{FAULTED[1]}",
                "at": "16m", "duration": "30m", "intensity": 0.9}],
}


async def test_an_injected_fault_pages_with_the_faulted_gpu_as_first_cause(
        tmp_path: Path) -> None:
    pager = Webhook().start()
    am = start_alertmanager(alertmanager_config(pager.url), tmp_path / "am")
    metrics_port = free_port()
    causes: list[dict[str, str]] = []
    page: list[dict[str, Any]] = []

    async def scrape_causes() -> None:
        base = f"http://127.0.0.1:{metrics_port}"
        while True:
            await asyncio.sleep(1.0)
            try:
                body = await asyncio.to_thread(_get, f"{base}/metrics")
                alerts = json.loads(await asyncio.to_thread(_get, f"{base}/api/v1/alerts"))
            except OSError:
                continue
            got = [s.labels for fam in text_string_to_metric_families(body)
                   for s in fam.samples if s.name == "gpuslo_slo_alert_cause"]
            if got:
                causes[:] = got
            shown = [a for a in alerts["alerts"] if a["status"] == "firing" and a["cause"]]
            if shown:
                page[:] = shown

    out = io.StringIO()
    try:
        probe = asyncio.create_task(scrape_causes())
        await run_demo(
            DemoSettings(duration_s=40.0, interval_s=1.0, sim_port=0,
                         scenario=parse_scenario(SCENARIO, "one-fault"),
                         alertmanager=[am.url], metrics_port=metrics_port),
            Console(file=out, width=200),
        )
        probe.cancel()
        alerts: list[dict[str, Any]] = am.get_json("/api/v2/alerts")
    finally:
        am.stop()
        pager.stop()
    log = out.getvalue()[-4000:]

    with_rca = [a for a in alerts if a["annotations"].get("rca")]
    assert with_rca, f"no alert with an rca annotation reached Alertmanager: {alerts}\n{log}"
    node, index = FAULTED
    for a in with_rca:
        lines = a["annotations"]["rca"].splitlines()
        assert 1 <= len(lines) <= 3, lines
        assert all(line.startswith(f"{i}. [") for i, line in enumerate(lines, 1)), lines
        assert lines[0].startswith(f"1. [cause] GPU {index} of {node} "), (a["labels"], lines)
    # The pager's first notification of each alert already names it: Alertmanager does not
    # notify again when only the annotation changes.
    first: dict[str, dict[str, Any]] = {}
    for a in pager.alerts():
        first.setdefault(json.dumps(a["labels"], sort_keys=True), a)
    assert first, f"no notification reached the pager\n{log}"
    for a in first.values():
        assert a["status"] == "firing"
        assert a["annotations"].get("rca", "").startswith(
            f"1. [cause] GPU {index} of {node} "), (a["labels"], a["annotations"])
    # The exporter's cause series agrees: rank 1 is the faulted GPU, on its node.
    assert causes, f"gpuslo_slo_alert_cause was never served\n{log}"
    tops = [c for c in causes if c["cause_rank"] == "1"]
    assert tops and all(c["cause_node"] == node and c["cause_kind"] == "cause"
                        for c in tops), causes
    # The status page and the terminal view show the top cause beside the firing alert.
    assert page and all(a["cause"].startswith(f"[cause] GPU {index} of {node} ")
                        for a in page), page
    assert f"cause: [cause] GPU {index} of {node} " in out.getvalue(), log


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return str(resp.read().decode())
