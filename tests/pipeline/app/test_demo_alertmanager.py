"""`gpuslo demo --alertmanager URL`: the whole path ends in a real Alertmanager 0.25.

The default scenario throttles a GPU serving a model early on; its TTFT SLO
burns, stage 2 pages, and the alert must arrive in Alertmanager with the labels
and annotations an on-call engineer reads, while Prometheus-style /metrics
serves the same figures.
"""

from __future__ import annotations

import asyncio
import io
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from servers import free_port, start_alertmanager

from gpuslo.pipeline.app.demo import DemoSettings, run_demo
from gpuslo.slo.budget import SliState

pytestmark = pytest.mark.integration

AM_CONFIG = """
route:
  receiver: "null"
  group_wait: 1s
receivers:
  - name: "null"
"""


async def test_demo_pages_into_a_real_alertmanager_and_serves_metrics(tmp_path: Path) -> None:
    am = start_alertmanager(AM_CONFIG, tmp_path / "am")
    metrics_port = free_port()
    scraped: list[str] = []

    async def scrape_metrics_while_running() -> None:
        for _ in range(60):
            await asyncio.sleep(0.5)
            try:
                body = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics_port}/metrics")
            except OSError:
                continue
            if "gpuslo_slo_burn_rate" in body or "burn_rate" in body:
                scraped.append(body)

    try:
        probe = asyncio.create_task(scrape_metrics_while_running())
        out = io.StringIO()
        tail = await run_demo(
            DemoSettings(duration_s=25.0, interval_s=1.0, nodes=2, sim_port=0,
                         alertmanager=[am.url], metrics_port=metrics_port),
            Console(file=out, width=200),
        )
        probe.cancel()
        alerts: list[dict[str, Any]] = am.get_json("/api/v2/alerts")
    finally:
        am.stop()
    pages = [a for a in alerts if a["labels"].get("severity") == "page"]
    assert pages, f"no page alert reached Alertmanager: {alerts}\n{out.getvalue()[-3000:]}"
    page = pages[0]
    assert page["labels"]["slo"] and page["labels"]["alertname"]
    for key in ("summary", "description"):
        assert page["annotations"].get(key), page["annotations"]
    assert "burn" in page["annotations"]["description"].lower()
    # Evaluated behind the simulated clock by the pipeline's latency, the 5m window (the
    # page alerts' short window) holds data for most scopes, not "no data".
    five = [r.window(timedelta(minutes=5)).state for r in tail.reports]
    assert five and sum(s is SliState.OK for s in five) >= 0.8 * len(five), five
    assert scraped, "Prometheus /metrics was never served with SLO figures"


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return str(resp.read().decode())
