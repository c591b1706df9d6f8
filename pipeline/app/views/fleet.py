"""The demo's fleet panel: per-node signals read back from the *consumed* samples.

A fault is visible here only if its symptoms really went through the pipeline
(scrape → Kafka → consumer), which is the point of the demo.  Accumulation
(:class:`FleetSignals`) is a plain object fed frames, testable without a
terminal; :class:`DemoTail` renders it with the simulator's ground truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl
from rich.console import Group
from rich.table import Table

from gpuslo.exporters.web.series import NodeHealth
from gpuslo.pipeline.app.views.stream import SampleTail
from gpuslo.slo.budget import SloReport

_IB_ERRORS = frozenset(
    {
        "node_infiniband_symbol_error_total",
        "node_infiniband_port_errors_received_total",
        "node_infiniband_link_downed_total",
        "node_infiniband_link_error_recovery_total",
        "node_infiniband_local_link_integrity_errors_total",
        "node_infiniband_port_receive_remote_physical_errors_total",
        "node_infiniband_out_of_buffer_drops_total",
        "node_infiniband_packet_sequence_errors_total",
    }
)
_KV_USAGE = frozenset(
    {"vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage"}
)
_TTFT = "time_to_first_token_seconds"
_GPU_GAUGES = {
    "DCGM_FI_DEV_GPU_TEMP": "temp",
    "DCGM_FI_DEV_GPU_UTIL": "util",
    "DCGM_FI_DEV_POWER_USAGE": "power",
    "DCGM_FI_DEV_XID_ERRORS": "xid",
}
_WATCHED = frozenset({*_IB_ERRORS, *_KV_USAGE, *_GPU_GAUGES, "node_infiniband_state_id"})

Labels = tuple[tuple[str, str], ...]


@dataclass
class NodeSignals:
    """What the consumed samples say about one node; GPU values are from its latest scrape."""

    dcgm_ts: datetime | None = None
    gpu: dict[str, dict[str, tuple[datetime, float]]] = field(default_factory=dict)
    gpus_seen: set[str] = field(default_factory=set)
    ib_errors: float = 0.0  # increase of the port error counters since the demo started
    _ib_last: dict[tuple[str, Labels], float] = field(default_factory=dict)
    ports: dict[Labels, float] = field(default_factory=dict)  # state_id per port
    kv: dict[Labels, float] = field(default_factory=dict)  # KV-cache usage per replica
    _ttft_last: dict[tuple[str, Labels], tuple[float, float]] = field(default_factory=dict)
    ttft: dict[tuple[str, Labels], tuple[float, float]] = field(default_factory=dict)

    def current(self, name: str) -> dict[str, float]:
        """``gpu -> value`` of one DCGM gauge in the node's latest scrape."""
        out: dict[str, float] = {}
        for gpu, values in self.gpu.items():
            tv = values.get(name)
            if tv is not None and tv[0] == self.dcgm_ts:
                out[gpu] = tv[1]
        return out

    @property
    def gpus(self) -> int:
        """GPUs in the latest scrape (one that fell off the bus is missing)."""
        return len(self.current("temp"))

    @property
    def lost(self) -> list[str]:
        """GPUs seen before but absent from the latest scrape."""
        return sorted(self.gpus_seen - set(self.current("temp")), key=int)

    @property
    def xid(self) -> dict[str, int]:
        """Non-zero last-XID codes by GPU."""
        return {g: int(v) for g, v in self.current("xid").items() if v}

    @property
    def temp_max(self) -> float | None:
        return max(self.current("temp").values(), default=None)

    @property
    def util_mean(self) -> float | None:
        u = self.current("util")
        return sum(u.values()) / len(u) if u else None

    @property
    def ports_down(self) -> int:
        """Ports whose state is not ACTIVE (4)."""
        return sum(1 for v in self.ports.values() if v != 4)

    @property
    def kv_max(self) -> float | None:
        return max(self.kv.values(), default=None)

    @property
    def ttft_mean_s(self) -> float | None:
        """Mean TTFT over each replica's last scrape interval (Δsum / Δcount)."""
        ds = sum(s for s, _ in self.ttft.values())
        dc = sum(c for _, c in self.ttft.values())
        return ds / dc if dc > 0 else None


