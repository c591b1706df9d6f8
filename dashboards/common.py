"""What every gpuslo dashboard shares: the datasource variable, uids, links, panel factories.

Dashboards are built with grafana-foundation-sdk's builders and stay in Grafana's
classic JSON model (schemaVersion 41), which both ways in accept:

* **imported** (UI upload or ``POST /api/dashboards/db``) and
* **provisioned** (files, or ConfigMaps picked up by kube-prometheus-stack's sidecar).

Provisioning never resolves ``__inputs`` / ``${DS_PROMETHEUS}`` placeholders
(grafana/grafana#10786), so there are none: every panel, query, variable and
annotation points at ``${datasource}``, a ``datasource`` variable of type
``prometheus`` that defaults to the instance's default Prometheus.

The factories below keep each dashboard module to what it shows: a title, queries,
a unit.  They fill in what Grafana needs on every panel (datasource, refIds in order,
legend, grid width) the same way everywhere, so the structure tests can hold each
dashboard to one rule set.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders.dashboard import (
    AnnotationQuery,
    Dashboard,
    DashboardLink,
    DatasourceVariable,
    QueryVariable,
    Row,
    TextBoxVariable,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery as PrometheusQuery
from grafana_foundation_sdk.builders.stat import Panel as StatPanel
from grafana_foundation_sdk.builders.statetimeline import Panel as StateTimelinePanel
from grafana_foundation_sdk.builders.table import Panel as TablePanel
from grafana_foundation_sdk.builders.timeseries import Panel as TimeseriesPanel
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

# --- identity -----------------------------------------------------------------------------

# Stable uids: links between dashboards, bookmarks and alert annotations
# (``alerts.alertmanager.dashboard_url``) use them, so they never change.
UID_OVERVIEW = "gpuslo-slo-overview"
UID_SLO_DETAIL = "gpuslo-slo-detail"
UID_GPU = "gpuslo-gpu-health"
UID_INFERENCE = "gpuslo-inference"
UID_RDMA = "gpuslo-rdma-fabric"
UID_STORAGE = "gpuslo-storage"
UID_KUBERNETES = "gpuslo-k8s-gpu-nodes"
UID_RCA = "gpuslo-anomaly-rca"
UID_SELF = "gpuslo-self-health"

TAG = "gpuslo"
# Dashboards of the sources' own series: the SLO detail lists them as "Sources".
SOURCE_TAG = "gpuslo-source"

DATASOURCE_VAR = "datasource"
DS = dm.DataSourceRef(type_val="prometheus", uid="${" + DATASOURCE_VAR + "}")

# The windows every SLO report carries (slo.windows.REPORT_WINDOWS); any other
# window label on a gpuslo_slo_* series is the SLO's period.
REPORT_WINDOWS_RE = "5m|30m|1h|2h|6h|1d|3d"

# Runbooks: alerts carry a runbook_url annotation (the SLO's own, or the
# alerts.alertmanager.runbook_url template), but the exported series do not, so
# the dashboards append the SLO id to this editable prefix.
RUNBOOK_VAR = "runbook_url"
RUNBOOK_DEFAULT = "https://runbooks.example.com/gpuslo/"

GRID_WIDTH = 24


def dashboard_url(uid: str) -> str:
    """Grafana's path to a dashboard by uid (the slug after it is optional)."""
    return f"/d/{uid}"


def header_link(uid: str, title: str) -> DashboardLink:
    """A link in the dashboard's header to another one, same time range and data source."""
    return (
        DashboardLink(title)
        .type(dm.DashboardLinkType.LINK)
        .url(f"{dashboard_url(uid)}?var-{DATASOURCE_VAR}=${{{DATASOURCE_VAR}}}")
        .icon("dashboard")
        .keep_time(True)
        .include_vars(False)
    )


# --- dashboard ----------------------------------------------------------------------------


