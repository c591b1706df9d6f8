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
from prometheus_client.parser import text_string_to_metric_families
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
    # gpuslo's own health is there too: delivery to this Alertmanager, lag per consumer
    # group, drops by reason (0 from the start), per-target scrape health by node.
    last = scraped[-1]
    sent = _sample(last, "gpuslo_alertmanager_alerts_sent_total", alertmanager=am.url)
    assert sent is not None and sent >= 1, "no delivery figures for the Alertmanager"
    assert _sample(last, "gpuslo_alertmanager_queue_length", alertmanager=am.url) is not None
    for group in ("gpuslo-sli", "gpuslo-slo"):
        assert _sample(last, "gpuslo_consumer_lag_records", consumer=group) is not None, group
    assert _sample(last, "gpuslo_dropped_total", reason="retry_buffer_full") == 0.0
    assert _sample(last, "gpuslo_dead_letters_total") == 0.0
    up_nodes = {labels.get("node") for labels in _labels(last, "gpuslo_scrape_up")}
    assert {"node-0", "node-1"} <= up_nodes, up_nodes


def _labels(text: str, name: str) -> list[dict[str, str]]:
    return [s.labels for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name == name]


def _sample(text: str, name: str, **labels: str) -> float | None:
    hits = [s.value for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name == name and labels.items() <= s.labels.items()]
    return hits[0] if len(hits) == 1 else None


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return str(resp.read().decode())
