"""RCA on history exported the way a Prometheus stores it, topology from labels alone.

A small simulated fleet is scraped every 30 s and written out as one text
exposition file with timestamps, each series labelled ``job`` and ``instance``
(the exporter's ``IP:port``, no ``node`` label), engine series with the
``namespace``/``pod`` Kubernetes discovery adds: what ``promtool`` or a remote
read would give.  ``collectors.history.read_exposition`` reads it back
(upstream names plus the normalised ``gpuslo_*`` rows), and the backtest helper
must name the GPU that overheated, on the node its DCGM ``Hostname`` says,
although every other source knows that node only by its IP.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from gpuslo.anomaly.rca import RcaAlert, causes_for_alerts
from gpuslo.collectors.exposition import parse_exposition
from gpuslo.collectors.history import read_exposition
from gpuslo.simulator import Fleet, FleetSpec, ServiceSpec, TrainingSpec
from gpuslo.simulator.endpoints import endpoints
from gpuslo.simulator.faults import FaultSpec

KINDS = {"dcgm": "dcgm:9400", "node_exporter": "node:9100", "kubelet_cadvisor": "kubelet:10250",
         "vllm": "vllm:8000"}
FAULT_MIN, MINUTES = 16, 22


def _ip(node: str) -> str:
    return f"10.0.0.{int(node.split('-')[1]) + 1}"


def _fmt_labels(labels: list[dict[str, str]]) -> str:
    inner = ",".join(f'{x["name"]}="{x["value"]}"' for x in labels)
    return "{" + inner + "}"


def _export(path: Path) -> tuple[str, str]:
    spec = FleetSpec(nodes=3, gpus_per_node=4, seed=3,
                     services=(ServiceSpec("llama", "vllm", replicas=2, tp=1, base_rps=8.0,
                                           kv_capacity_tokens=150_000.0),),
                     training=TrainingSpec(nodes=1))
    fleet = Fleet(spec)
    fleet.advance(fleet.t + 300)
    hot = fleet.replicas[0].gpus[0]
    fleet.inject(FaultSpec("thermal_throttle", f"{hot.node}/gpu{hot.index}",
                           fleet.t + FAULT_MIN * 60, 900.0, 1.0))
    pods = {r.key: r.pod for r in fleet.replicas}
    frames = []
    for _ in range(MINUTES * 2):
        fleet.advance(fleet.t + 30)
        ts = int(fleet.t * 1000)
        for ep in endpoints(fleet):
            if ep.kind not in KINDS:
                continue
            body = ep.render(fleet, ts)
            if body is None:
                continue
            f = parse_exposition(body, node=ep.node, source="", scrape_ts_ms=ts)
            job, port = KINDS[ep.kind].split(":")
            extra = [{"name": "job", "value": job},
                     {"name": "instance", "value": f"{_ip(ep.node)}:{port}"}]
            if ep.entity in pods:
                extra += [{"name": "namespace", "value": pods[ep.entity].namespace},
                          {"name": "pod", "value": pods[ep.entity].name}]
            f = f.with_columns(labels=pl.concat_list([
                pl.col("labels"), pl.lit(extra, dtype=f.schema["labels"])]).list.eval(
                pl.element().sort_by(pl.element().struct.field("name"))))
            frames.append(f)
    _write(pl.concat(frames), path)
    return hot.uuid, _ip(hot.node)


def _family(metric: str, kind: str) -> str:
    """The OpenMetrics family name: histogram suffixes and a counter's ``_total`` off."""
    for sfx in ("_bucket", "_count", "_sum"):
        if kind.startswith("histogram") and metric.endswith(sfx):
            return metric[: -len(sfx)]
    return metric.removesuffix("_total") if kind == "counter" else metric


def _write(frame: pl.DataFrame, path: Path) -> None:
    """Families in blocks; a histogram's points whole (buckets, count, sum per time)."""
    # ``*_created`` gauges (prometheus_client's) would clash with their counters' names
    frame = frame.with_columns(kind=pl.col("kind").cast(pl.String)).filter(
        ~pl.col("metric").str.ends_with("_created"))
    lines: list[str] = []
    by_family: dict[str, list[tuple[object, ...]]] = defaultdict(list)
    types: dict[str, str] = {}
    for metric, kind, labels, value, ts in frame.select(
            "metric", "kind", "labels", "value", "ts").iter_rows():
        fam = _family(metric, kind)
        types[fam] = "histogram" if kind.startswith("histogram") else kind
        by_family[fam].append((metric, kind, labels, value, ts))
    order = {"histogram_bucket": 0, "histogram_count": 1, "histogram_sum": 2}
    for fam, rows in by_family.items():
        lines.append(f"# TYPE {fam} {types[fam]}")

        def key(r: tuple[object, ...]) -> tuple[object, ...]:
            labels = r[2]
            assert isinstance(labels, list)
            base = _fmt_labels([x for x in labels if x["name"] != "le"])
            le = next((float(x["value"]) for x in labels if x["name"] == "le"), 0.0)
            return (base, r[4], order.get(str(r[1]), 0), le)

        for metric, _kind, labels, value, ts in sorted(rows, key=key):
            lines.append(f"{metric}{_fmt_labels(labels)} {value!r} "  # type: ignore[arg-type]
                         f"{ts.timestamp():.3f}")  # type: ignore[attr-defined]
    lines.append("# EOF")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[pl.DataFrame, str, str]:
    path = tmp_path_factory.mktemp("export") / "fleet.om"
    uuid, ip = _export(path)
    return read_exposition(path), uuid, ip


def test_the_export_names_nodes_by_ip_except_dcgm(export: tuple[pl.DataFrame, str,
                                                               str]) -> None:
    frame, _, ip = export
    nodes = set(frame["node"].unique())
    assert ip in nodes and not any(n.startswith("node-") for n in nodes)


def test_rca_on_the_export_names_the_hot_gpu_on_its_host(
        export: tuple[pl.DataFrame, str, str]) -> None:
    frame, uuid, ip = export
    start = frame["ts"].min()
    assert isinstance(start, datetime)
    fired = start + timedelta(minutes=FAULT_MIN + 4)
    (causes,) = causes_for_alerts(frame, [RcaAlert("gpu-thermal-headroom", {"node": ip}, "page",
                                                   fired)])
    assert causes, "no causes"
    top = causes[0]
    assert top.entity == uuid and top.entity_kind == "gpu" and top.kind == "cause"
    assert top.node.startswith("node-")  # the DCGM host name, not the exporter's IP
    assert "temperature" in top.evidence or "throttl" in top.evidence
