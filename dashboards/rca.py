"""Anomalies and root causes: what gpuslo's detectors and RCA say about the fleet.

Two series, both from gpuslo's exporter (names in :mod:`slo.conventions`):

* ``gpuslo_anomaly_score{detector, entity, metric, ...}``: the latest score per
  detector and entity (higher is more unusual);
* ``gpuslo_slo_alert_cause{<alert labels>, cause_rank, cause_entity, cause_node,
  cause_signal, cause_kind}``: the ranked root-cause candidates of each firing
  alert, the value being the cause's score.

Until the anomaly and RCA work publishes them, these panels are empty (the
dashboard test knows which); the firing-alerts panel has data as soon as an
SLO alerts.
"""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dm

from gpuslo.dashboards import common as g
from gpuslo.dashboards.common import instant, q

_DET = 'detector=~"$detector"'


def build() -> dm.Dashboard:
    """Anomaly and RCA."""
    d = g.dashboard(
        g.UID_RCA, "gpuslo / Anomalies and root causes", tags=["anomaly", "rca"],
        description="Top anomalous entities from gpuslo's detectors and the ranked "
                    "root-cause candidates of every active SLO alert.",
    )
    d = d.with_variable(g.query_variable(
        "detector", "label_values(gpuslo_anomaly_score, detector)", label="Detector",
        multi=True))
    d = d.with_variable(g.runbook_variable())

    d = d.with_row(g.row("Active alerts"))
    d = d.with_panel(g.table(
        "Firing alerts", [instant('gpuslo_slo_alerts{alertstate="firing"}')], w=24, h=6,
        hide=["Value", "instance"],
        links=[g.link_to(g.UID_SLO_DETAIL, "SLO detail: ${__data.fields.slo}",
                         "var-slo=${__data.fields.slo}"),
               g.runbook_link("__data.fields.slo")]))
    d = d.with_panel(g.table(
        "Root-cause candidates of active alerts",
        [instant("gpuslo_slo_alert_cause")], w=24, h=10, sort_by="cause_rank", hide=["instance"],
        rename={"Value": "score"},
        description="Per alert, causes ranked by score: the entity (GPU, port, disk, pod), "
                    "its node, the signal that moved and the kind of fault.",
        links=[g.link_to(g.UID_SLO_DETAIL, "SLO detail: ${__data.fields.slo}",
                         "var-slo=${__data.fields.slo}")]))
    d = d.with_panel(g.timeseries(
        "Top cause score per alert", [q('gpuslo_slo_alert_cause{cause_rank="1"}',
                                        "{{alertname}} {{severity}}: {{cause_entity}} "
                                        "{{cause_signal}}")],
        unit="short", w=24))

    d = d.with_row(g.row("Anomalies"))
    d = d.with_panel(g.table(
        "Most anomalous entities now", [instant(f"topk(20, gpuslo_anomaly_score{{{_DET}}})")],
        w=12, h=10, rename={"Value": "score"}, sort_by="score", sort_desc=True,
        hide=["instance"]))
    d = d.with_panel(g.timeseries(
        "Anomaly score, top 10", [q(f"topk(10, gpuslo_anomaly_score{{{_DET}}})",
                                    "{{detector}} {{entity}} {{metric}}")],
        unit="short", w=12, h=10))
    d = d.with_panel(g.timeseries(
        "Entities scored per detector", [q(
            f"count by (detector) (gpuslo_anomaly_score{{{_DET}}})", "{{detector}}")],
        unit="short", w=24, h=6))
    return g.finish(d)
