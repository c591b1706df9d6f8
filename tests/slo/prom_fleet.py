"""A recorded fleet that feeds every catalog SLO, written as a Prometheus export.

Shared by the tests that hold the streaming engine against a real Prometheus
(Debian package) serving the same data, backfilled with ``promtool tsdb
create-blocks-from openmetrics``.  Every family is one a real exporter serves
(vLLM, dcgm-exporter, node_exporter), labelled as Prometheus stores it: the
exporter's labels plus ``job``, ``instance`` and the relabelled ``node``.

Values change in phases, so windows hold mixtures of good and bad: error and
latency ratios per 20-minute phase per model, hot and faulted GPU samples, IB
receive errors and slow disk reads in chosen scrape intervals.  Each scrape
interval ends at sample ``i``; phases are keyed by the interval, so a window's
expected numbers can be worked out from the same functions.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from servers import Server

from gpuslo.slo import conventions as cv
from gpuslo.slo.rules import slo_rule_groups, window_query
from gpuslo.slo.spec import SloSpec
from gpuslo.slo.windows import Severity

SCRAPE_S = 15
OFFSET_S = 7
PHASE_MIN = 20
PER_SCRAPE = 200  # requests per scrape interval and model
ERROR_RATIOS = (0.0005, 0.02, 0.3, 0.0, 0.01, 0.1, 0.001, 0.05, 0.0, 0.2, 0.003, 0.0)
FAST_RATIOS = (0.97, 0.9, 0.5, 0.99, 0.8, 0.95, 0.6, 0.99, 0.9, 0.7, 0.96, 0.99)
ITL_RATIOS = (0.995, 0.98, 0.999, 0.9, 0.99, 1.0, 0.97, 0.999, 0.95, 0.999, 1.0, 0.93)
HIT_RATIOS = (0.8, 0.7, 0.3, 0.75, 0.5, 0.9, 0.65, 0.2, 0.8, 0.7, 0.55, 0.85)
MODELS = ("llama", "qwen")
NODES = ("gpu-0", "gpu-1")


@dataclass
class Family:
    """One metric family: its type and its series' points, in export order."""

    name: str
    type: str
    # (sample name, labels, [(time, value)]) per series
    series: list[tuple[str, dict[str, str], list[tuple[datetime, float]]]] = field(
        default_factory=list)
    # histogram families: series that form one point (same labels but le) are listed together
    points: list[list[int]] = field(default_factory=list)


