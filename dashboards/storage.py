"""Storage: local disks (node_exporter), Ceph (the mgr's prometheus module), Lustre.

Disk latency is time spent over operations completed, both counters from
``/proc/diskstats``; busy time is ``io_time`` per second.  Ceph's long-running
averages are ``_sum``/``_count`` counter pairs (seconds over operations); its
``ceph_osd_{apply,commit}_latency_ms`` are gauges in milliseconds.  The Lustre row
reads whamcloud's lustrefs-exporter (capacities in KiB) and stays collapsed:
only sites that run Lustre have it.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Row
from grafana_foundation_sdk.models import dashboard as dm

from gpuslo.dashboards import common as g
from gpuslo.dashboards.common import instant, q

_SEL = 'instance=~"$node", device=~"$device"'
_LEGEND = "{{instance}} {{device}}"
_RATE = "[$__rate_interval]"

_CEPH_HEALTH = g.value_text({
    "0": ("HEALTH_OK", "green"), "1": ("HEALTH_WARN", "orange"), "2": ("HEALTH_ERR", "red"),
})
_UP = g.value_text({"0": ("down", "red"), "1": ("up", "green")})


def _disk(metric: str) -> str:
    return f"rate(node_disk_{metric}{{{_SEL}}}{_RATE})"


def _lustre_row() -> Row:
    t = "[$__rate_interval]"
    return (
        Row("Lustre (where present)").collapsed(True)
        .with_panel(g.stat("Lustre health", [instant("min(lustre_health_healthy)")], w=6,
                           mappings=[g.value_text({"0": ("unhealthy", "red"),
                                                   "1": ("healthy", "green")})]))
        .with_panel(g.stat("Connected clients", [instant(
            "sum(lustre_connected_clients)")], w=6))
        .with_panel(g.table("Capacity used per target", [instant(
            "1 - lustre_available_kilobytes / lustre_capacity_kilobytes")], w=12, h=4,
            unit="percentunit", rename={"Value": "used"}, sort_by="used", sort_desc=True))
        .with_panel(g.timeseries("Read and write throughput per target", [
            q(f"sum by (component, target) (rate(lustre_read_bytes_total{t}))",
              "read {{target}}"),
            q(f"sum by (component, target) (rate(lustre_write_bytes_total{t}))",
              "write {{target}}")], unit="Bps"))
        .with_panel(g.timeseries("Metadata operations", [q(
            f"topk(10, sum by (target, operation) (rate(lustre_stats_total{t})))",
            "{{target}} {{operation}}")], unit="ops"))
    )


def build() -> dm.Dashboard:
    """Storage."""
    d = g.dashboard(
        g.UID_STORAGE, "gpuslo / Storage", tags=["storage", "ceph", "lustre"], source=True,
        description="Local disks (latency, IOPS, busy time), Ceph (health, slow ops, OSD "
                    "latency) and Lustre where present.",
    )
    d = d.with_variable(g.query_variable(
        "node", "label_values(node_disk_info, instance)", label="Node", multi=True))
    d = d.with_variable(g.query_variable(
        "device", 'label_values(node_disk_info{instance=~"$node"}, device)', label="Disk",
        multi=True))

    d = d.with_row(g.row("Local disks"))
    d = d.with_panel(g.timeseries("Read latency", [q(
        f"{_disk('read_time_seconds_total')} / {_disk('reads_completed_total')}", _LEGEND)],
        unit="s", thresholds=g.steps((None, "green"), (0.02, "red")),
        description="Mean time per completed read; the storage-read-latency SLO counts "
                    "minutes above 20 ms."))
    d = d.with_panel(g.timeseries("Write latency", [q(
        f"{_disk('write_time_seconds_total')} / {_disk('writes_completed_total')}",
        _LEGEND)], unit="s"))
    d = d.with_panel(g.timeseries("IOPS", [
        q(_disk("reads_completed_total"), "read " + _LEGEND),
        q(_disk("writes_completed_total"), "write " + _LEGEND)], unit="iops"))
    d = d.with_panel(g.timeseries("Throughput", [
        q(_disk("read_bytes_total"), "read " + _LEGEND),
        q(_disk("written_bytes_total"), "write " + _LEGEND)], unit="Bps"))
    d = d.with_panel(g.timeseries("Busy time", [q(_disk("io_time_seconds_total"), _LEGEND)],
                                  unit="percentunit", min_val=0, max_val=1,
                                  thresholds=g.steps((None, "green"), (0.9, "red")),
                                  description="Share of time with I/O in flight; 100 % is "
                                              "saturated for a single-queue device."))
    d = d.with_panel(g.timeseries("I/Os in flight", [q(
        f"node_disk_io_now{{{_SEL}}}", _LEGEND)], unit="short"))

    d = d.with_row(g.row("Ceph"))
    d = d.with_panel(g.stat("Cluster health", [instant("max(ceph_health_status)")], w=4,
                            mappings=[_CEPH_HEALTH],
                            thresholds=g.steps((None, "green"), (1, "orange"), (2, "red"))))
    d = d.with_panel(g.stat("Slow ops", [instant("max(ceph_healthcheck_slow_ops)")], w=4,
                            thresholds=g.steps((None, "green"), (1, "red"))))
    d = d.with_panel(g.stat("OSDs up", [instant("sum(ceph_osd_up)")], w=4,
                            description="Of sum(ceph_osd_in) in the cluster."))
    d = d.with_panel(g.stat("OSDs down", [instant("sum(ceph_osd_up == bool 0)")],
                            w=4, thresholds=g.steps((None, "green"), (1, "red"))))
    d = d.with_panel(g.stat("Capacity used", [instant(
        "sum(ceph_cluster_total_used_bytes) / sum(ceph_cluster_total_bytes)")],
        unit="percentunit", w=8, thresholds=g.steps((None, "green"), (0.75, "orange"),
                                                      (0.85, "red"))))
    d = d.with_panel(g.table("Active health checks", [instant("ceph_health_detail == 1")],
                             w=12, hide=["Value"], description="Ceph's own health checks "
                             "(SLOW_OPS, OSD_DOWN, ...) that are active now."))
    d = d.with_panel(g.timeseries("Slow ops over time", [
        q("ceph_healthcheck_slow_ops", "slow ops")], unit="short", w=12))
    d = d.with_panel(g.timeseries("OSD write latency", [q(
        f"rate(ceph_osd_op_w_latency_sum{_RATE}) / rate(ceph_osd_op_w_latency_count{_RATE})",
        "{{ceph_daemon}}")], unit="s"))
    d = d.with_panel(g.timeseries("OSD read latency", [q(
        f"rate(ceph_osd_op_r_latency_sum{_RATE}) / rate(ceph_osd_op_r_latency_count{_RATE})",
        "{{ceph_daemon}}")], unit="s"))
    d = d.with_panel(g.timeseries("OSD commit and apply latency", [
        q("ceph_osd_commit_latency_ms / 1000", "commit {{ceph_daemon}}"),
        q("ceph_osd_apply_latency_ms / 1000", "apply {{ceph_daemon}}")], unit="s"))
    d = d.with_panel(g.timeseries("Client operations", [
        q(f"sum(rate(ceph_osd_op_r{_RATE}))", "read"),
        q(f"sum(rate(ceph_osd_op_w{_RATE}))", "write")], unit="ops"))

    d = d.with_row(_lustre_row())
    return g.finish(d)