@dataclass
class FleetSignals:
    """Per-node signals folded from sample frames (pure: testable without a fleet)."""

    nodes: dict[str, NodeSignals] = field(default_factory=dict)

    def add(self, frame: pl.DataFrame) -> None:
        if frame.is_empty():
            return
        metric = pl.col("metric")
        rows = frame.filter(
            metric.is_in(list(_WATCHED))
            | (
                (metric.str.ends_with(f"{_TTFT}_sum") | metric.str.ends_with(f"{_TTFT}_count"))
                # upstream rows only: a normalised gpuslo_* copy would be counted twice
                & ~metric.str.starts_with("gpuslo_")
            )
        ).select("ts", "node", "metric", "value", "labels")
        ttft: dict[tuple[str, str, Labels], dict[str, float]] = {}
        for ts, node, name, value, labels in rows.iter_rows():
            ns = self.nodes.setdefault(node, NodeSignals())
            lbl: Labels = tuple((d["name"], d["value"]) for d in labels)
            if name in _GPU_GAUGES:
                gpu = dict(lbl).get("gpu", "?")
                ns.gpu.setdefault(gpu, {})[_GPU_GAUGES[name]] = (ts, value)
                ns.gpus_seen.add(gpu)
                if ns.dcgm_ts is None or ts > ns.dcgm_ts:
                    ns.dcgm_ts = ts
            elif name in _IB_ERRORS:
                prev = ns._ib_last.get((name, lbl))
                if prev is not None:
                    ns.ib_errors += value - prev if value >= prev else value
                ns._ib_last[(name, lbl)] = value
            elif name == "node_infiniband_state_id":
                ns.ports[lbl] = value
            elif name in _KV_USAGE:
                ns.kv[lbl] = value
            else:
                base, _, part = name.rpartition("_")
                ttft.setdefault((node, base, lbl), {})[part] = value
        for (node, base, lbl), sc in ttft.items():
            if "sum" not in sc or "count" not in sc:
                continue
            ns = self.nodes[node]
            prev_sc = ns._ttft_last.get((base, lbl))
            ns._ttft_last[(base, lbl)] = (sc["sum"], sc["count"])
            if prev_sc is not None and sc["count"] > prev_sc[1]:
                ns.ttft[(base, lbl)] = (sc["sum"] - prev_sc[0], sc["count"] - prev_sc[1])


def _hms(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S")


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or math.isnan(v) else format(v, spec)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.2f}s"


