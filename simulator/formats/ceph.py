"""The Ceph mgr ``prometheus`` module's ``/metrics`` (Quincy-era layout).

Before Reef the mgr also served the OSD perf counters (``ceph_osd_op_*``); the
simulator keeps them here so one endpoint carries health, slow ops and op
latency.  Long-running averages are two *counter* families ``_sum``/``_count``,
``ceph_health_status`` is untyped, values print with Python ``repr`` (``1.0``).
The mgr answers 503 until its first collection: the server checks
:meth:`Fleet.ceph_ready`.
"""

# ruff: noqa: E501  (upstream help texts are kept on one line, verbatim)

from __future__ import annotations

from gpuslo.simulator.fleet import Fleet
from gpuslo.simulator.formats.exposition import Family, render


def _v(x: float) -> str:
    return repr(float(x))


def render_ceph(fleet: Fleet, ts_ms: int | None = None) -> str:
    """The active mgr's page."""
    osds = fleet.osds
    slow = sum(o.slow_ops for o in osds)
    fams: list[Family] = []

    def fam(name: str, kind: str, help_: str) -> Family:
        f = Family(name, kind, help_)
        fams.append(f)
        return f

    fam("ceph_health_status", "untyped", "Cluster health status").add([], _v(1 if slow else 0))
    f = fam("ceph_health_detail", "untyped",
            "healthcheck status by type (0=inactive, 1=active)")
    f.add([("name", "SLOW_OPS"), ("severity", "HEALTH_WARN")], _v(1 if slow else 0))
    fam("ceph_healthcheck_slow_ops", "gauge",
        "OSD or Monitor requests taking a long time to process").add([], _v(slow))
    f = fam("ceph_mon_quorum_status", "gauge", "Monitors in quorum")
    for i in range(3):
        f.add([("ceph_daemon", f"mon.ceph-{i}")], _v(1))
    f = fam("ceph_mgr_status", "gauge", "MGR status (0=standby, 1=active)")
    f.add([("ceph_daemon", "mgr.ceph-0")], _v(1))
    for name, help_, fn in (
        ("ceph_osd_up", "OSD status up", lambda o: 1 if o.up else 0),
        ("ceph_osd_in", "OSD status in", lambda o: 1),
        ("ceph_osd_weight", "OSD status weight", lambda o: 1),
    ):
        f = fam(name, "untyped", help_)
        for o in osds:
            f.add([("ceph_daemon", f"osd.{o.id}")], _v(fn(o)))
    for name, help_, attr in (
        ("ceph_osd_apply_latency_ms", "OSD stat apply_latency_ms", "apply_ms"),
        ("ceph_osd_commit_latency_ms", "OSD stat commit_latency_ms", "commit_ms"),
    ):
        f = fam(name, "gauge", help_)
        for o in osds:
            f.add([("ceph_daemon", f"osd.{o.id}")], _v(getattr(o, attr)))
    f = fam("ceph_osd_metadata", "untyped", "OSD Metadata")
    for o in osds:
        f.add([("back_iface", ""), ("ceph_daemon", f"osd.{o.id}"),
               ("cluster_addr", f"10.0.1.{10 + o.id}"), ("device_class", "ssd"),
               ("front_iface", ""), ("hostname", o.host), ("objectstore", "bluestore"),
               ("public_addr", f"10.0.0.{10 + o.id}"),
               ("ceph_version", "ceph version 17.2.7 (b12291d110049b2f35e32e0de30d70e9a4c060d2) quincy (stable)")],
              _v(1))
    for name, help_, key, scale in (
        ("ceph_osd_op_r", "Client read operations", "op_r", 1.0),
        ("ceph_osd_op_w", "Client write operations", "op_w", 1.0),
        ("ceph_osd_op_out_bytes", "Client operations total read size", "op_out_bytes", 1.0),
        ("ceph_osd_op_in_bytes", "Client operations total write size", "op_in_bytes", 1.0),
        ("ceph_osd_op_r_latency_sum", "Latency of read operation (excluding queue time)",
         "op_r_latency_sum", 1.0),
        ("ceph_osd_op_r_latency_count", "Latency of read operation (excluding queue time) Count",
         "op_r", 1.0),
        ("ceph_osd_op_w_latency_sum", "Latency of write operation (including queue time)",
         "op_w_latency_sum", 1.0),
        ("ceph_osd_op_w_latency_count", "Latency of write operation (including queue time) Count",
         "op_w", 1.0),
    ):
        f = fam(name, "counter", help_)
        for o in osds:
            v = o.counters.get(key, 0.0) * scale
            f.add([("ceph_daemon", f"osd.{o.id}")], _v(v if key.endswith("_sum") else int(v)))
    total = 6 * 7.68e12
    used = 0.41 * total
    fam("ceph_cluster_total_bytes", "gauge", "DF total_bytes").add([], _v(total))
    fam("ceph_cluster_total_used_bytes", "gauge", "DF total_used_bytes").add([], _v(used))
    fam("ceph_cluster_total_used_raw_bytes", "gauge", "DF total_used_raw_bytes").add([], _v(used))
    f = fam("ceph_pool_metadata", "untyped", "POOL Metadata")
    f.add([("pool_id", "1"), ("name", "datasets"), ("type", "replicated"), ("description", ""),
           ("compression_mode", "none")], _v(1))
    f = fam("ceph_pool_rd", "counter", "DF pool rd")
    f.add([("pool_id", "1")], _v(int(sum(o.counters.get("op_r", 0.0) for o in osds))))
    f = fam("ceph_pool_wr", "counter", "DF pool wr")
    f.add([("pool_id", "1")], _v(int(sum(o.counters.get("op_w", 0.0) for o in osds))))
    return render(fams, ts_ms)