def phase(i: int, shift: int) -> int:
    """Which phase scrape interval ``i`` (ending at sample ``i``) belongs to."""
    minute = (i * SCRAPE_S - 1) // 60
    return (minute // PHASE_MIN + shift) % len(ERROR_RATIOS)


def error_ratio(i: int, model: int) -> float:
    """request-success's error ratio of scrape interval ``i`` for ``model``."""
    return round(ERROR_RATIOS[phase(i, 3 * model)] * PER_SCRAPE) / PER_SCRAPE


def slow_ratio(i: int, model: int) -> float:
    """ttft's error ratio (share slower than 0.5 s) of scrape interval ``i``."""
    return 1 - round(FAST_RATIOS[phase(i, 3 * model)] * PER_SCRAPE) / PER_SCRAPE


def _counter(n: int, start: float, inc: Callable[[int], float]) -> list[float]:
    out, v = [], start
    for i in range(n + 1):
        if i:
            v += inc(i)
        out.append(v)
    return out


def fleet(t0: datetime, hours: int) -> list[Family]:
    """The fleet's families over ``hours`` from ``t0`` (first sample at ``t0 + 7 s``)."""
    n = hours * 3600 // SCRAPE_S
    times = [t0 + timedelta(seconds=OFFSET_S + SCRAPE_S * i) for i in range(n + 1)]

    def pts(values: list[float]) -> list[tuple[datetime, float]]:
        return list(zip(times, values, strict=True))

    success = Family("vllm:request_success", "counter")
    hits = Family("vllm:prefix_cache_hits", "counter")
    queries = Family("vllm:prefix_cache_queries", "counter")
    ttft = Family("vllm:time_to_first_token_seconds", "histogram")
    itl = Family("vllm:inter_token_latency_seconds", "histogram")
    for m, model in enumerate(MODELS):
        target = {"instance": f"10.0.0.{m + 1}:8000", "job": "vllm", "node": NODES[m],
                  "model_name": model}
        bad = _counter(n, 10_000.0, lambda i, m=m: error_ratio(i, m) * PER_SCRAPE)
        ok = _counter(n, 50_000.0 + m,
                      lambda i, m=m: PER_SCRAPE - error_ratio(i, m) * PER_SCRAPE)
        success.series += [
            ("vllm:request_success_total", {**target, "finished_reason": "stop"}, pts(ok)),
            ("vllm:request_success_total", {**target, "finished_reason": "error"}, pts(bad))]
        q = _counter(n, 5e6, lambda i: 10_000.0)
        h = _counter(n, 3e6 + m, lambda i, m=m: HIT_RATIOS[phase(i, 5 * m)] * 10_000.0)
        queries.series.append(("vllm:prefix_cache_queries_total", dict(target), pts(q)))
        hits.series.append(("vllm:prefix_cache_hits_total", dict(target), pts(h)))
        for fam, le, ratios, shift in ((ttft, "0.5", FAST_RATIOS, 3 * m),
                                       (itl, "0.1", ITL_RATIOS, 7 * m)):
            total = _counter(n, 90_000.0, lambda i: float(PER_SCRAPE))
            fast = _counter(n, 80_000.0, lambda i, r=ratios, s=shift: float(
                round(r[phase(i, s)] * PER_SCRAPE)))
            base = fam.name
            first = len(fam.series)
            fam.series += [
                (f"{base}_bucket", {**target, "le": le}, pts(fast)),
                (f"{base}_bucket", {**target, "le": "+Inf"}, pts(total)),
                (f"{base}_count", dict(target), pts(total)),
                (f"{base}_sum", dict(target), pts([v * 0.03 for v in total])),
            ]
            fam.points.append(list(range(first, first + 4)))
    temp = Family("DCGM_FI_DEV_GPU_TEMP", "gauge")
    xid = Family("DCGM_FI_DEV_XID_ERRORS", "gauge")
    ib_err = Family("node_infiniband_port_errors_received", "counter")
    ib_pkt = Family("node_infiniband_port_packets_received", "counter")
    disk_time = Family("node_disk_read_time_seconds", "counter")
    disk_reads = Family("node_disk_reads_completed", "counter")
    for k, node in enumerate(NODES):
        dcgm = {"instance": f"10.0.1.{k + 1}:9400", "job": "dcgm", "node": node}
        for g in range(2):
            gpu = {**dcgm, "gpu": str(g), "UUID": f"GPU-{k}{g}aa"}
            # Hot samples: one in seven scrapes during some phases, on one GPU of each node.
            hot = [90.0 if g == k % 2 and phase(i, k) % 3 == 0 and i % 7 == 0 else 60.0 + g
                   for i in range(n + 1)]
            temp.series.append(("DCGM_FI_DEV_GPU_TEMP", gpu, pts(hot)))
            fault = [43.0 if g == 1 and (i // 11) % 17 == k else 0.0 for i in range(n + 1)]
            xid.series.append(("DCGM_FI_DEV_XID_ERRORS", gpu, pts(fault)))
        host = {"instance": f"{node}:9100", "job": "node", "node": node}
        port = {**host, "device": "mlx5_0", "port": "1"}
        ib_err.series.append(("node_infiniband_port_errors_received_total", port, pts(
            _counter(n, 12.0, lambda i, k=k: 2.0 if (i // 13) % 9 == k else 0.0))))
        ib_pkt.series.append(("node_infiniband_port_packets_received_total", port, pts(
            _counter(n, 1e9, lambda i: 1000.0))))
        disk = {**host, "device": "nvme0n1"}
        disk_reads.series.append(("node_disk_reads_completed_total", disk, pts(
            _counter(n, 1e6, lambda i: 50.0))))
        disk_time.series.append(("node_disk_read_time_seconds_total", disk, pts(
            _counter(n, 2e4, lambda i, k=k: 50.0 * (0.04 if (i // 5) % 6 == k else 0.01)))))
    return [success, hits, queries, ttft, itl, temp, xid, ib_err, ib_pkt, disk_time, disk_reads]


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))


def export_lines(families: list[Family]) -> Iterator[str]:
    """OpenMetrics lines (no ``# EOF``): each family's series in blocks, histogram points
    whole (every bucket, count and sum of one point at one timestamp), as Prometheus
    exports them."""
    for fam in families:
        yield f"# HELP {fam.name} Recorded by a Prometheus."
        yield f"# TYPE {fam.name} {fam.type}"
        groups = fam.points or [[j] for j in range(len(fam.series))]
        for group in groups:
            members = [fam.series[j] for j in group]
            for p in range(len(members[0][2])):
                for name, labels, points in members:
                    t, v = points[p]
                    yield f"{name}{{{_labels(labels)}}} {v!r} {t.timestamp():.3f}"


def write_export(families: list[Family], path: Path) -> None:
    """The fleet as an OpenMetrics file promtool backfills."""
    with path.open("w", encoding="utf-8") as f:
        for line in export_lines(families):
            f.write(line + "\n")
        f.write("# EOF\n")


def query_range(server: Server, expr: str, start: datetime, end: datetime,
                step: timedelta) -> dict[tuple[float, str], float]:
    """``{(unix time, scope key): value}`` of a range query (scope: every result label)."""
    q = urllib.parse.urlencode({"query": expr, "start": start.timestamp(),
                                "end": end.timestamp(), "step": step.total_seconds()})
    try:
        doc = server.get_json(f"/api/v1/query_range?{q}")
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{exc}: {exc.read().decode(errors='replace')}\n{expr}") from exc
    assert doc["status"] == "success", doc
    out: dict[tuple[float, str], float] = {}
    for series in doc["data"]["result"]:
        scope = cv.scope_key({k: v for k, v in series["metric"].items() if k != "__name__"})
        for t, v in series["values"]:
            out[(float(t), scope)] = float(v)
    return out


RECORDING = re.compile(r"slo:sli_error:ratio_rate(\w+)\{[^}]*\}")


def page_alert_expr(spec: SloSpec) -> str:
    """The generated page alert's expr with each recording replaced by its query."""
    groups = {g["name"]: g["rules"] for g in slo_rule_groups(spec)}
    (page,) = [r for r in groups[cv.alert_group(spec.id)]
               if r["labels"][cv.LABEL_SEVERITY] == Severity.PAGE.value]
    assert "for" not in page  # alertAfter 0: firing is the condition holding
    windows = {cv.duration_label(w): w for t in spec.windows for w in (t.short, t.long)}
    expr = RECORDING.sub(lambda m: f"({window_query(spec, windows[m[1]])})", page["expr"])
    assert "slo:" not in expr
    return str(expr)