@dataclass
class DemoTail(SampleTail):
    """The demo's view: the stream totals plus the fleet panel, fed the same frames."""

    signals: FleetSignals = field(default_factory=FleetSignals)
    faults: list[dict[str, object]] = field(default_factory=list)  # the fleet's ground truth
    now_s: float = 0.0  # simulated time when the view was last refreshed
    fleet_name: str = "fleet"
    fault_nodes: dict[str, set[str]] = field(default_factory=dict)  # target -> nodes
    endpoints: int = 0  # endpoints scraped
    endpoints_down: int = 0  # of which the last scrape failed (a crashed replica answers 503)
    reports: tuple[SloReport, ...] = ()  # the SLO engine's last evaluation, when the demo ends

    def add(self, frame: pl.DataFrame) -> None:
        super().add(frame)
        self.signals.add(frame)

    def active_faults(self) -> list[dict[str, object]]:
        """Faults whose cause is present at ``now_s``."""
        return [f for f in self.faults if float(f["start_s"]) <= self.now_s < float(f["end_s"])]  # type: ignore[arg-type]

    def fault_table(self) -> Table:
        t = Table(
            title=f"faults: {len(self.active_faults())} active; endpoints down: "
            f"{self.endpoints_down}/{self.endpoints}",
            title_justify="left",
        )
        for col in ("state", "fault", "target", "start", "end", "intensity"):
            t.add_column(col)
        for f in self.faults:
            start, end = float(f["start_s"]), float(f["end_s"])  # type: ignore[arg-type]
            state = (
                "[bold red]ACTIVE[/]"
                if start <= self.now_s < end
                else "scheduled"
                if self.now_s < start
                else "[dim]over[/]"
            )
            t.add_row(
                state,
                str(f["kind"]),
                str(f["target"]),
                _hms(start),
                _hms(end),
                f"{f['intensity']:g}",
            )
        return t

    def fleet_table(self) -> Table:
        hot: dict[str, list[str]] = {}
        for f in self.active_faults():
            for n in self.fault_nodes.get(str(f["target"]), set()):
                hot.setdefault(n, []).append(str(f["kind"]))
        sim = datetime.fromtimestamp(self.now_s, UTC).strftime("%Y-%m-%d %H:%M:%S")
        t = Table(title=f"{self.fleet_name} at {sim} UTC (simulated)", title_justify="left")
        # Short headings: the panel must fit an 80-column terminal.
        for col, justify in (
            ("node", "left"),
            ("GPUs", "right"),
            ("util%", "right"),
            ("temp", "right"),
            ("XID", "left"),
            ("IB err", "right"),
            ("down", "right"),
            ("KV", "right"),
            ("TTFT", "right"),
            ("faults", "left"),
        ):
            t.add_column(
                col,
                justify=justify,  # type: ignore[arg-type]
                no_wrap=col in ("node", "TTFT"),
                overflow="fold",
            )
        for name in sorted(self.signals.nodes, key=lambda n: (len(n), n)):
            s = self.signals.nodes[name]
            if not s.gpus_seen and not s.kv and not s.ports:
                continue
            xid = ", ".join(f"gpu{g}:{c}" for g, c in sorted(s.xid.items()))
            if s.lost:
                xid = ", ".join([xid, *(f"gpu{g}:gone" for g in s.lost)]).strip(", ")
            temp = s.temp_max
            t.add_row(
                name,
                f"{s.gpus}/{len(s.gpus_seen)}" if s.gpus_seen else "-",
                _fmt(s.util_mean, ".0f"),
                ("[red]" if temp is not None and temp >= 85 else "") + _fmt(temp, ".0f"),
                f"[red]{xid}[/]" if xid else "",
                _fmt(s.ib_errors, ".0f") if s.ports else "-",
                str(s.ports_down) if s.ports else "-",
                _fmt(s.kv_max, ".2f"),
                _duration(s.ttft_mean_s),
                f"[red]{', '.join(sorted(set(hot.get(name, []))))}[/]" if name in hot else "",
            )
        return t

    def fleet_nodes(self) -> list[NodeHealth]:
        """The fleet panel's figures per node, for the status page's Fleet view."""
        hot: dict[str, set[str]] = {}
        for f in self.active_faults():
            for n in self.fault_nodes.get(str(f["target"]), set()):
                hot.setdefault(n, set()).add(f"{f['kind']} {f['target']}")
        out = []
        for name in sorted(self.signals.nodes, key=lambda n: (len(n), n)):
            s = self.signals.nodes[name]
            if not s.gpus_seen and not s.kv and not s.ports:
                continue
            out.append(NodeHealth(
                node=name,
                gpus=s.gpus if s.gpus_seen else None,
                gpus_seen=len(s.gpus_seen) or None,
                util_pct=s.util_mean,
                temp_max_c=s.temp_max,
                xid=s.xid,
                gpus_lost=tuple(s.lost),
                ib_errors=s.ib_errors if s.ports else None,
                ports_down=s.ports_down if s.ports else None,
                kv_usage_max=s.kv_max,
                ttft_mean_s=s.ttft_mean_s,
                faults=tuple(sorted(hot.get(name, ()))),
            ))
        return out

    def render(self) -> Group:
        """Fleet panel, fault list, then the per-source stream totals."""
        return Group(self.fleet_table(), self.fault_table(), self.source_table())


__all__ = ["DemoTail", "FleetSignals", "NodeSignals"]
