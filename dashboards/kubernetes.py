"""Kubernetes workloads on GPU nodes, from the kubelet's cAdvisor endpoint.

Series as kube-prometheus-stack stores them: ``container_*`` from
``/metrics/cadvisor`` with the ``node`` target label its kubelet ServiceMonitor
adds.  ``image!=""`` keeps real containers: it drops the pod cgroups and the
pause sandbox (``container=""``) and the kubelet's ``/metrics/resource`` copies of
the same names, which carry no ``image``.

Restarts come from cAdvisor too (each restart is a new container id, so a new
``container_start_time_seconds`` series), which needs no kube-state-metrics; the
GPU column comes from dcgm-exporter's pod mapping (``pod``/``namespace`` labels
on GPUs assigned to a pod).
"""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dm

from gpuslo.dashboards import common as g
from gpuslo.dashboards.common import instant, q

_SEL = 'node=~"$node", namespace=~"$namespace", container!="", image!=""'
_BY = "namespace, pod, container"
_LEGEND = "{{namespace}}/{{pod}}/{{container}}"
_RATE = "[$__rate_interval]"


def _throttling() -> str:
    return (
        f"sum by ({_BY}) (rate(container_cpu_cfs_throttled_periods_total{{{_SEL}}}{_RATE})) "
        f"/ sum by ({_BY}) (rate(container_cpu_cfs_periods_total{{{_SEL}}}{_RATE}))"
    )


def _memory_vs_limit() -> str:
    return (
        f"max by ({_BY}) (container_memory_working_set_bytes{{{_SEL}}}) "
        f"/ max by ({_BY}) (container_spec_memory_limit_bytes{{{_SEL}}} > 0)"
    )


def build() -> dm.Dashboard:
    """Kubernetes workloads on GPU nodes."""
    d = g.dashboard(
        g.UID_KUBERNETES, "gpuslo / Kubernetes workloads on GPU nodes",
        tags=["kubernetes"], source=True,
        description="Containers on the GPU nodes: CPU throttling, memory working set against "
                    "limits, OOM kills and restarts, and which pods hold GPUs.",
    )
    d = d.with_variable(g.query_variable(
        "node", 'label_values(container_cpu_usage_seconds_total{image!=""}, node)',
        label="Node", multi=True))
    d = d.with_variable(g.query_variable(
        "namespace",
        'label_values(container_cpu_usage_seconds_total{node=~"$node", image!=""}, namespace)',
        label="Namespace", multi=True))

    d = d.with_row(g.row("Now"))
    d = d.with_panel(g.stat("Containers", [instant(
        f"count(container_start_time_seconds{{{_SEL}}})")], w=6))
    d = d.with_panel(g.stat("Throttled > 25 %", [instant(
        f"sum(({_throttling()}) > bool 0.25)")], w=6,
        thresholds=g.steps((None, "green"), (1, "orange")),
        description="Containers throttled in more than a quarter of their CFS periods."))
    d = d.with_panel(g.stat("Above 90 % of memory limit", [instant(
        f"sum(({_memory_vs_limit()}) > bool 0.9)")], w=6,
        thresholds=g.steps((None, "green"), (1, "orange"))))
    d = d.with_panel(g.stat("OOM kills in range", [instant(
        f"sum(increase(container_oom_events_total{{{_SEL}}}[$__range]))")], w=6,
        thresholds=g.steps((None, "green"), (1, "red"))))

    d = d.with_row(g.row("CPU"))
    d = d.with_panel(g.timeseries("CPU throttling ratio (top 10)", [q(
        f"topk(10, {_throttling()})", _LEGEND)], unit="percentunit", min_val=0, max_val=1,
        thresholds=g.steps((None, "green"), (0.25, "red")),
        description="Throttled CFS periods over all periods: a serving container throttled "
                    "here shows as TTFT on the inference dashboard."))
    d = d.with_panel(g.timeseries("CPU usage against limit (top 10)", [q(
        f"topk(10, sum by ({_BY}) (rate(container_cpu_usage_seconds_total{{{_SEL}}}{_RATE})) "
        f"/ max by ({_BY}) (container_spec_cpu_quota{{{_SEL}}} "
        f"/ container_spec_cpu_period{{{_SEL}}}))", _LEGEND)],
        unit="percentunit", min_val=0))

    d = d.with_row(g.row("Memory"))
    d = d.with_panel(g.timeseries("Working set against limit (top 10)", [q(
        f"topk(10, {_memory_vs_limit()})", _LEGEND)], unit="percentunit", min_val=0,
        max_val=1, thresholds=g.steps((None, "green"), (0.9, "red")),
        description="The kernel OOM-kills a container whose working set reaches its limit."))
    d = d.with_panel(g.timeseries("Working set (top 10)", [q(
        f"topk(10, max by ({_BY}) (container_memory_working_set_bytes{{{_SEL}}}))",
        _LEGEND)], unit="bytes"))

    d = d.with_row(g.row("OOM kills and restarts"))
    d = d.with_panel(g.table("OOM kills in the range", [instant(
        f"sum by ({_BY}) (increase(container_oom_events_total{{{_SEL}}}[$__range])) > 0")],
        w=12, rename={"Value": "OOM kills"}, sort_by="OOM kills", sort_desc=True))
    d = d.with_panel(g.table("Restarts in the range", [instant(
        f"count by ({_BY}) (last_over_time(container_start_time_seconds{{{_SEL}}}"
        "[$__range])) - 1")],
        w=12, rename={"Value": "restarts"}, sort_by="restarts", sort_desc=True,
        description="Container instances seen in the range, less one: each restart is a new "
                    "container id."))

    d = d.with_row(g.row("Pods holding GPUs"))
    d = d.with_panel(g.table("GPU pods", [
        instant('count by (namespace, pod) (DCGM_FI_DEV_GPU_UTIL{pod!="", '
                'namespace=~"$namespace"})'),
        instant(f"max by (namespace, pod) ({_throttling()})"),
        instant(f"max by (namespace, pod) ({_memory_vs_limit()})"),
    ], rename={"Value #A": "GPUs", "Value #B": "worst CPU throttling",
               "Value #C": "worst memory / limit"}, sort_by="worst CPU throttling",
        sort_desc=True, h=9,
        description="Pods that dcgm-exporter maps GPUs to, with their containers' worst "
                    "throttling and memory pressure.")
        .override_by_regexp("worst .*", [dm.DynamicConfigValue("unit", "percentunit")]))
    return g.finish(d)
