"""OTLP/HTTP: a test endpoint decodes what the SDK exports (opentelemetry-proto) and finds the
SLO figures with the values the engine computed; stage spans link across Kafka headers."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import SecretStr
from report_builders import snapshot
from servers import wait_for

from gpuslo.exporters.base import ExportResult
from gpuslo.exporters.otlp import STAGES, OtlpExporter, PipelineTracer, tracer_provider
from gpuslo.pipeline.config import OtlpExporterConfig
from gpuslo.slo import conventions as cv


@dataclass
class Collector:
    """A minimal OTLP/HTTP endpoint: decodes protobuf bodies, keeps them."""

    metrics: list[ExportMetricsServiceRequest] = field(default_factory=list)
    traces: list[ExportTraceServiceRequest] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    url: str = ""

    async def on_metrics(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        self.headers.append(dict(request.headers))
        self.metrics.append(ExportMetricsServiceRequest.FromString(await request.read()))
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def on_traces(self, request: web.Request) -> web.Response:
        self.traces.append(ExportTraceServiceRequest.FromString(await request.read()))
        return web.Response(body=b"", content_type="application/x-protobuf")

    def points(self, name: str) -> list[tuple[dict[str, str], float, Any]]:
        """(attributes, value, metric) of every data point named ``name`` received so far."""
        out = []
        for req in self.metrics:
            for rm in req.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        if m.name != name:
                            continue
                        data = m.gauge if m.HasField("gauge") else m.sum
                        for dp in data.data_points:
                            value = dp.as_double if dp.HasField("as_double") else dp.as_int
                            out.append((_attrs(dp.attributes), float(value), m))
        return out


def _attrs(kvs: Any) -> dict[str, str]:
    return {kv.key: _any(kv) for kv in kvs}


def _any(kv: KeyValue) -> str:
    return str(kv.value.string_value) if kv.value.HasField("string_value") else str(kv.value)


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    c = Collector()
    app = web.Application()
    app.router.add_post("/v1/metrics", c.on_metrics)
    app.router.add_post("/v1/traces", c.on_traces)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    c.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield c
    finally:
        await runner.cleanup()


async def test_the_sdk_pushes_the_slo_figures_over_otlp_http(collector: Collector) -> None:
    cfg = OtlpExporterConfig(enabled=True, endpoint=collector.url, interval_s=0.3, timeout_s=5,
                             headers={"x-api-key": SecretStr("k1")}, service_name="gpuslo-test")
    exporter = OtlpExporter(cfg)
    try:
        snap = snapshot(datetime.now(UTC), burn_rate=16.5)
        assert await exporter.export(snap) is ExportResult.SUCCESS
        burn = await wait_for(lambda: collector.points(cv.M_SLO_BURN_RATE.otel),
                              what="a periodic export with SLO figures")
    finally:
        await exporter.shutdown()
        await exporter.shutdown()  # idempotent

    scope = {"slo": "vllm-ttft", "service": "vllm", "model_name": "llama-70b"}
    by_window = {a["window"]: v for a, v, _ in burn if scope.items() <= a.items()}
    assert by_window["1h"] == by_window["30d"] == 16.5
    ((_, remaining, m),) = collector.points(cv.M_SLO_BUDGET_REMAINING.otel)[:1]
    assert remaining == 0.42 and m.HasField("gauge") and m.unit == "1"
    tte = collector.points(cv.M_SLO_TIME_TO_EXHAUSTION.otel)
    assert tte[0][1] == 10800 and tte[0][2].unit == "s"
    alerts = collector.points(cv.M_SLO_ALERTS.otel)
    assert {(a["severity"], a["alertstate"]) for a, _, _ in alerts} == {
        ("page", "firing"), ("ticket", "firing")}
    # Each firing alert's ranked causes, as attributes of the cause gauge.
    causes = {(a["severity"], a["cause_rank"]): (a, v)
              for a, v, _ in collector.points(cv.M_ALERT_CAUSE.otel)}
    top, score = causes[("page", "1")]
    assert score == pytest.approx(0.93)
    assert (top["cause_entity"], top["cause_node"], top["cause_signal"], top["cause_kind"]) == (
        "GPU-8f2c", "gpu-node-1", "gpu_clock_reasons", "cause")
    assert top["alertname"] == "VllmTtftBurnRate" and causes[("ticket", "2")][0][
        "cause_kind"] == "symptom"
    # Counters are monotonic cumulative sums (the OTel <-> Prometheus mapping).
    ((_, dead, dm),) = collector.points(cv.M_DEAD_LETTERS.otel)[:1]
    assert dead == 4
    assert dm.HasField("sum") and dm.sum.is_monotonic
    cumulative = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    assert dm.sum.aggregation_temporality == cumulative
    lag = collector.points(cv.M_CONSUMER_LAG.otel)
    assert lag[0][0] == {"consumer": "gpuslo-sli"} and lag[0][1] == 17
    resource = _attrs(collector.metrics[0].resource_metrics[0].resource.attributes)
    assert resource["service.name"] == "gpuslo-test"
    assert collector.headers[0]["x-api-key"] == "k1"


async def test_nothing_but_empty_exports_before_the_first_snapshot(collector: Collector) -> None:
    cfg = OtlpExporterConfig(enabled=True, endpoint=collector.url, interval_s=60)
    exporter = OtlpExporter(cfg)
    try:
        await exporter.force_flush()
    finally:
        await exporter.shutdown()
    assert collector.points(cv.M_SLO_BURN_RATE.otel) == []


def test_stage_spans_chain_scrape_to_alert_across_kafka_headers() -> None:
    spans = InMemorySpanExporter()
    cfg = OtlpExporterConfig(enabled=True)
    tracer = PipelineTracer(tracer_provider(cfg, span_exporter=spans))
    with tracer.stage(cv.SPAN_SCRAPE, target="http://n1:9400/metrics"), \
            tracer.stage(cv.SPAN_PRODUCE, records=1):
        headers = tracer.kafka_headers()
    assert [k for k, _ in headers] == ["traceparent"]
    # Another process consumes the record: its span continues the trace.
    with tracer.stage(cv.SPAN_STAGE1, parent=PipelineTracer.extract(headers)):
        sli_headers = tracer.kafka_headers()
    with tracer.stage(cv.SPAN_STAGE2, parent=PipelineTracer.extract(sli_headers)), \
            tracer.stage(cv.SPAN_ALERT, alerts=2):
        pass
    tracer.shutdown()
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert set(finished) == set(STAGES)
    trace_ids = {s.context.trace_id for s in finished.values()}
    assert len(trace_ids) == 1  # one trace from scrape to alert
    parent = {name: s.parent.span_id if s.parent else None for name, s in finished.items()}
    assert parent[cv.SPAN_PRODUCE] == finished[cv.SPAN_SCRAPE].context.span_id
    assert parent[cv.SPAN_STAGE1] == finished[cv.SPAN_PRODUCE].context.span_id
    assert parent[cv.SPAN_STAGE2] == finished[cv.SPAN_STAGE1].context.span_id
    assert parent[cv.SPAN_ALERT] == finished[cv.SPAN_STAGE2].context.span_id


def test_tracing_off_is_a_no_op() -> None:
    tracer = PipelineTracer(None)
    with tracer.stage(cv.SPAN_SCRAPE) as span:
        assert span is None
    assert tracer.kafka_headers() == []


async def test_spans_reach_the_otlp_endpoint(collector: Collector) -> None:
    import asyncio

    cfg = OtlpExporterConfig(enabled=True, endpoint=collector.url, timeout_s=5)
    tracer = PipelineTracer(tracer_provider(cfg))
    with tracer.stage(cv.SPAN_STAGE2, slos=3):
        pass
    await asyncio.to_thread(tracer.shutdown)  # flushes the batch processor
    names = [s.name for req in collector.traces for rs in req.resource_spans
             for ss in rs.scope_spans for s in ss.spans]
    assert names == [cv.SPAN_STAGE2]


async def test_https_endpoint_is_verified_against_the_configured_ca(
    tls_files: tuple[Path, Path],
) -> None:
    cert, key = tls_files
    c = Collector()
    app = web.Application()
    app.router.add_post("/v1/metrics", c.on_metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    try:
        trusted = OtlpExporter(OtlpExporterConfig(
            enabled=True, endpoint=url, interval_s=60, timeout_s=5, traces=False,
            service_name="trusted", tls={"ca_file": cert}))
        untrusted = OtlpExporter(OtlpExporterConfig(
            enabled=True, endpoint=url, interval_s=60, timeout_s=2, traces=False,
            service_name="untrusted"))
        snap = snapshot(datetime.now(UTC), burn_rate=2.0)
        for exporter in (trusted, untrusted):
            await exporter.export(snap)
            await asyncio.to_thread(exporter.reader.force_flush, 5000)
            await exporter.shutdown()
        # Only the exporter that trusted the server's CA got through (even with
        # REQUESTS_CA_BUNDLE pointing elsewhere, as in many base images).
        senders = {_attrs(m.resource_metrics[0].resource.attributes)["service.name"]
                   for m in c.metrics}
        assert senders == {"trusted"}
    finally:
        await runner.cleanup()


def test_tls_verification_cannot_be_switched_off_for_otlp() -> None:
    with pytest.raises(ValueError, match="insecure_skip_verify is not supported for OTLP"):
        OtlpExporterConfig(enabled=True, endpoint="https://x", tls={"insecure_skip_verify": True})
