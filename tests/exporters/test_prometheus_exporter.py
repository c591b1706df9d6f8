"""The Prometheus exporter: names and values of every figure, promtool's lint, HTTP serving."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from report_builders import report, snapshot, spec
from servers import require_binary

from gpuslo.exporters.base import HealthSnapshot, ScrapeTargetKey, Snapshot
from gpuslo.exporters.prometheus import PrometheusExporter, metric_families
from gpuslo.pipeline.config import PrometheusExporterConfig
from gpuslo.slo import conventions as cv

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def _samples(exporter: PrometheusExporter) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, _ = exporter.render()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(body.decode())
        for s in fam.samples
    }


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float:
    hits = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(hits) == 1, f"{name} {labels}: {len(hits)} samples"
    return hits[0]


@pytest.fixture
def exporter() -> PrometheusExporter:
    e = PrometheusExporter(PrometheusExporterConfig(host="127.0.0.1", port=0))
    e.publish(snapshot(T0))
    return e


def test_slo_figures_are_exported_in_base_units(exporter: PrometheusExporter) -> None:
    s = _samples(exporter)
    scope = {"slo": "vllm-ttft", "service": "vllm", "model_name": "llama-70b"}
    assert _value(s, "gpuslo_slo_objective_ratio", **scope) == 0.999
    assert _value(s, "gpuslo_slo_error_budget_ratio", **scope) == pytest.approx(0.001)
    assert _value(s, "gpuslo_slo_burn_rate_ratio", window="1h", **scope) == 20.0
    assert _value(s, "gpuslo_slo_burn_rate_ratio", window="30d", **scope) == 20.0
    assert _value(s, "gpuslo_slo_sli_ratio", window="5m", **scope) == pytest.approx(0.98)
    assert _value(s, "gpuslo_slo_window_state", window="5m", state="ok", **scope) == 1.0
    assert _value(s, "gpuslo_slo_window_state", window="5m", state="no_data", **scope) == 0.0
    assert _value(s, "gpuslo_slo_error_budget_remaining_ratio", **scope) == 0.42
    assert _value(s, "gpuslo_slo_time_to_exhaustion_seconds", **scope) == 10800.0
    assert _value(s, "gpuslo_slo_evaluation_timestamp_seconds", **scope) == T0.timestamp()
    assert _value(s, "gpuslo_slo_alerts", severity="page", alertstate="firing",
                  alertname="VllmTtftBurnRate", **scope) == 1.0
    assert _value(s, "gpuslo_anomaly_score", detector="isolation-forest",
                  entity="gpu-node-1/GPU-3", metric="DCGM_FI_DEV_GPU_TEMP",
                  node="gpu-node-1") == 0.87


def test_each_firing_alert_exports_its_ranked_causes(exporter: PrometheusExporter) -> None:
    s = _samples(exporter)
    alert = {"slo": "vllm-ttft", "service": "vllm", "model_name": "llama-70b",
             "alertname": "VllmTtftBurnRate"}
    for sev in ("page", "ticket"):
        top = _value(s, "gpuslo_slo_alert_cause", severity=sev, cause_rank="1", **alert)
        assert top == pytest.approx(0.93)
    first = next(dict(ls) for (n, ls), _ in s.items()
             if n == "gpuslo_slo_alert_cause" and ("cause_rank", "1") in ls)
    assert {k: first[k] for k in first if k.startswith("cause_")} == {
        "cause_rank": "1", "cause_entity": "GPU-8f2c", "cause_node": "gpu-node-1",
        "cause_signal": "gpu_clock_reasons", "cause_kind": "cause"}
    assert _value(s, "gpuslo_slo_alert_cause", severity="page", cause_rank="2",
                  cause_kind="symptom", **alert) == pytest.approx(0.41)


def test_alerts_that_do_not_fire_export_no_cause() -> None:
    snap = snapshot(T0)
    quiet = Snapshot.build(reports=snap.reports, taken_at=T0, specs=snap.specs,
                           causes=snap.causes)
    names = {f.name for f in metric_families(quiet)}
    assert "gpuslo_slo_alerts" not in names and "gpuslo_slo_alert_cause" not in names


def test_self_health_is_exported(exporter: PrometheusExporter) -> None:
    s = _samples(exporter)
    n1, n2 = "http://gpu-node-1:9400/metrics", "http://gpu-node-2:9400/metrics"
    # Each target's series names its collector, source and node, not only its URL.
    one = {"collector": "dcgm", "source": "dcgm", "node": "gpu-node-1", "target": n1}
    two = {"collector": "dcgm", "source": "dcgm", "node": "gpu-node-2", "target": n2}
    assert _value(s, "gpuslo_scrape_up", **one) == 1.0
    assert _value(s, "gpuslo_scrape_up", **two) == 0.0
    assert _value(s, "gpuslo_scrape_duration_seconds", **one) == 0.125
    assert _value(s, "gpuslo_scrape_samples", **one) == 1234
    assert _value(s, "gpuslo_scrape_errors_total", reason="timeout", **two) == 3
    assert _value(s, "gpuslo_samples_produced_total") == 51_234
    assert _value(s, "gpuslo_dropped_total", reason="too_many_series") == 5
    assert _value(s, "gpuslo_consumer_lag_records", consumer="gpuslo-sli") == 17
    assert _value(s, "gpuslo_dead_letters_total") == 4
    assert _value(s, "gpuslo_consumer_recoveries_total", consumer="gpuslo-sli",
                  reason="log_reset") == 1
    assert _value(s, "gpuslo_consumer_recoveries_total", consumer="gpuslo-sli",
                  reason="stalled") == 2
    assert _value(s, "gpuslo_alertmanager_alerts_sent_total",
                  alertmanager="http://am-0:9093") == 10
    assert _value(s, "gpuslo_alertmanager_queue_length", alertmanager="http://am-0:9093") == 2


def test_missing_values_are_absent_series_never_nan() -> None:
    sp = spec()
    rep = report(sp, T0, burn_rate=2.0, budget_remaining=None, time_to_exhaustion=None,
                 no_data=frozenset({timedelta(minutes=5)}))
    fams = metric_families(Snapshot.build(reports=[rep], taken_at=T0, specs=[sp]))
    by_name = {f.name: f for f in fams}
    assert "gpuslo_slo_error_budget_remaining_ratio" not in by_name
    assert "gpuslo_slo_time_to_exhaustion_seconds" not in by_name
    windows = {s.labels["window"] for s in by_name["gpuslo_slo_burn_rate_ratio"].samples}
    assert "5m" not in windows and "1h" in windows
    assert all(s.value == s.value for f in fams for s in f.samples)  # no NaN


def test_every_exported_name_comes_from_the_conventions(exporter: PrometheusExporter) -> None:
    known = {m.prometheus for m in (*cv.SLO_METRICS, *cv.HEALTH_METRICS)}
    names = {s.name for f in exporter.collect(snapshot(T0)) for s in f.samples}
    assert names == known  # nothing spelled elsewhere, and every figure present


def test_promtool_finds_nothing_to_lint(exporter: PrometheusExporter) -> None:
    promtool = require_binary("promtool", "prometheus")
    body, _ = exporter.render()
    out = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                         timeout=20, check=False)
    assert out.returncode == 0, (out.stdout + out.stderr).decode()


def test_sloth_names_are_exposed_only_when_asked() -> None:
    snap = snapshot(T0)
    plain = {s.name for f in metric_families(snap) for s in f.samples}
    assert not any(n.startswith("slo:") for n in plain)
    fams = metric_families(snap, sloth_compat=True)
    samples = {(s.name, s.labels.get(cv.LABEL_WINDOW)): s for f in fams for s in f.samples}
    meta = {cv.LABEL_ID: "vllm-ttft", cv.LABEL_SERVICE: "vllm", cv.LABEL_SLO: "vllm-ttft"}
    sli = samples[("slo:sli_error:ratio_rate5m", "5m")]
    assert meta.items() <= sli.labels.items() and sli.value == pytest.approx(0.02)
    assert samples[("slo:current_burn_rate:ratio", None)].value == 20.0
    assert samples[("slo:period_error_budget_remaining:ratio", None)].value == 0.42
    assert samples[("slo:objective:ratio", None)].value == 0.999
    assert samples[("slo:time_period:days", None)].value == 30.0
    info = samples[("sloth_slo_info", None)]
    assert info.labels[cv.LABEL_OBJECTIVE] == "99.9"
    # Meta series have one series per SLO (no scope labels) so Sloth's group_left joins work.
    assert "model_name" not in samples[("slo:objective:ratio", None)].labels


def test_no_global_registry_side_effects() -> None:
    before = set(prometheus_client.REGISTRY._names_to_collectors)
    e = PrometheusExporter(PrometheusExporterConfig(port=0))
    e.publish(snapshot(T0))
    assert set(prometheus_client.REGISTRY._names_to_collectors) == before
    assert b"gpuslo_slo_burn_rate_ratio" not in prometheus_client.generate_latest()


def test_nothing_is_exported_before_the_first_snapshot() -> None:
    e = PrometheusExporter(PrometheusExporterConfig(port=0))
    assert e.render()[0] == b""


@pytest.fixture
async def served(exporter: PrometheusExporter) -> AsyncIterator[PrometheusExporter]:
    await exporter.start()
    try:
        yield exporter
    finally:
        await exporter.shutdown()


async def test_metrics_are_served_as_text_0_0_4_even_to_openmetrics_scrapers(
    served: PrometheusExporter,
) -> None:
    # Prometheus asks for OpenMetrics first; client_python's OpenMetrics encoder would turn
    # slo:sli_error:ratio_rate5m into slo_sli_error_ratio_rate5m, so text 0.0.4 it is.
    served.collector.sloth_compat = True
    accept = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
              "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    async with aiohttp.ClientSession() as http, \
            http.get(served.url, headers={"Accept": accept}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    assert "gpuslo_slo_burn_rate_ratio{" in text
    assert "\nslo:sli_error:ratio_rate5m{" in text


def test_two_collectors_reading_one_page_keep_their_own_health() -> None:
    page = "http://gpu-node-3:9100/metrics"  # node_exporter: RDMA and storage both read it
    rdma = ScrapeTargetKey("rdma", "rdma", "gpu-node-3", page)
    storage = ScrapeTargetKey("storage", "storage", "gpu-node-3", page)
    health = HealthSnapshot(target_up={rdma: True, storage: False},
                            scrape_errors_total={(storage, "parse"): 2})
    e = PrometheusExporter(PrometheusExporterConfig(host="127.0.0.1", port=0))
    e.publish(Snapshot.build(health=health, taken_at=T0))
    s = _samples(e)
    assert _value(s, "gpuslo_scrape_up", collector="rdma", source="rdma", node="gpu-node-3",
                  target=page) == 1.0
    assert _value(s, "gpuslo_scrape_up", collector="storage", target=page) == 0.0
    assert _value(s, "gpuslo_scrape_errors_total", collector="storage", reason="parse") == 2
