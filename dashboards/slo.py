"""The SLO dashboards: the fleet overview and one SLO scope in detail.

Both read only gpuslo's own series (``gpuslo_slo_*``, :mod:`slo.conventions`),
which carry the window as a label and the scope as the SLO's ``by:`` labels.
The Sloth-compatible ``slo:*`` names are left to Sloth's own dashboards
(Grafana 14348 / 14643), which work unchanged when the exporter's ``sloth_compat``
is on.

A scope's labels differ from SLO to SLO (``node``; ``model_name``; ``node``,
``device``, ``port``...), so the detail dashboard's ``scope`` variable holds the
scope's whole label matcher list (``node="node-1",service="gpu-fleet",slo="..."``),
taken from ``query_result`` and spliced into every selector with ``${scope:raw}``:
one dashboard serves every SLO, including ones a team adds to the catalog.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import DashboardLink
from grafana_foundation_sdk.models import dashboard as dm

from gpuslo.dashboards import common as g
from gpuslo.dashboards.common import instant, q

_SERVICE = 'service=~"$service"'
_SCOPE = "${scope:raw}"
_PERIOD = f'window!~"{g.REPORT_WINDOWS_RE}"'

# Page/ticket factors of the default burn-rate table for a 30-day period
# (slo.windows: 2 % of the budget in 1 h, 5 % in 6 h, 10 % in 1 d and in 3 d).
# gpuslo does not export each SLO's own factors (see docs/architecture.md).
_TIERS = (
    ("Page: 1h and 5m burn rate", "5m|1h", 14.4),
    ("Page: 6h and 30m burn rate", "30m|6h", 6.0),
    ("Ticket: 1d and 2h burn rate", "2h|1d", 3.0),
    ("Ticket: 3d and 6h burn rate", "6h|3d", 1.0),
)

_ALERT_STATE = g.value_text({
    "0": ("ok", "green"),
    "1": ("pending", "yellow"),
    "2": ("ticket", "orange"),
    "3": ("page", "red"),
})

_BUDGET = g.steps((None, "red"), (0.0, "orange"), (0.25, "green"))


def _alert_state(sel: str) -> str:
    """3 page firing, 2 ticket firing, 1 pending, 0 none: one number per SLO scope."""
    alerts = "gpuslo_slo_alerts{" + sel
    return (
        "max without (alertname, severity, alertstate) ("
        f'3 * {alerts}, alertstate="firing", severity="page"}} '
        f'or 2 * {alerts}, alertstate="firing", severity="ticket"}} '
        f'or {alerts}, alertstate="pending"}}'
        f") or 0 * gpuslo_slo_objective_ratio{{{sel}}}"
    )


def _detail_link(field: str) -> DashboardLink:
    return g.link_to(g.UID_SLO_DETAIL, "SLO detail: ${" + field + "}",
                     "var-slo=${" + field + "}")


def overview() -> dm.Dashboard:
    """Fleet SLO overview: every SLO scope, worst first, and the alerts that fire."""
    d = g.dashboard(
        g.UID_OVERVIEW, "gpuslo / Fleet SLO overview", tags=["slo"],
        description="Every SLO scope gpuslo evaluates: objective, SLI, error budget left, "
                    "burn rates and alert state, worst first; firing alerts with their "
                    "top root-cause candidate.",
    )
    d = d.with_variable(g.query_variable(
        "service", "label_values(gpuslo_slo_objective_ratio, service)", label="Service",
        multi=True))
    d = d.with_variable(g.runbook_variable())
    d = d.link(g.header_link(g.UID_SLO_DETAIL, "SLO detail"))

    d = d.with_row(g.row("Fleet now"))
    d = d.with_panel(g.stat("SLO scopes evaluated", [instant(
        f"count(gpuslo_slo_objective_ratio{{{_SERVICE}}})")], w=4,
        description="SLO scopes evaluated (one per SLO and value of its by: labels)."))
    d = d.with_panel(g.stat("Out of error budget", [instant(
        f"sum(gpuslo_slo_error_budget_remaining_ratio{{{_SERVICE}}} <= bool 0)")], w=4,
        thresholds=g.steps((None, "green"), (1, "red")),
        description="Scopes whose error budget for the period is spent."))
    d = d.with_panel(g.stat("Burning > 14.4x (1h)", [instant(
        f'sum(gpuslo_slo_burn_rate_ratio{{{_SERVICE}, window="1h"}} > bool 14.4)')], w=4,
        thresholds=g.steps((None, "green"), (1, "red")),
        description="Scopes spending the budget at the page rate of a 30-day period."))
    d = d.with_panel(g.stat("Page alerts firing", [instant(
        f'count(gpuslo_slo_alerts{{{_SERVICE}, alertstate="firing", severity="page"}})')],
        w=4, no_value="0", thresholds=g.steps((None, "green"), (1, "red"))))
    d = d.with_panel(g.stat("Ticket alerts firing", [instant(
        f'count(gpuslo_slo_alerts{{{_SERVICE}, alertstate="firing", severity="ticket"}})')],
        w=4, no_value="0", thresholds=g.steps((None, "green"), (1, "orange"))))
    d = d.with_panel(g.stat("Scopes without data (1h)", [instant(
        f'sum(gpuslo_slo_window_state{{{_SERVICE}, window="1h", state="no_data"}})')], w=4,
        thresholds=g.steps((None, "green"), (1, "orange")),
        description="A scope whose source went silent (a GPU off the bus, a dead "
                    "exporter) shows here, not as good minutes."))

    d = d.with_row(g.row("SLO scopes, worst first"))
    d = d.with_panel(
        g.table(
            "SLO scopes",
            [
                instant(f"gpuslo_slo_objective_ratio{{{_SERVICE}}}"),
                instant(f"max without (window) (gpuslo_slo_sli_ratio{{{_SERVICE}, {_PERIOD}}})"),
                instant(f"gpuslo_slo_error_budget_remaining_ratio{{{_SERVICE}}}"),
                instant(f'max without (window) '
                        f'(gpuslo_slo_burn_rate_ratio{{{_SERVICE}, window="1h"}})'),
                instant(f'max without (window) '
                        f'(gpuslo_slo_burn_rate_ratio{{{_SERVICE}, window="6h"}})'),
                instant(_alert_state(_SERVICE)),
            ],
            h=12, sort_by="Budget left", hide=["instance"],
            rename={"Value #A": "Objective", "Value #B": "SLI (period)",
                    "Value #C": "Budget left", "Value #D": "Burn 1h", "Value #E": "Burn 6h",
                    "Value #F": "Alert"},
            description="One row per SLO scope; the scope's labels are the columns between "
                        "service and the figures. SLI over the SLO's period (absent while the "
                        "period has too little data). Click a row for the SLO's detail.",
            links=[_detail_link("__data.fields.slo"), g.runbook_link("__data.fields.slo")],
        )
        .override_by_name("Objective", [dm.DynamicConfigValue("unit", "percentunit"),
                                        dm.DynamicConfigValue("decimals", 2)])
        .override_by_name("SLI (period)", [dm.DynamicConfigValue("unit", "percentunit"),
                                           dm.DynamicConfigValue("decimals", 3)])
        .override_by_name("Budget left", [
            dm.DynamicConfigValue("unit", "percentunit"),
            dm.DynamicConfigValue("thresholds", _BUDGET.build()),
            dm.DynamicConfigValue("custom.cellOptions", {"type": "color-text"})])
        .override_by_regexp("Burn .*", [dm.DynamicConfigValue("decimals", 2),
                                         dm.DynamicConfigValue("unit", "suffix:x")])
        .override_by_name("Alert", [
            dm.DynamicConfigValue("mappings", [_ALERT_STATE]),
            dm.DynamicConfigValue("custom.cellOptions", {"type": "color-text"})])
    )

    d = d.with_row(g.row("Firing alerts"))
    d = d.with_panel(g.table(
        "Firing alerts and their top cause",
        [
            instant(f'gpuslo_slo_alerts{{{_SERVICE}, alertstate="firing"}}'),
            instant(f'gpuslo_slo_alert_cause{{{_SERVICE}, cause_rank="1"}}'),
        ],
        h=8, hide=["Value #A", "instance"], rename={"Value #B": "Cause score"},
        description="Firing alerts; the cause columns come from gpuslo's root-cause "
                    "analysis (gpuslo_slo_alert_cause, rank 1) and stay empty until it "
                    "publishes causes.",
        links=[_detail_link("__data.fields.slo"), g.runbook_link("__data.fields.slo"),
               g.link_to(g.UID_RCA, "Anomalies and root causes")],
    ))

    d = d.with_row(g.row("Burn"))
    d = d.with_panel(g.timeseries(
        "Fastest burning scopes (1h window)",
        [q(f'topk(10, gpuslo_slo_burn_rate_ratio{{{_SERVICE}, window="1h"}})',
           "{{slo}} {{node}}{{model_name}} {{device}}")],
        unit="none", thresholds=g.steps((None, "green"), (1, "orange"), (14.4, "red")),
        description="Burn rate 1 spends the budget exactly over the period; 14.4 is the "
                    "page threshold of a 30-day period.",
        links=[_detail_link("__field.labels.slo")],
    ))
    d = d.with_panel(g.timeseries(
        "Lowest error budget left",
        [q(f"bottomk(10, gpuslo_slo_error_budget_remaining_ratio{{{_SERVICE}}})",
           "{{slo}} {{node}}{{model_name}} {{device}}")],
        unit="percentunit", thresholds=_BUDGET,
        links=[_detail_link("__field.labels.slo")],
    ))
    return g.finish(d)


def _source_links() -> list[DashboardLink]:
    """From an SLI series to the source dashboards, carrying the scope's labels."""
    node = "var-node=${__field.labels.node}"
    device = "var-device=${__field.labels.device}"
    return [
        g.link_to(g.UID_GPU, "GPU health of ${__field.labels.node}", node),
        g.link_to(g.UID_INFERENCE, "Inference: ${__field.labels.model_name}",
                  "var-model=${__field.labels.model_name}"),
        g.link_to(g.UID_RDMA, "RDMA fabric of ${__field.labels.node}", f"{node}&{device}"),
        g.link_to(g.UID_STORAGE, "Storage of ${__field.labels.node}", f"{node}&{device}"),
        g.link_to(g.UID_KUBERNETES, "Workloads on ${__field.labels.node}", node),
    ]


