"""OTLP/HTTP: the same figures as ``/metrics``, pushed by the OpenTelemetry SDK, plus stage traces.

Metrics: a private :class:`~opentelemetry.sdk.metrics.MeterProvider` (never the
global one) with a :class:`PeriodicExportingMetricReader` driving the
OTLP/HTTP exporter.  Every figure of :mod:`exporters.figures` is an observable
instrument whose callback reads the latest snapshot, so the SDK's own thread
decides when to collect and the engine only swaps a reference
(:meth:`OtlpExporter.export`).  Gauges become OTLP ``Gauge``; ``*_total``
figures become monotonic cumulative ``Sum`` (the OTel↔Prometheus mapping).

Traces: :class:`PipelineTracer` opens one span per pipeline stage (scrape →
produce → stage 1 → stage 2 → alert, names in :mod:`slo.conventions`) and
carries the W3C ``traceparent`` across Kafka in record headers, so one trace
shows where a sample spent its time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import requests
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, Span, SpanKind, Tracer, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gpuslo.exporters.base import ExportResult, Snapshot
from gpuslo.exporters.figures import Figure, iter_figures
from gpuslo.pipeline.config import OtlpExporterConfig
from gpuslo.slo import conventions as cv

log = logging.getLogger(__name__)

INSTRUMENTATION_SCOPE = "gpuslo"
METRICS_PATH = "/v1/metrics"
TRACES_PATH = "/v1/traces"
STAGES: tuple[str, ...] = (
    cv.SPAN_SCRAPE, cv.SPAN_PRODUCE, cv.SPAN_STAGE1, cv.SPAN_STAGE2, cv.SPAN_ALERT,
)


def _resource(cfg: OtlpExporterConfig) -> Resource:
    return Resource.create({"service.name": cfg.service_name})


def _headers(cfg: OtlpExporterConfig) -> dict[str, str]:
    return {k: v.get_secret_value() for k, v in cfg.headers.items()}


def _path(p: Path | None) -> str | None:
    return str(p) if p is not None else None


class _ConfiguredCASession(requests.Session):
    """A session whose configured CA wins over ``REQUESTS_CA_BUNDLE``.

    requests lets that variable (set in many base images) replace a session's
    ``verify`` on every request, which would silently ignore ``tls.ca_file``.
    """

    def merge_environment_settings(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        settings: dict[str, Any] = super().merge_environment_settings(*args, **kwargs)
        settings["verify"] = self.verify
        return settings


def _session(cfg: OtlpExporterConfig) -> requests.Session | None:
    return _ConfiguredCASession() if cfg.tls.ca_file is not None else None


class OtlpExporter:
    """Push exporter: hands snapshots to the SDK, which exports them every ``interval_s``.

    Args:
        cfg: endpoint, interval, timeout, headers.
        metric_exporter: replaces the OTLP/HTTP exporter (tests).
        extra_readers: more readers on the same provider (an ``InMemoryMetricReader`` in tests).
    """

    kind: Literal["push"] = "push"

    def __init__(
        self,
        cfg: OtlpExporterConfig,
        *,
        metric_exporter: MetricExporter | None = None,
        extra_readers: Sequence[MetricReader] = (),
        name: str = "otlp",
    ) -> None:
        self.cfg = cfg
        self.name = name
        self._snapshot: Snapshot | None = None
        self._grouped: tuple[Snapshot | None, dict[str, list[Figure]]] = (None, {})
        exporter = metric_exporter or OTLPMetricExporter(
            endpoint=cfg.endpoint.rstrip("/") + METRICS_PATH,
            headers=_headers(cfg),
            timeout=cfg.timeout_s,
            # The SDK takes file paths, not an SSL context.
            certificate_file=_path(cfg.tls.ca_file),
            client_certificate_file=_path(cfg.tls.cert_file),
            client_key_file=_path(cfg.tls.key_file),
            session=_session(cfg),
        )
        self.reader = PeriodicExportingMetricReader(
            exporter,
            export_interval_millis=cfg.interval_s * 1000,
            export_timeout_millis=cfg.timeout_s * 1000,
        )
        # shutdown_on_exit=False: we shut down explicitly; an atexit hook would keep the
        # provider (and its snapshot) alive for the whole process.
        self.provider = MeterProvider(
            metric_readers=[self.reader, *extra_readers],
            resource=_resource(cfg),
            shutdown_on_exit=False,
        )
        meter = self.provider.get_meter(INSTRUMENTATION_SCOPE)
        for m in (*cv.SLO_METRICS, *cv.HEALTH_METRICS):
            if m.kind == "counter":
                meter.create_observable_counter(
                    m.otel, callbacks=[self._callback(m)], unit=m.unit, description=m.help)
            else:
                meter.create_observable_gauge(
                    m.otel, callbacks=[self._callback(m)], unit=m.unit, description=m.help)
        self._stopped = False

    def _points(self, metric: cv.ExportedMetric) -> list[Figure]:
        snap = self._snapshot
        cached_for, grouped = self._grouped
        if cached_for is not snap:
            grouped = {}
            if snap is not None:
                for f in iter_figures(snap):
                    grouped.setdefault(f.metric.prometheus, []).append(f)
            self._grouped = (snap, grouped)
        return grouped.get(metric.prometheus, [])

    def _callback(
        self, metric: cv.ExportedMetric
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(f.value, f.labels) for f in self._points(metric)]

        return observe

    async def start(self) -> None:
        """Nothing to open: the SDK's reader thread started with the provider."""

    async def export(self, snapshot: Snapshot) -> ExportResult:
        """Make ``snapshot`` what the next periodic collection reads (no I/O here)."""
        self._snapshot = snapshot
        return ExportResult.SUCCESS

    async def force_flush(self) -> bool:
        """Collect and export now (off the event loop: the SDK exporter blocks)."""
        return await asyncio.to_thread(
            self.provider.force_flush, int(self.cfg.timeout_s * 1000))

    async def shutdown(self) -> None:
        """Export once more and stop the reader thread; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        await asyncio.to_thread(self.provider.shutdown, int(self.cfg.timeout_s * 1000))


# ------------------------------------------------------------------------------------------
# Traces of the pipeline stages
# ------------------------------------------------------------------------------------------


def tracer_provider(
    cfg: OtlpExporterConfig, *, span_exporter: SpanExporter | None = None
) -> TracerProvider:
    """A private tracer provider exporting spans in batches over OTLP/HTTP (or to
    ``span_exporter``, e.g. an ``InMemorySpanExporter`` in tests)."""
    provider = TracerProvider(resource=_resource(cfg), shutdown_on_exit=False)
    exporter = span_exporter or OTLPSpanExporter(
        endpoint=cfg.endpoint.rstrip("/") + TRACES_PATH,
        headers=_headers(cfg),
        timeout=cfg.timeout_s,
        certificate_file=_path(cfg.tls.ca_file),
        client_certificate_file=_path(cfg.tls.cert_file),
        client_key_file=_path(cfg.tls.key_file),
        session=_session(cfg),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


class PipelineTracer:
    """Spans for the pipeline stages, linked across Kafka by ``traceparent`` headers.

    Usage::

        with tracer.stage(cv.SPAN_SCRAPE, target=url):
            frame = await collector.scrape()
            with tracer.stage(cv.SPAN_PRODUCE, records=n):
                headers = tracer.kafka_headers()   # add to the produced record
        ...
        # in stage 1, for a consumed record:
        with tracer.stage(cv.SPAN_STAGE1, parent=PipelineTracer.extract(record.headers)):
            ...
    """

    def __init__(self, provider: TracerProvider | None) -> None:
        self.provider = provider
        self._tracer: Tracer | None = (
            provider.get_tracer(INSTRUMENTATION_SCOPE) if provider is not None else None
        )
        self._propagator = TraceContextTextMapPropagator()

    @contextmanager
    def stage(
        self,
        name: str,
        *,
        parent: Context | None = None,
        links: Sequence[Context] = (),
        **attributes: str | int | float | bool,
    ) -> Iterator[Span | None]:
        """One stage span (a no-op when tracing is off).  ``parent`` continues a trace that
        arrived in Kafka headers; ``links`` ties a batch span to the traces it consumed."""
        if self._tracer is None:
            yield None
            return
        span_links = []
        for ctx in links:
            sc = get_current_span(ctx).get_span_context()
            if sc.is_valid:
                span_links.append(Link(sc))
        kind = SpanKind.PRODUCER if name == cv.SPAN_PRODUCE else SpanKind.INTERNAL
        with self._tracer.start_as_current_span(
            name, context=parent, kind=kind, links=span_links, attributes=attributes
        ) as span:
            yield span

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        """The current span's ``traceparent`` (and ``tracestate``) as Kafka record headers."""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier)
        return [(k, v.encode()) for k, v in carrier.items()]

    @staticmethod
    def extract(headers: Iterable[tuple[str, bytes]] | None) -> Context:
        """The trace context carried by a consumed record's headers (empty if none)."""
        carrier: dict[str, Any] = {}
        for k, v in headers or ():
            carrier[k.lower()] = v.decode("latin-1") if isinstance(v, bytes) else str(v)
        return TraceContextTextMapPropagator().extract(carrier)

    def shutdown(self) -> None:
        """Flush and stop the span processor; idempotent."""
        if self.provider is not None:
            self.provider.shutdown()
            self.provider = None
            self._tracer = None