def dashboard(uid: str, title: str, *, tags: Sequence[str], description: str,
              source: bool = False, time_from: str = "now-1h") -> Dashboard:
    """A dashboard with gpuslo's common settings, datasource variable and navigation links.

    ``source`` marks dashboards of the sources' own series (GPU, inference, fabric,
    storage, Kubernetes): the SLO detail links to them by that tag.
    """
    all_tags = [TAG, *([SOURCE_TAG] if source else []), *tags]
    return (
        Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(all_tags)
        .editable()
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time(time_from, "now")
        # Grafana's own annotations (manual ones, alert state changes), as it saves them.
        .annotation(
            AnnotationQuery()
            .name("Annotations & Alerts")
            .built_in(1)
            .type("dashboard")
            .datasource(dm.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
        )
        .with_variable(
            DatasourceVariable(DATASOURCE_VAR)
            .label("Data source")
            .type("prometheus")
            .description("The Prometheus that scrapes the sources and gpuslo's /metrics.")
        )
        .link(header_link(UID_OVERVIEW, "SLO overview"))
        .link(
            DashboardLink("gpuslo dashboards")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .keep_time(True)
            .include_vars(False)
        )
    )


def query_variable(name: str, query: str, *, label: str, multi: bool = False,
                   regex: str = "", sort: dm.VariableSort = dm.VariableSort.ALPHABETICAL_ASC,
                   description: str = "") -> QueryVariable:
    """A Prometheus query variable, refreshed with the time range.

    ``multi`` variables also offer "All", sent as ``.*`` (one short regex rather
    than every value joined, which can exceed Prometheus' URL limits on a big fleet);
    queries must then match them with ``=~``.
    """
    v = (
        QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query(query)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(sort)
    )
    if regex:
        v = v.regex(regex)
    if description:
        v = v.description(description)
    if multi:
        v = v.multi(True).include_all(True).all_value(".*")
    return v


def runbook_variable() -> TextBoxVariable:
    """The editable runbook prefix; links append the SLO id to it."""
    return (
        TextBoxVariable(RUNBOOK_VAR)
        .label("Runbook URL prefix")
        .description("Runbook links are this prefix followed by the SLO id; set it to the "
                     "prefix of gpuslo's alerts.alertmanager.runbook_url template.")
        .default_value(RUNBOOK_DEFAULT)
    )


def row(title: str) -> Row:
    """An expanded row; the panels that follow it belong to it."""
    return Row(title)


# --- links --------------------------------------------------------------------------------


def link_to(uid: str, title: str, params: str = "") -> DashboardLink:
    """A data link to another gpuslo dashboard, keeping the time range and data source.

    ``params`` are extra ``var-NAME=value`` pairs (``&``-joined), usually from
    ``${__field.labels.X}`` or ``${__data.fields.X}``.
    """
    query = f"${{__url_time_range}}&var-{DATASOURCE_VAR}=${{{DATASOURCE_VAR}}}"
    if params:
        query += "&" + params
    return DashboardLink(title).url(f"{dashboard_url(uid)}?{query}")


def runbook_link(slo_field: str) -> DashboardLink:
    """A data link to the runbook of the SLO named by ``slo_field`` (a data link variable)."""
    return DashboardLink("Runbook for ${" + slo_field + "}").url(
        "${" + RUNBOOK_VAR + "}${" + slo_field + "}").target_blank(True)


# --- queries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One panel query: PromQL, legend, and how Grafana should run it."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False


def q(expr: str, legend: str = "") -> Query:
    """A range query (time series panels)."""
    return Query(expr, legend)


def instant(expr: str, legend: str = "", *, table: bool = False) -> Query:
    """An instant query (stat, table); ``table`` returns one row per series with labels."""
    return Query(expr, legend, instant=True, table=table)


def _ref_id(i: int) -> str:
    return chr(ord("A") + i)


def _target(query: Query, i: int) -> PrometheusQuery:
    t = PrometheusQuery().expr(query.expr).ref_id(_ref_id(i)).datasource(DS)
    t = t.legend_format(query.legend or "__auto")
    t = t.instant() if query.instant else t.range()
    if query.table:
        t = t.format(PromQueryFormat.TABLE)
    return t


# --- panels -------------------------------------------------------------------------------


def _common(p: Any, title: str, queries: Sequence[Query], *, description: str, unit: str,
            w: int, h: int, links: Iterable[DashboardLink] = ()) -> Any:
    if not 0 < w <= GRID_WIDTH:
        raise ValueError(f"panel {title!r}: width {w} is not in 1..{GRID_WIDTH}")
    if not 0 < len(queries) <= 26:
        raise ValueError(f"panel {title!r} has {len(queries)} queries; refIds run A to Z")
    p = p.title(title).datasource(DS).span(w).height(h).unit(unit)
    if description:
        p = p.description(description)
    for i, query in enumerate(queries):
        p = p.with_target(_target(query, i))
    links = list(links)
    if links:
        p = p.data_links(links)
    return p


def steps(*pairs: tuple[float | None, str]) -> ThresholdsConfig:
    """Absolute threshold steps; the first value is None (from -infinity)."""
    return ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
        [dm.Threshold(value=v, color=c) for v, c in pairs])


