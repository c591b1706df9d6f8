"""Against the real Prometheus 2.42 (Debian ``prometheus``): it scrapes gpuslo's /metrics and
PromQL returns the values the engine computed."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from report_builders import snapshot
from servers import Server, start_prometheus, wait_for

from gpuslo.exporters.base import ExportHub
from gpuslo.exporters.prometheus import PrometheusExporter
from gpuslo.pipeline.config import PrometheusExporterConfig

pytestmark = pytest.mark.integration


@pytest.fixture
async def scraped(tmp_path: Path) -> AsyncIterator[tuple[PrometheusExporter, Server]]:
    exporter = PrometheusExporter(
        PrometheusExporterConfig(host="127.0.0.1", port=0, sloth_compat=True))
    await exporter.start()
    config = f"""
global: {{scrape_interval: 500ms, scrape_timeout: 400ms, evaluation_interval: 500ms}}
scrape_configs:
  - job_name: gpuslo
    static_configs: [{{targets: ["127.0.0.1:{exporter.port}"]}}]
"""
    prom: Server | None = None
    try:
        prom = await asyncio.to_thread(start_prometheus, config, tmp_path / "prometheus")
        yield exporter, prom
    finally:
        if prom is not None:
            await asyncio.to_thread(prom.stop)
        await exporter.shutdown()


def _query(prom: Server, promql: str) -> list[dict[str, Any]]:
    data = prom.get_json("/api/v1/query?query=" + urllib.parse.quote(promql))
    assert data["status"] == "success", data
    return list(data["data"]["result"])


def _scalar(prom: Server, promql: str) -> float | None:
    result = _query(prom, promql)
    if len(result) != 1:
        return None
    return float(result[0]["value"][1])


async def test_prometheus_scrapes_gpuslo_and_promql_returns_the_exported_values(
    scraped: tuple[PrometheusExporter, Server],
) -> None:
    exporter, prom = scraped
    hub = ExportHub([exporter])
    snap = snapshot(datetime.now(UTC), burn_rate=16.5)
    await hub.publish(snap)
    (rep,) = snap.reports
    sel = '{slo="vllm-ttft", service="vllm", model_name="llama-70b"}'

    burn = await wait_for(
        lambda: _scalar(prom, f'gpuslo_slo_burn_rate_ratio{{window="1h", {sel[1:]}'),
        timeout_s=15, what="the first scrape")
    assert burn == rep.window(rep.windows[2].window).burn_rate == 16.5
    assert _scalar(prom, f"gpuslo_slo_error_budget_remaining_ratio{sel}") == 0.42
    assert _scalar(prom, f"gpuslo_slo_time_to_exhaustion_seconds{sel}") == 10800
    assert _scalar(prom, f'gpuslo_slo_alerts{{severity="page", alertstate="firing", '
                         f'{sel[1:]}') == 1
    # Self-health, with PromQL doing arithmetic over it.
    assert _scalar(prom, "sum(gpuslo_scrape_up)") == 1
    assert _scalar(prom, "gpuslo_dead_letters_total") == 4
    assert _scalar(prom, 'gpuslo_consumer_lag_records{consumer="gpuslo-sli"}') == 17
    assert _scalar(prom, 'gpuslo_dropped_total{reason="queue_full"}') == 2
    # Sloth's names work as Sloth dashboards query them (join on the meta labels).
    assert _scalar(prom, 'slo:current_burn_rate:ratio{sloth_id="vllm-ttft"}') == 16.5
    joined = _scalar(prom, (
        'slo:sli_error:ratio_rate1h{sloth_id="vllm-ttft"} / on(sloth_id, sloth_slo, '
        'sloth_service) group_left slo:error_budget:ratio{sloth_id="vllm-ttft"}'))
    assert joined == pytest.approx(16.5)
    # Prometheus saw the target healthy.
    assert _scalar(prom, 'up{job="gpuslo"}') == 1

    # A new snapshot is what the next scrape sees.
    await hub.publish(snapshot(datetime.now(UTC), burn_rate=3.0))
    await wait_for(lambda: _scalar(prom, f'gpuslo_slo_burn_rate_ratio{{window="1h", '
                                         f'{sel[1:]}') == 3.0,
                   timeout_s=10, what="the updated burn rate")
