"""kubelet ``/metrics/resource``, ``/metrics/cadvisor`` and ``/stats/summary``.

Both metric pages carry an explicit millisecond timestamp on (almost) every
sample, as the real kubelet does.  The cAdvisor page has the traps a collector
must survive: pod-level cgroups and the pause sandbox as ``container=""``
series, and ``cpu="total"`` on CPU usage.
"""

# ruff: noqa: E501  (upstream help texts are kept on one line, verbatim)

from __future__ import annotations

import json
from datetime import UTC, datetime

from gpuslo.simulator.entities import Container, Node, Pod
from gpuslo.simulator.fleet import Fleet
from gpuslo.simulator.formats.exposition import Family, go_float, render

PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


def _containers(node: Node) -> list[tuple[Pod, Container]]:
    return [(p, c) for p in node.pods for c in p.containers]


def render_resource(fleet: Fleet, node: str, ts_ms: int) -> str:
    """``/metrics/resource`` (resource_metrics.go): node, pod and container CPU and memory."""
    n = fleet.node_by_name[node]
    pcs = _containers(n)
    fams: list[Family] = []

    def fam(name: str, kind: str, help_: str) -> Family:
        f = Family(name, kind, help_)
        fams.append(f)
        return f

    f = fam("container_cpu_usage_seconds_total", "counter",
            "[STABLE] Cumulative cpu time consumed by the container in core-seconds")
    for p, c in pcs:
        f.add([("container", c.pod.container), ("namespace", p.namespace), ("pod", p.name)],
              go_float(round(c.cpu_s, 6)))
    f = fam("container_memory_working_set_bytes", "gauge",
            "[STABLE] Current working set of the container in bytes")
    for p, c in pcs:
        f.add([("container", c.pod.container), ("namespace", p.namespace), ("pod", p.name)],
              go_float(int(c.mem_ws_bytes)))
    f = fam("container_start_time_seconds", "gauge",
            "[STABLE] Start time of the container since unix epoch in seconds")
    f.timestamped = False
    for p, c in pcs:
        f.add([("container", c.pod.container), ("namespace", p.namespace), ("pod", p.name)],
              go_float(int(c.start_s)))
    f = fam("node_cpu_usage_seconds_total", "counter",
            "[STABLE] Cumulative cpu time consumed by the node in core-seconds")
    f.add([], go_float(round(n.cpu_s, 6)))
    f = fam("node_memory_working_set_bytes", "gauge",
            "[STABLE] Current working set of the node in bytes")
    f.add([], go_float(int(sum(c.mem_ws_bytes for _, c in pcs) + 12 * 1024**3)))
    f = fam("pod_cpu_usage_seconds_total", "counter",
            "[STABLE] Cumulative cpu time consumed by the pod in core-seconds")
    for p in n.pods:
        f.add([("namespace", p.namespace), ("pod", p.name)],
              go_float(round(sum(c.cpu_s for c in p.containers), 6)))
    f = fam("pod_memory_working_set_bytes", "gauge",
            "[STABLE] Current working set of the pod in bytes")
    for p in n.pods:
        f.add([("namespace", p.namespace), ("pod", p.name)],
              go_float(int(sum(c.mem_ws_bytes for c in p.containers))))
    f = fam("resource_scrape_error", "gauge",
            "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise")
    f.timestamped = False
    f.add([], "0")
    return render(fams, ts_ms)


def _cgroup(p: Pod) -> str:
    qos = "burstable" if p.namespace != "batch" else "besteffort"
    return f"/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{p.uid.replace('-', '_')}.slice"