NEUTRAL = steps((None, "green"))


def timeseries(title: str, queries: Sequence[Query], *, unit: str = "short",
               description: str = "", w: int = 12, h: int = 8,
               thresholds: ThresholdsConfig | None = None, min_val: float | None = None,
               max_val: float | None = None, stack: bool = False,
               links: Iterable[DashboardLink] = ()) -> TimeseriesPanel:
    """A time series panel; ``thresholds`` are drawn as dashed lines."""
    p: TimeseriesPanel = _common(TimeseriesPanel(), title, queries, description=description,
                                 unit=unit, w=w, h=h, links=links)
    p = p.legend(
        common_builders.VizLegendOptions()
        .display_mode(common_models.LegendDisplayMode.TABLE)
        .placement(common_models.LegendPlacement.RIGHT)
        .show_legend(True)
        .calcs(["lastNotNull", "max"])
    ).line_width(1).fill_opacity(10 if stack else 0)
    if stack:
        p = p.stacking(common_builders.StackingConfig().mode(common_models.StackingMode.NORMAL))
    if thresholds is not None:
        p = p.thresholds(thresholds).thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(
                common_models.GraphThresholdsStyleMode.DASHED))
    if min_val is not None:
        p = p.min(min_val)
    if max_val is not None:
        p = p.max(max_val)
    return p


