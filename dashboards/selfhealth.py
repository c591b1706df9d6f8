"""gpuslo's own health: is the pipeline itself seeing, moving and delivering data?

From gpuslo's exporter (the health series of :mod:`slo.conventions`): scrape
success, duration and samples per target; scrapes per collector; errors by
reason; samples and records produced; consumer lag; dead letters; drops;
Alertmanager delivery.  Per-target series carry only ``target`` (the URL), so
"per source" is per collector for counts and per target for the rest.
"""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dm

from gpuslo.dashboards import common as g
from gpuslo.dashboards.common import instant, q

_I = 'instance=~"$instance"'
_RATE = "[$__rate_interval]"


def build() -> dm.Dashboard:
    """gpuslo self-health."""
    d = g.dashboard(
        g.UID_SELF, "gpuslo / Self-health", tags=["self-health"],
        description="gpuslo's own pipeline: scrape success and duration per target, samples "
                    "per second, consumer lag, dead letters, drops and Alertmanager delivery.",
    )
    d = d.with_variable(g.query_variable(
        "instance", "label_values(gpuslo_samples_produced_total, instance)",
        label="gpuslo instance", multi=True,
        description="Each gpuslo process Prometheus scrapes (collector, aggregator, demo)."))

    d = d.with_row(g.row("Now"))
    d = d.with_panel(g.stat("Targets scraped", [instant(f"count(gpuslo_scrape_up{{{_I}}})")], w=4))
    d = d.with_panel(g.stat("Targets down", [instant(
        f"sum(gpuslo_scrape_up{{{_I}}} == bool 0)")], w=4,
        thresholds=g.steps((None, "green"), (1, "red"))))
    d = d.with_panel(g.stat("Samples produced / s", [instant(
        f"sum(rate(gpuslo_samples_produced_total{{{_I}}}{_RATE}))")], unit="short", w=4))
    d = d.with_panel(g.stat("Records behind (consumer lag)", [instant(
        f"sum(gpuslo_consumer_lag_records{{{_I}}})")], unit="short", w=4,
        thresholds=g.steps((None, "green"), (10000, "orange"))))
    d = d.with_panel(g.stat("Dead letters in range", [instant(
        f"sum(increase(gpuslo_dead_letters_total{{{_I}}}[$__range]))")], w=4,
        thresholds=g.steps((None, "green"), (1, "red"))))
    d = d.with_panel(g.stat("SLO evaluation age", [instant(
        f"time() - max(gpuslo_slo_evaluation_timestamp_seconds{{{_I}}})")], unit="s", w=4,
        thresholds=g.steps((None, "green"), (120, "orange"), (600, "red")),
        description="Seconds since the newest SLO evaluation (the demo evaluates in "
                    "simulated time, so there it reads far off)."))

    d = d.with_row(g.row("Scrapes"))
    d = d.with_panel(g.table("Targets", [
        instant(f"gpuslo_scrape_up{{{_I}}}"),
        instant(f"gpuslo_scrape_duration_seconds{{{_I}}}"),
        instant(f"gpuslo_scrape_samples{{{_I}}}"),
    ], rename={"Value #A": "up", "Value #B": "duration", "Value #C": "samples"},
        hide=["instance"], sort_by="up", h=10,
        description="Every target of every collector, failing first.")
        .override_by_name("up", [
            dm.DynamicConfigValue("mappings", [g.value_text({"0": ("down", "red"),
                                                             "1": ("up", "green")})]),
            dm.DynamicConfigValue("custom.cellOptions", {"type": "color-text"})])
        .override_by_name("duration", [dm.DynamicConfigValue("unit", "s")]))
    d = d.with_panel(g.timeseries("Scrapes per second by collector", [q(
        f"sum by (collector) (rate(gpuslo_scrapes_total{{{_I}}}{_RATE}))", "{{collector}}")],
        unit="ops"))
    d = d.with_panel(g.timeseries("Scrape errors by reason", [q(
        f"sum by (reason) (rate(gpuslo_scrape_errors_total{{{_I}}}{_RATE}))", "{{reason}}")],
        unit="ops", description="timeout, connect, http_<code>, not_ready, parse, ..."))
    d = d.with_panel(g.timeseries("Slowest scrapes (top 10)", [q(
        f"topk(10, gpuslo_scrape_duration_seconds{{{_I}}})", "{{target}}")], unit="s"))
    d = d.with_panel(g.timeseries("Samples per scrape (top 10)", [q(
        f"topk(10, gpuslo_scrape_samples{{{_I}}})", "{{target}}")], unit="short"))

    d = d.with_row(g.row("Kafka"))
    d = d.with_panel(g.timeseries("Produced per second", [
        q(f"sum(rate(gpuslo_samples_produced_total{{{_I}}}{_RATE}))", "samples"),
        q(f"sum(rate(gpuslo_records_produced_total{{{_I}}}{_RATE}))", "records"),
        q(f"sum(rate(gpuslo_produce_failures_total{{{_I}}}{_RATE}))", "produce failures")],
        unit="short", w=8))
    d = d.with_panel(g.timeseries("Consumer lag", [q(
        f"gpuslo_consumer_lag_records{{{_I}}}", "{{consumer}}")], unit="short", w=8,
        description="Records behind the end of each consumer group's partitions."))
    d = d.with_panel(g.timeseries("Dead letters and drops", [
        q(f"sum(rate(gpuslo_dead_letters_total{{{_I}}}{_RATE}))", "dead letters"),
        q(f"sum by (reason) (rate(gpuslo_dropped_total{{{_I}}}{_RATE}))", "dropped: {{reason}}")],
        unit="short", w=8,
        description="Undecodable records sent to gpuslo.dlq; batches dropped (retry buffer "
                    "full, produce rejected)."))

    d = d.with_row(g.row("Alertmanager delivery"))
    d = d.with_panel(g.timeseries("Alerts sent and failed", [
        q(f"sum by (alertmanager) (rate(gpuslo_alertmanager_alerts_sent_total{{{_I}}}"
          f"{_RATE}))", "sent {{alertmanager}}"),
        q(f"sum by (alertmanager) (rate(gpuslo_alertmanager_errors_total{{{_I}}}{_RATE}))",
          "errors {{alertmanager}}"),
        q(f"sum by (alertmanager) (rate(gpuslo_alertmanager_alerts_dropped_total{{{_I}}}"
          f"{_RATE}))", "dropped {{alertmanager}}")], unit="short"))
    d = d.with_panel(g.timeseries("Alertmanager queue", [q(
        f"gpuslo_alertmanager_queue_length{{{_I}}}", "{{alertmanager}}")], unit="short",
        description="Alerts waiting while an Alertmanager is away (bounded, oldest dropped)."))
    return g.finish(d)