def render_cadvisor(fleet: Fleet, node: str, ts_ms: int) -> str:
    """``/metrics/cadvisor`` with kubelet's ``container/pod/namespace`` labels."""
    n = fleet.node_by_name[node]
    rows: list[tuple[list[tuple[str, str]], Container | None, Pod | None]] = []
    # Root cgroup: container="", pod="", namespace="".
    rows.append(([("container", ""), ("id", "/"), ("image", ""), ("name", ""),
                  ("namespace", ""), ("pod", "")], None, None))
    for p in n.pods:
        cg = _cgroup(p)
        rows.append(([("container", ""), ("id", cg), ("image", ""), ("name", ""),
                      ("namespace", p.namespace), ("pod", p.name)], None, p))
        sandbox = p.uid.replace("-", "")[:24]
        rows.append(([("container", ""), ("id", f"{cg}/cri-containerd-{sandbox}.scope"),
                      ("image", PAUSE_IMAGE), ("name", sandbox), ("namespace", p.namespace),
                      ("pod", p.name)], None, None))
        for c in p.containers:
            cid = (p.uid.replace("-", "") + c.pod.container.encode().hex())[-32:]
            rows.append(([("container", c.pod.container),
                          ("id", f"{cg}/cri-containerd-{cid}.scope"), ("image", c.image),
                          ("name", cid), ("namespace", p.namespace), ("pod", p.name)], c, None))

    def agg(c: Container | None, p: Pod | None, attr: str) -> float | None:
        if c is not None:
            return float(getattr(c, attr))
        if p is not None:
            return float(sum(getattr(x, attr) for x in p.containers))
        return None

    fams: list[Family] = []

    def per_row(name: str, kind: str, help_: str, attr: str, root: float | None,
                scale: float = 1.0, extra: tuple[tuple[str, str], ...] = (),
                quota_only: bool = False, stamped: bool = True) -> None:
        f = Family(name, kind, help_, timestamped=stamped)
        for labels, c, p in rows:
            if quota_only and (c is None or c.cpu_quota_cores <= 0):
                continue
            v = agg(c, p, attr)
            if v is None:
                if labels[1][1] != "/" or root is None:
                    continue  # the pause sandbox: no usage worth reporting
                v = root
            lbl = list(labels)
            for k, val in extra:
                lbl.insert(1, (k, val))
            f.add(sorted(lbl), go_float(round(v * scale, 6)))
        fams.append(f)

    total_cpu = n.cpu_s
    per_row("container_cpu_cfs_periods_total", "counter",
            "Number of elapsed enforcement period intervals.", "cfs_periods", None,
            quota_only=True)
    per_row("container_cpu_cfs_throttled_periods_total", "counter",
            "Number of throttled period intervals.", "cfs_throttled_periods", None,
            quota_only=True)
    per_row("container_cpu_cfs_throttled_seconds_total", "counter",
            "Total time duration the container has been throttled.", "cfs_throttled_s", None,
            quota_only=True)
    per_row("container_cpu_usage_seconds_total", "counter",
            "Cumulative cpu time consumed in seconds.", "cpu_s", total_cpu,
            extra=(("cpu", "total"),))
    per_row("container_memory_cache", "gauge", "Number of bytes of page cache memory.",
            "mem_cache_bytes", 64.0 * 1024**3)
    per_row("container_memory_rss", "gauge", "Size of RSS in bytes.", "mem_rss_bytes",
            96.0 * 1024**3)
    per_row("container_memory_usage_bytes", "gauge",
            "Current memory usage in bytes, including all memory regardless of when it was accessed",
            "mem_ws_bytes", 180.0 * 1024**3)
    per_row("container_memory_working_set_bytes", "gauge", "Current working set in bytes.",
            "mem_ws_bytes", 160.0 * 1024**3)
    per_row("container_oom_events_total", "counter",
            "Count of out of memory events observed for the container", "oom_events", 0.0)
    f = Family("container_spec_cpu_period", "gauge", "CPU period of the container.",
               timestamped=False)
    g = Family("container_spec_cpu_quota", "gauge", "CPU quota of the container.",
               timestamped=False)
    m = Family("container_spec_memory_limit_bytes", "gauge", "Memory limit for the container.",
               timestamped=False)
    s = Family("container_start_time_seconds", "gauge",
               "Start time of the container since unix epoch in seconds.", timestamped=False)
    for labels, cont, _pod in rows:
        if cont is None:
            continue
        if cont.cpu_quota_cores > 0:
            f.add(labels, "100000")
            g.add(labels, go_float(int(cont.cpu_quota_cores * 100000)))
        m.add(labels, go_float(int(cont.mem_limit_bytes)))
        s.add(labels, go_float(int(cont.start_s)))
    fams += [f, g, m, s]
    net_rx = Family("container_network_receive_bytes_total", "counter",
                    "Cumulative count of bytes received")
    net_tx = Family("container_network_transmit_bytes_total", "counter",
                    "Cumulative count of bytes transmitted")
    for labels, maybe_c, maybe_p in rows:
        if maybe_c is None and maybe_p is None and labels[2][1] == PAUSE_IMAGE:
            pod = next(x for x in n.pods if x.name == labels[5][1])
            lbl = sorted([*labels, ("interface", "eth0")])
            net_rx.add(lbl, go_float(int(sum(x.net_rx_bytes for x in pod.containers))))
            net_tx.add(lbl, go_float(int(sum(x.net_tx_bytes for x in pod.containers))))
    fams += [net_rx, net_tx]
    mc = Family("machine_cpu_cores", "gauge", "Number of logical CPU cores.", timestamped=False)
    mc.add([("boot_id", "b" * 8), ("machine_id", node), ("system_uuid", node)],
           go_float(n.cpu_cores))
    mm = Family("machine_memory_bytes", "gauge", "Amount of memory installed on the machine.",
                timestamped=False)
    mm.add([("boot_id", "b" * 8), ("machine_id", node), ("system_uuid", node)],
           go_float(n.mem_bytes))
    fams += [mc, mm]
    return render(sorted(fams, key=lambda x: x.name), ts_ms)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def summary(fleet: Fleet, node: str) -> dict[str, object]:
    """``/stats/summary`` (stats/v1alpha1) as a dict; every stats object has its own ``time``."""
    n = fleet.node_by_name[node]
    now = _iso(fleet.t)

    def cpu(rate: float, total_s: float) -> dict[str, object]:
        return {"time": now, "usageNanoCores": int(rate * 1e9),
                "usageCoreNanoSeconds": int(total_s * 1e9)}

    def mem(ws: float, limit: float | None) -> dict[str, object]:
        d: dict[str, object] = {"time": now, "usageBytes": int(ws * 1.1),
                                "workingSetBytes": int(ws), "rssBytes": int(ws * 0.8),
                                "pageFaults": int(ws / 4096 / 50), "majorPageFaults": 0}
        if limit:
            d["availableBytes"] = max(0, int(limit - ws))
        return d

    def fs(used: float) -> dict[str, object]:
        cap = 3.84e12
        return {"time": now, "availableBytes": int(cap - used), "capacityBytes": int(cap),
                "usedBytes": int(used), "inodesFree": 240_000_000, "inodes": 244_000_000,
                "inodesUsed": 4_000_000}

    pods = []
    for p in n.pods:
        rate = sum(c.cpu_rate for c in p.containers)
        tot = sum(c.cpu_s for c in p.containers)
        ws = sum(c.mem_ws_bytes for c in p.containers)
        pods.append({
            "podRef": {"name": p.name, "namespace": p.namespace, "uid": p.uid},
            "startTime": _iso(p.start_s),
            "containers": [
                {"name": c.pod.container, "startTime": _iso(c.start_s),
                 "cpu": cpu(c.cpu_rate, c.cpu_s), "memory": mem(c.mem_ws_bytes, c.mem_limit_bytes),
                 "rootfs": fs(2.0e9), "logs": fs(5.0e7)}
                for c in p.containers
            ],
            "cpu": cpu(rate, tot),
            "memory": mem(ws, None),
            "network": {"time": now, "name": "eth0",
                        "rxBytes": int(sum(c.net_rx_bytes for c in p.containers)), "rxErrors": 0,
                        "txBytes": int(sum(c.net_tx_bytes for c in p.containers)), "txErrors": 0},
            "volume": [],
            "ephemeral-storage": fs(2.1e9),
        })
    node_rate = sum(c.cpu_rate for p in n.pods for c in p.containers) + 3.0
    node_ws = sum(c.mem_ws_bytes for p in n.pods for c in p.containers) + 12 * 1024**3
    return {
        "node": {
            "nodeName": node,
            "systemContainers": [
                {"name": "kubelet", "startTime": _iso(n.boot_s), "cpu": cpu(0.25, 0.25 * 3600),
                 "memory": mem(2.0e8, None)},
                {"name": "runtime", "startTime": _iso(n.boot_s), "cpu": cpu(0.1, 0.1 * 3600),
                 "memory": mem(1.5e8, None)},
            ],
            "startTime": _iso(n.boot_s),
            "cpu": cpu(node_rate, n.cpu_s),
            "memory": mem(node_ws, n.mem_bytes),
            "network": {"time": now, "name": "eth0", "rxBytes": 0, "rxErrors": 0, "txBytes": 0,
                        "txErrors": 0, "interfaces": []},
            "fs": fs(4.0e11),
            "runtime": {"imageFs": fs(1.2e11)},
            "rlimit": {"time": now, "maxpid": 4_194_304, "curproc": 2100},
        },
        "pods": pods,
    }


def render_summary(fleet: Fleet, node: str) -> str:
    """``/stats/summary`` as the kubelet serves it (indented JSON)."""
    return json.dumps(summary(fleet, node), indent=2)