def stat(title: str, queries: Sequence[Query], *, unit: str = "short", description: str = "",
         w: int = 6, h: int = 4, thresholds: ThresholdsConfig | None = None,
         mappings: Sequence[Any] = (), no_value: str = "",
         links: Iterable[DashboardLink] = ()) -> StatPanel:
    """A single-value panel over instant queries (last value, coloured by thresholds)."""
    queries = [Query(x.expr, x.legend, instant=True) for x in queries]
    p: StatPanel = _common(StatPanel(), title, queries, description=description, unit=unit,
                           w=w, h=h, links=links)
    p = p.graph_mode(common_models.BigValueGraphMode.NONE).color_mode(
        common_models.BigValueColorMode.VALUE).reduce_options(
        common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    p = p.thresholds(thresholds or NEUTRAL)
    if mappings:
        p = p.mappings(list(mappings))
    if no_value:
        p = p.no_value(no_value)
    return p


def table(title: str, queries: Sequence[Query], *, unit: str = "short", description: str = "",
          w: int = 24, h: int = 8, sort_by: str = "", sort_desc: bool = False,
          hide: Sequence[str] = (), rename: dict[str, str] | None = None,
          links: Iterable[DashboardLink] = (), mappings: Sequence[Any] = (),
          thresholds: ThresholdsConfig | None = None) -> TablePanel:
    """A table over instant queries, one row per series.

    Several queries are merged on their common labels (Grafana's ``merge``
    transformation), so each query adds a column; ``rename`` names the value
    columns (``Value #A`` -> ``Objective``) and ``hide`` drops columns (``Time``,
    ``__name__`` and ``job`` always go).
    """
    queries = [Query(x.expr, x.legend, instant=True, table=True) for x in queries]
    p: TablePanel = _common(TablePanel(), title, queries, description=description, unit=unit,
                            w=w, h=h, links=links)
    if len(queries) > 1:
        p = p.with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
    p = p.with_transformation(dm.DataTransformerConfig(id_val="organize", options={
        "excludeByName": {"Time": True, "__name__": True, "job": True,
                          **{c: True for c in hide}},
        "renameByName": dict(rename or {}),
    }))
    if sort_by:
        p = p.sort_by([common_builders.TableSortByFieldState().display_name(sort_by)
                       .desc(sort_desc)])
    if mappings:
        p = p.mappings(list(mappings))
    if thresholds is not None:
        p = p.thresholds(thresholds)
    return p


def state_timeline(title: str, queries: Sequence[Query], *, description: str = "",
                   w: int = 12, h: int = 8, mappings: Sequence[Any] = (),
                   thresholds: ThresholdsConfig | None = None) -> StateTimelinePanel:
    """States over time (link state, health status), coloured by value mappings."""
    p: StateTimelinePanel = _common(StateTimelinePanel(), title, queries,
                                    description=description, unit="none", w=w, h=h)
    if mappings:
        p = p.mappings(list(mappings))
    p = p.thresholds(thresholds or NEUTRAL)
    return p


def value_text(options: dict[str, tuple[str, str]]) -> dm.ValueMap:
    """Value mapping ``{"4": ("active", "green")}``: the raw value shown as text and colour."""
    return dm.ValueMap(options={
        k: dm.ValueMappingResult(text=text, color=color, index=i)
        for i, (k, (text, color)) in enumerate(options.items())
    })


# --- annotations --------------------------------------------------------------------------


class PrometheusAnnotation(dm.AnnotationQuery):
    """A Prometheus annotation query with its title and tag formats.

    The SDK's ``AnnotationQuery`` carries only ``expr``; Grafana's Prometheus
    annotation support also reads ``titleFormat``, ``tagKeys``, ``textFormat`` and
    ``step``, and keeps the query itself in ``target`` (with a ``refId``).
    """

    def __init__(self, name: str, expr: str, *, title_format: str, tag_keys: str,
                 text_format: str = "", step: str = "60s", icon_color: str = "red") -> None:
        super().__init__(name=name, datasource=DS, enable=True, hide=False,
                         icon_color=icon_color, expr=expr)
        self.title_format = title_format
        self.tag_keys = tag_keys
        self.text_format = text_format
        self.step = step

    def to_json(self) -> dict[str, object]:
        payload = super().to_json()
        payload.update({
            "titleFormat": self.title_format,
            "tagKeys": self.tag_keys,
            "textFormat": self.text_format,
            "step": self.step,
            "useValueForTime": False,
            "target": {"refId": "Anno", "expr": self.expr, "interval": self.step,
                       "datasource": DS},
        })
        return payload


class _Built(Builder[dm.AnnotationQuery]):
    """Hands a ready model to a builder method that takes builders."""

    def __init__(self, model: dm.AnnotationQuery) -> None:
        self._model = model

    def build(self) -> dm.AnnotationQuery:
        return self._model


def annotation(model: PrometheusAnnotation) -> Builder[dm.AnnotationQuery]:
    """``Dashboard.annotation(annotation(PrometheusAnnotation(...)))``."""
    return _Built(model)


# --- output -------------------------------------------------------------------------------


def finish(builder: Dashboard) -> dm.Dashboard:
    """Build the model and number its panels 1, 2, ... in layout order (rows included).

    Panel ids only need to be unique within a dashboard; numbering them in order
    keeps the JSON stable, so the golden files change only when a panel does.
    """
    model = builder.build()
    n = 0
    for panel in model.panels or []:
        n += 1
        panel.id_val = n
        for inner in getattr(panel, "panels", None) or []:
            n += 1
            inner.id_val = n
    return model


def to_dict(model: dm.Dashboard) -> dict[str, Any]:
    """The dashboard as plain JSON data (what Grafana stores)."""
    data: dict[str, Any] = json.loads(JSONEncoder(sort_keys=True).encode(model))
    return data


def render(data: dict[str, Any]) -> str:
    """Canonical text of one dashboard: sorted keys, two-space indent, final newline."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
