"""The exporter registry: name -> factory from config, in one place.

``build_exporters`` turns the validated config into the exporters it switches
on; :class:`~exporters.base.ExportHub` then fans snapshots out to them.  Adding
an exporter means one entry in :data:`EXPORTERS` and one config model in
``pipeline/config.py``, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from gpuslo.alerts.alertmanager import AlertmanagerClient, utc_now
from gpuslo.exporters.base import Exporter, ExportHub
from gpuslo.exporters.otlp import OtlpExporter
from gpuslo.exporters.prometheus import PrometheusExporter
from gpuslo.pipeline.config import GpusloConfig

Clock = Callable[[], datetime]
ExporterFactory = Callable[[GpusloConfig, Clock], Exporter | None]


def _prometheus(cfg: GpusloConfig, clock: Clock) -> Exporter | None:
    c = cfg.exporters.prometheus
    return PrometheusExporter(c) if c.enabled else None


def _otlp(cfg: GpusloConfig, clock: Clock) -> Exporter | None:
    c = cfg.exporters.otlp
    return OtlpExporter(c) if c.enabled else None


def _alertmanager(cfg: GpusloConfig, clock: Clock) -> Exporter | None:
    c = cfg.alerts.alertmanager
    return AlertmanagerClient(c, clock=clock) if c.urls else None


# Pull: prometheus.  Push: otlp (the SDK's periodic reader), alertmanager.
EXPORTERS: dict[str, ExporterFactory] = {
    "prometheus": _prometheus,
    "otlp": _otlp,
    "alertmanager": _alertmanager,
}


def build_exporters(cfg: GpusloConfig, *, clock: Clock = utc_now) -> list[Exporter]:
    """The exporters ``cfg`` switches on (Prometheus when enabled, OTLP when enabled,
    Alertmanager when at least one URL is set), in registry order."""
    out = []
    for factory in EXPORTERS.values():
        exporter = factory(cfg, clock)
        if exporter is not None:
            out.append(exporter)
    return out


def build_hub(cfg: GpusloConfig, *, clock: Clock = utc_now) -> ExportHub:
    """An :class:`ExportHub` over :func:`build_exporters`; use ``async with``."""
    return ExportHub(build_exporters(cfg, clock=clock))