def detail() -> dm.Dashboard:
    """One SLO scope: SLI over time, budget burn-down, burn rates against alert thresholds."""
    d = g.dashboard(
        g.UID_SLO_DETAIL, "gpuslo / SLO detail", tags=["slo"],
        description="One SLO scope: SLI over time, error budget over the period, burn rate "
                    "per window against the page and ticket thresholds, alerts and their "
                    "root-cause candidates.",
        time_from="now-6h",
    )
    d = d.with_variable(g.query_variable(
        "slo", "label_values(gpuslo_slo_objective_ratio, slo)", label="SLO"))
    d = d.with_variable(g.query_variable(
        "scope",
        'query_result(sort(gpuslo_slo_error_budget_remaining_ratio{slo="$slo"} + 0 '
        'or gpuslo_slo_objective_ratio{slo="$slo"} * 0 + 1))',
        label="Scope", regex="/\\{(.+)\\}/", sort=dm.VariableSort.DISABLED,
        description="The SLO scope's labels, least error budget left first."))
    d = d.with_variable(g.runbook_variable())
    d = d.annotation(g.annotation(g.PrometheusAnnotation(
        "SLO alerts", 'gpuslo_slo_alerts{slo="$slo", alertstate="firing"}',
        title_format="{{alertname}} ({{severity}})", tag_keys="slo,severity",
        text_format="{{node}}{{model_name}} {{device}}")))
    d = d.link(
        DashboardLink("Runbook").type(dm.DashboardLinkType.LINK)
        .url("${" + g.RUNBOOK_VAR + "}${slo}").icon("doc").target_blank(True))
    d = d.link(
        DashboardLink("Sources").type(dm.DashboardLinkType.DASHBOARDS)
        .tags([g.SOURCE_TAG]).as_dropdown(True).keep_time(True).include_vars(False))

    d = d.with_row(g.row("Now"))
    d = d.with_panel(g.stat("Objective", [instant(f"gpuslo_slo_objective_ratio{{{_SCOPE}}}")],
                            unit="percentunit", w=4))
    d = d.with_panel(g.stat("SLI over the period", [instant(
        f"max without (window) (gpuslo_slo_sli_ratio{{{_SCOPE}, {_PERIOD}}})")],
        unit="percentunit", w=4, no_value="too little data"))
    d = d.with_panel(g.stat("Error budget left", [instant(
        f"gpuslo_slo_error_budget_remaining_ratio{{{_SCOPE}}}")], unit="percentunit", w=4,
        thresholds=_BUDGET))
    d = d.with_panel(g.stat("Budget exhausted in", [instant(
        f"gpuslo_slo_time_to_exhaustion_seconds{{{_SCOPE}}}")], unit="s", w=4,
        no_value="not burning",
        description="At the last hour's burn rate."))
    d = d.with_panel(g.stat("Burn rate (1h)", [instant(
        f'max without (window) (gpuslo_slo_burn_rate_ratio{{{_SCOPE}, window="1h"}})')],
        unit="none", w=4, thresholds=g.steps((None, "green"), (1, "orange"), (14.4, "red"))))
    d = d.with_panel(g.stat("Alerts firing", [instant(
        f'count(gpuslo_slo_alerts{{{_SCOPE}, alertstate="firing"}})')], w=4, no_value="0",
        thresholds=g.steps((None, "green"), (1, "red"))))

    d = d.with_row(g.row("SLI and error budget"))
    d = d.with_panel(g.timeseries(
        "SLI by window",
        [q(f'gpuslo_slo_sli_ratio{{{_SCOPE}, window=~"5m|1h|1d"}}', "SLI {{window}}"),
         q(f"gpuslo_slo_objective_ratio{{{_SCOPE}}}", "objective")],
        unit="percentunit",
        description="Share of good events per window; a gap is a window without enough data. "
                    "The links open the source dashboards for this scope.",
        links=_source_links()))
    d = d.with_panel(
        g.timeseries(
            "Error budget left over the period",
            [q(f"gpuslo_slo_error_budget_remaining_ratio{{{_SCOPE}}}", "budget left")],
            unit="percentunit", thresholds=_BUDGET,
            description="The period's budget burn-down (last 30 days; a calendar period "
                        "starts again at 100 %).")
        .time_from("30d"))

    d = d.with_row(g.row("Burn rate against the alert thresholds"))
    for title, windows, factor in _TIERS:
        d = d.with_panel(g.timeseries(
            title, [q(f'gpuslo_slo_burn_rate_ratio{{{_SCOPE}, window=~"{windows}"}}',
                      "{{window}}")],
            unit="none", thresholds=g.steps((None, "green"), (factor, "red")),
            description=f"An alert fires when both windows stay above {factor:g}x, the "
                        "default table's factor for a 30-day period (a 28-day period uses "
                        "0.93x these).", w=12, h=7))

    d = d.with_row(g.row("Alerts and causes"))
    d = d.with_panel(g.table(
        "Alerts of this SLO", [instant('gpuslo_slo_alerts{slo="$slo"}')], w=12,
        hide=["Value", "instance"], links=[g.runbook_link("__data.fields.slo")],
        description="Pending, firing and recently resolved alerts of every scope."))
    d = d.with_panel(g.table(
        "Window states", [instant(f"gpuslo_slo_window_state{{{_SCOPE}}} == 1")], w=12,
        hide=["Value", "slo", "service", "instance"],
        description="ok, no_data or too_little_traffic per window (no burn rate is "
                    "computed for the last two)."))
    d = d.with_panel(g.table(
        "Root-cause candidates", [instant(f"gpuslo_slo_alert_cause{{{_SCOPE}}}")],
        sort_by="cause_rank", rename={"Value": "Score"}, hide=["instance"],
        description="Ranked causes of this scope's alerts from gpuslo's root-cause analysis "
                    "(gpuslo_slo_alert_cause); empty until it publishes causes.",
        links=[g.link_to(g.UID_RCA, "Anomalies and root causes")]))
    return g.finish(d)
