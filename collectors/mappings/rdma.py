"""RDMA (InfiniBand / RoCE): the sysfs counters, read directly, or node_exporter's copy.

Source of truth is ``<sysfs>/class/infiniband/<dev>/ports/<n>/``:
``counters/*`` (PMA port counters), ``hw_counters/*`` (driver counters, mlx5
RoCE congestion and transport errors; some drivers also have a device-level
``<dev>/hw_counters/``), and the text files ``state`` (``4: ACTIVE``),
``phys_state`` (``5: LinkUp``), ``rate`` (``100 Gb/sec (4X EDR)``),
``link_layer``.  The root is a parameter so the DaemonSet reads the host's
``/sys`` mounted read-only and tests read a fixture tree.

What the reader has to get right:

* ``port_xmit_data``/``port_rcv_data`` count **4-octet words**; the upstream
  row keeps the raw number and the normalised ``gpuslo_rdma_port_*_bytes_total``
  multiplies by 4.  (node_exporter already multiplied: its rows scale by 1.)
* Narrow PMA error counters (4, 8, 16, 32 bits) **saturate** at their maximum
  instead of wrapping; a pegged counter no longer counts, which
  :func:`saturation_rows` reports and :func:`counter_increase` respects.  The
  mlx5 Q counters in ``hw_counters`` are 32-bit and **wrap**.
* A file may read ``N/A (no PMA)`` (e.g. Intel i40iw): counted as
  unavailable, not an error and not a crash; a missing, unreadable or
  malformed file is reported for that series while the rest is still read.
* ``hw_counters/lifespan`` is the counters' refresh period in ms, a gauge.

Raw row names: ``infiniband_port_counters_<file>``,
``infiniband_port_hw_counters_<file>``, ``infiniband_hw_counters_<file>``
(device level), ``infiniband_port_state``, ``infiniband_port_phys_state``,
``infiniband_port_rate_gbps`` and ``infiniband_device_info``; labels
``device`` and ``port``.  The file name survives verbatim in the metric name.
Entity = ``device/port`` (``device`` for device-level counters).

Both paths run on the scrape engine with :class:`RdmaMapping`: each sysfs root
is a ``file://`` target read by :class:`~gpuslo.collectors.scrape.files.SysfsReader`
in a worker thread, each node_exporter page an HTTP target; per-file problems
are counted in the target's health rows.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace

import polars as pl

from gpuslo.collectors.base import Partial, ScrapeTarget, target_path
from gpuslo.collectors.exposition import ShapeCache
from gpuslo.collectors.mappings.normalise import (
    Derivation,
    Signal,
    layout_derivation,
    normalised_derivation,
    normalised_rows,
    ref,
    signal,
)
from gpuslo.collectors.mappings.prometheus import PrometheusMapping
from gpuslo.pipeline.config import RdmaCollectorConfig
from gpuslo.pipeline.schema import COLUMNS, KIND_DTYPE, LABEL_DTYPE, Kind, empty_frame, label

SOURCE = "rdma"
NODE_EXPORTER_PREFIX = "node_infiniband_"
NA_VALUE = "N/A (no PMA)"

PORT_COUNTER_PREFIX = "infiniband_port_counters_"
PORT_HW_PREFIX = "infiniband_port_hw_counters_"
DEVICE_HW_PREFIX = "infiniband_hw_counters_"

# (sysfs file in counters/, node_exporter name, normalised suffix, sysfs scale, unit, width bits)
# width None = 64-bit (extended) counter that neither saturates nor wraps in practice.
_PORT_COUNTERS: tuple[tuple[str, str, str, float, str, int | None], ...] = (
    ("port_xmit_data", "node_infiniband_port_data_transmitted_bytes_total",
     "port_xmit_bytes_total", 4.0, "bytes", None),
    ("port_rcv_data", "node_infiniband_port_data_received_bytes_total",
     "port_rcv_bytes_total", 4.0, "bytes", None),
    ("port_xmit_packets", "node_infiniband_port_packets_transmitted_total",
     "port_xmit_packets_total", 1.0, "packets", None),
    ("port_rcv_packets", "node_infiniband_port_packets_received_total",
     "port_rcv_packets_total", 1.0, "packets", None),
    ("unicast_xmit_packets", "node_infiniband_unicast_packets_transmitted_total",
     "unicast_xmit_packets_total", 1.0, "packets", None),
    ("unicast_rcv_packets", "node_infiniband_unicast_packets_received_total",
     "unicast_rcv_packets_total", 1.0, "packets", None),
    ("multicast_xmit_packets", "node_infiniband_multicast_packets_transmitted_total",
     "multicast_xmit_packets_total", 1.0, "packets", None),
    ("multicast_rcv_packets", "node_infiniband_multicast_packets_received_total",
     "multicast_rcv_packets_total", 1.0, "packets", None),
    ("symbol_error", "node_infiniband_symbol_error_total",
     "symbol_errors_total", 1.0, "errors", 16),
    ("link_error_recovery", "node_infiniband_link_error_recovery_total",
     "link_error_recovery_total", 1.0, "events", 8),
    ("link_downed", "node_infiniband_link_downed_total",
     "link_downed_total", 1.0, "events", 8),
    ("port_rcv_errors", "node_infiniband_port_errors_received_total",
     "port_rcv_errors_total", 1.0, "packets", 16),
    ("port_rcv_remote_physical_errors",
     "node_infiniband_port_receive_remote_physical_errors_total",
     "port_rcv_remote_physical_errors_total", 1.0, "packets", 16),
    ("port_rcv_switch_relay_errors", "node_infiniband_port_receive_switch_relay_errors_total",
     "port_rcv_switch_relay_errors_total", 1.0, "packets", 16),
    ("port_xmit_discards", "node_infiniband_port_discards_transmitted_total",
     "port_xmit_discards_total", 1.0, "packets", 16),
    ("port_rcv_discards", "node_infiniband_port_discards_received_total",
     "port_rcv_discards_total", 1.0, "packets", 16),
    ("port_xmit_constraint_errors", "node_infiniband_port_constraint_errors_transmitted_total",
     "port_xmit_constraint_errors_total", 1.0, "packets", 8),
    ("port_rcv_constraint_errors", "node_infiniband_port_constraint_errors_received_total",
     "port_rcv_constraint_errors_total", 1.0, "packets", 8),
    ("local_link_integrity_errors", "node_infiniband_local_link_integrity_errors_total",
     "local_link_integrity_errors_total", 1.0, "errors", 4),
    ("excessive_buffer_overrun_errors", "node_infiniband_excessive_buffer_overrun_errors_total",
     "excessive_buffer_overrun_errors_total", 1.0, "errors", 4),
    ("VL15_dropped", "node_infiniband_vl15_dropped_total",
     "vl15_dropped_total", 1.0, "packets", 16),
    ("port_xmit_wait", "node_infiniband_port_transmit_wait_total",
     "port_xmit_wait_ticks_total", 1.0, "ticks", 32),
)

# (sysfs file in hw_counters/, node_exporter name, normalised suffix); mlx5 Q counters
# are 32-bit and wrap; the congestion (np_/rp_) and ICRC counters are 64-bit.
_HW_COUNTERS: tuple[tuple[str, str, str, int | None], ...] = (
    ("np_cnp_sent", "node_infiniband_np_cnp_packets_sent_total", "np_cnp_sent_total", None),
    ("np_ecn_marked_roce_packets", "node_infiniband_np_ecn_marked_roce_packets_received_total",
     "np_ecn_marked_roce_packets_total", None),
    ("rp_cnp_handled", "node_infiniband_rp_cnp_packets_handled_total",
     "rp_cnp_handled_total", None),
    ("rp_cnp_ignored", "node_infiniband_rp_cnp_ignored_packets_received_total",
     "rp_cnp_ignored_total", None),
    ("out_of_buffer", "node_infiniband_out_of_buffer_drops_total", "out_of_buffer_drops_total", 32),
    ("out_of_sequence", "node_infiniband_out_of_sequence_packets_received_total",
     "out_of_sequence_packets_total", 32),
    ("packet_seq_err", "node_infiniband_packet_sequence_errors_total",
     "packet_seq_errors_total", 32),
    ("local_ack_timeout_err", "node_infiniband_local_ack_timeout_errors_total",
     "local_ack_timeout_errors_total", 32),
    ("implied_nak_seq_err", "node_infiniband_implied_nak_seq_errors_total",
     "implied_nak_seq_errors_total", 32),
    ("rnr_nak_retry_err", "node_infiniband_rnr_nak_retry_packets_received_total",
     "rnr_nak_retry_errors_total", 32),
    ("duplicate_request", "node_infiniband_duplicate_requests_packets_total",
     "duplicate_requests_total", 32),
    ("req_cqe_error", "node_infiniband_req_cqes_errors_total", "req_cqe_errors_total", 32),
    ("req_cqe_flush_error", "node_infiniband_req_cqes_flush_errors_total",
     "req_cqe_flush_errors_total", 32),
    ("req_remote_access_errors", "node_infiniband_req_remote_access_errors_total",
     "req_remote_access_errors_total", 32),
    ("req_remote_invalid_request", "node_infiniband_req_remote_invalid_request_errors_total",
     "req_remote_invalid_request_errors_total", 32),
    ("resp_cqe_error", "node_infiniband_resp_cqes_errors_total", "resp_cqe_errors_total", 32),
    ("resp_cqe_flush_error", "node_infiniband_resp_cqes_flush_errors_total",
     "resp_cqe_flush_errors_total", 32),
    ("resp_local_length_error", "node_infiniband_resp_local_length_errors_total",
     "resp_local_length_errors_total", 32),
    ("resp_remote_access_errors", "node_infiniband_resp_remote_access_errors_total",
     "resp_remote_access_errors_total", 32),
    ("roce_adp_retrans", "node_infiniband_roce_adp_retransmits_total",
     "roce_adp_retransmits_total", 32),
    ("roce_adp_retrans_to", "node_infiniband_roce_adp_retransmits_timeout_total",
     "roce_adp_retransmit_timeouts_total", 32),
    ("roce_slow_restart", "node_infiniband_roce_slow_restart_used_total",
     "roce_slow_restart_used_total", 32),
    ("roce_slow_restart_cnps", "node_infiniband_roce_slow_restart_cnps_total",
     "roce_slow_restart_cnps_total", 32),
    ("roce_slow_restart_trans", "node_infiniband_roce_slow_restart_total",
     "roce_slow_restart_transitions_total", 32),
    ("rx_read_requests", "node_infiniband_rx_read_requests_total", "rx_read_requests_total", 32),
    ("rx_write_requests", "node_infiniband_rx_write_requests_total", "rx_write_requests_total", 32),
    ("rx_atomic_requests", "node_infiniband_rx_atomic_requests_total",
     "rx_atomic_requests_total", 32),
    ("rx_dct_connect", "node_infiniband_rx_dct_connect_requests_total",
     "rx_dct_connect_requests_total", 32),
    ("rx_icrc_encapsulated", "node_infiniband_rx_icrc_encapsulated_errors_total",
     "rx_icrc_encapsulated_errors_total", None),
)

# Not counters, whatever directory they sit in.
GAUGE_FILES = frozenset({"lifespan"})


def _norm(suffix: str) -> str:
    return "gpuslo_rdma_" + suffix


def _build_signals() -> tuple[Signal, ...]:
    out: list[Signal] = []
    for file, ne, suffix, scale, unit, _ in _PORT_COUNTERS:
        out.append(signal(_norm(suffix), unit, Kind.COUNTER,
                          ref(PORT_COUNTER_PREFIX + file, scale=scale), ne))
    for file, ne, suffix, _w in _HW_COUNTERS:
        out.append(signal(_norm(suffix), "events", Kind.COUNTER,
                          PORT_HW_PREFIX + file, DEVICE_HW_PREFIX + file, ne))
    out += [
        signal(_norm("port_state"), "state id", Kind.GAUGE,
               "infiniband_port_state", "node_infiniband_state_id",
               help="Logical port state number (4 = ACTIVE)."),
        signal(_norm("port_phys_state"), "state id", Kind.GAUGE,
               "infiniband_port_phys_state", "node_infiniband_physical_state_id",
               help="Physical port state number (5 = LinkUp)."),
        signal(_norm("port_rate_bytes_per_second"), "bytes/second", Kind.GAUGE,
               ref("infiniband_port_rate_gbps", scale=125_000_000.0),
               "node_infiniband_rate_bytes_per_second",
               help="Signalling rate (Gb/s x 125e6, as procfs does)."),
    ]
    return tuple(out)


SIGNALS: tuple[Signal, ...] = _build_signals()

# normalised name -> (width in bits, saturates?).  Only narrow counters appear.
COUNTER_WIDTHS: dict[str, tuple[int, bool]] = {
    **{_norm(s): (w, True) for _f, _n, s, _sc, _u, w in _PORT_COUNTERS if w is not None},
    **{_norm(s): (w, False) for _f, _n, s, w in _HW_COUNTERS if w is not None},
}
SATURATED_METRIC = "gpuslo_rdma_counter_saturated"
# The saturating counters: their order, and the value at which each is pegged.
_SATURATING_ORDER = {name: i for i, (name, (_, sat)) in enumerate(COUNTER_WIDTHS.items()) if sat}
_SATURATING_NAMES = list(_SATURATING_ORDER)
_SATURATING_TOP = {name: float(2**bits - 1) for name, (bits, sat) in COUNTER_WIDTHS.items()
                   if sat}
_TS_AT, _VALUE_AT = COLUMNS.index("ts"), COLUMNS.index("value")  # in-place column swaps


@dataclass(frozen=True)
class SysfsProblem:
    """One sysfs file that gave no sample, and why.

    ``reason`` is ``unavailable`` (the driver has no PMA: ``N/A (no PMA)``),
    ``missing``, ``unreadable`` or ``malformed``.  Only the last three are errors.
    """

    path: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class RdmaReadResult:
    """Samples read from sysfs plus every file that yielded none."""

    frame: pl.DataFrame
    problems: tuple[SysfsProblem, ...]

    @property
    def errors(self) -> tuple[SysfsProblem, ...]:
        return tuple(p for p in self.problems if p.reason != "unavailable")

    @property
    def unavailable(self) -> int:
        return sum(1 for p in self.problems if p.reason == "unavailable")


_RATE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*Gb/sec")
_STATE_RE = re.compile(r"^\s*([0-9]+)\s*:\s*(\S.*?)\s*$")


def parse_rate_gbps(text: str) -> float:
    """``"100 Gb/sec (4X EDR)"`` -> 100.0; ValueError for anything else."""
    m = _RATE_RE.match(text)
    if not m:
        raise ValueError(f"unrecognised rate {text.strip()!r}")
    return float(m.group(1))


def parse_state(text: str) -> tuple[int, str]:
    """``"4: ACTIVE"`` -> (4, "ACTIVE"); ValueError for anything else."""
    m = _STATE_RE.match(text)
    if not m:
        raise ValueError(f"unrecognised state {text.strip()!r}")
    return int(m.group(1)), m.group(2)


def parse_counter(text: str) -> int | None:
    """A counter file's value; ``None`` for ``N/A (no PMA)``; ValueError if malformed."""
    s = text.strip()
    if s.startswith("N/A"):
        return None
    if not s.isdigit():
        raise ValueError(f"not a non-negative integer: {s[:40]!r}")
    return int(s)


def node_exporter_entities(frame: pl.DataFrame) -> pl.DataFrame:
    """Entity ``device/port`` (or ``device``) for node_exporter ``node_infiniband_*`` rows."""
    dev, port = label("device"), label("port")
    expr = (
        pl.when(port.is_not_null() & (port != ""))
        .then(pl.concat_str([dev, pl.lit("/"), port]))
        .otherwise(dev)
    )
    is_ib = pl.col("metric").str.starts_with("node_infiniband_")
    return frame.with_columns(
        entity=pl.when(is_ib).then(expr.fill_null("")).otherwise(pl.col("entity"))
    )


def saturation_rows(normalised: pl.DataFrame) -> pl.DataFrame:
    """``gpuslo_rdma_counter_saturated`` (0/1) for each narrow, saturating counter row.

    A pegged counter (value = 2^bits - 1) no longer counts: its increase reads
    0 however many errors happen, so an SLO on it must know.  The label
    ``counter`` names the normalised counter.  Rows come grouped by counter in
    :data:`COUNTER_WIDTHS` order, each counter's in frame order; one filter for
    every counter, not one per name.
    """
    part = normalised.filter(pl.col("metric").is_in(_SATURATING_NAMES))
    if part.height == 0:
        return empty_frame()
    metric = pl.col("metric")
    order = metric.replace_strict(_SATURATING_ORDER, return_dtype=pl.UInt32)
    top = metric.replace_strict(_SATURATING_TOP, return_dtype=pl.Float64)
    counter = pl.struct(name=pl.lit("counter"), value=metric).cast(LABEL_DTYPE)
    return (
        part.with_columns(
            metric=pl.lit(SATURATED_METRIC),
            kind=pl.lit(Kind.GAUGE.value, dtype=KIND_DTYPE),
            value=(pl.col("value") >= top).cast(pl.Float64),
            labels=pl.concat_list([pl.col("labels"), counter])
            .list.eval(pl.element().sort_by(pl.element().struct.field("name"))),
            __order=order,
        )
        .sort("__order", maintain_order=True)
        .select(COLUMNS)
    )


def counter_increase(name: str, previous: float, current: float) -> float:
    """Increase of a normalised RDMA counter between two reads, by its width semantics.

    * saturating (PMA error counters): a drop means the counter was cleared
      (``perfquery -R``) -> ``current``; a pegged value stays at 0 increase.
    * wrapping 32-bit (mlx5 Q counters): a drop is a wrap -> ``current + 2^32 - previous``.
    * 64-bit: a drop is a reset -> ``current``.
    """
    if current >= previous:
        return current - previous
    width = COUNTER_WIDTHS.get(name)
    if width is not None and not width[1]:
        return current + float(2 ** width[0]) - previous
    return current


def map_sysfs(result: RdmaReadResult) -> pl.DataFrame:
    """Upstream sysfs rows + normalised signals + saturation flags."""
    normal = normalised_rows(result.frame, SIGNALS)
    return pl.concat([result.frame.select(COLUMNS), normal, saturation_rows(normal)])


def map_node_exporter(frame: pl.DataFrame) -> pl.DataFrame:
    """A parsed node_exporter payload with ``node_infiniband_*`` mapped to the same signals."""
    with_entities = node_exporter_entities(frame)
    normal = normalised_rows(with_entities, SIGNALS)
    return pl.concat([with_entities.select(COLUMNS), normal, saturation_rows(normal)])


@dataclass(frozen=True)
class NodeExporterLayout:
    """:func:`map_node_exporter` of one layout, less its numbers (see :class:`Derivation`).

    ``mapped`` gives the upstream and normalised rows.  A saturation row's value
    compares a normalised value with its counter's top, so it is not a scaled
    copy: ``saturation`` holds those rows' series columns, ``at`` the mapped row
    each one reads and ``top`` the bound, in :func:`saturation_rows`' order.
    """

    mapped: Derivation
    saturation: pl.DataFrame
    at: pl.Series
    top: pl.Series

    def apply(self, frame: pl.DataFrame) -> pl.DataFrame:
        mapped = self.mapped.apply(frame)
        if self.saturation.height == 0:
            return mapped
        # Indexing by positions and columns replaced in place: gather and with_columns
        # would each plan and run a query.
        value = (mapped.get_column("value")[self.at] >= self.top).cast(pl.Float64)
        sat = self.saturation.clone()
        sat.replace_column(_TS_AT, mapped.get_column("ts")[self.at])
        sat.replace_column(_VALUE_AT, value)
        return pl.concat([mapped, sat])


def node_exporter_layout(frame: pl.DataFrame) -> NodeExporterLayout:
    """:func:`map_node_exporter`'s output for ``frame``'s layout."""
    with_entities = node_exporter_entities(frame)
    mapped = Derivation.upstream(with_entities).then(
        normalised_derivation(with_entities, SIGNALS))
    normal = mapped.series.slice(mapped.upstream_rows)
    metric = normal.get_column("metric")
    pos = metric.is_in(_SATURATING_NAMES).arg_true()
    # Grouped by counter in COUNTER_WIDTHS order, each in frame order (a stable sort).
    order = metric.gather(pos).replace_strict(_SATURATING_ORDER, return_dtype=pl.UInt32)
    key = order.cast(pl.UInt64) * (len(pos) + 1) + pl.int_range(len(pos), dtype=pl.UInt64,
                                                                eager=True)
    pos = pos.gather(key.arg_sort())  # unique keys: order, then position
    top = metric.gather(pos).replace_strict(_SATURATING_TOP, return_dtype=pl.Float64)
    return NodeExporterLayout(mapped, saturation_rows(normal),
                              (pos + mapped.upstream_rows).cast(pl.UInt32), top)


def read_result_partial(result: RdmaReadResult) -> Partial:
    """A sysfs read as the engine's :class:`~gpuslo.collectors.base.Partial`.

    Only errors (missing, unreadable, malformed) are problems; ``N/A (no PMA)``
    is the driver saying "not supported" and is not counted against the target.
    """
    errors = result.errors
    detail = None
    if errors:
        first = errors[0]
        detail = f"{len(errors)} sysfs file(s) not read, e.g. {first.path}: {first.reason}" + (
            f" ({first.detail})" if first.detail else "")
    return Partial(result.frame, Counter(p.reason for p in errors), detail)


class RdmaMapping(PrometheusMapping):
    """InfiniBand/RoCE counters from sysfs trees (read by the engine's file reader) and/or
    node_exporter pages.

    node_exporter pages keep only their ``node_infiniband_*`` families by default
    (the page is shared with the storage collector, which takes ``node_disk_*``).
    """

    def __init__(self, source: str = SOURCE, *, own_families_only: bool = True) -> None:
        super().__init__(source)
        self.own_families_only = own_families_only

    @classmethod
    def from_config(cls, config: RdmaCollectorConfig) -> RdmaMapping:
        return cls(config.source, own_families_only=config.own_families_only)

    def transform(self, frame: pl.DataFrame, target: ScrapeTarget,
                  shape_cache: ShapeCache | None = None) -> pl.DataFrame:
        if target_path(target) is not None:
            return map_sysfs(RdmaReadResult(frame, ()))
        kept = layout_derivation(shape_cache, frame, self._layout, NodeExporterLayout)
        if kept is not None:
            return kept.apply(frame)
        if self.own_families_only:
            frame = frame.filter(pl.col("metric").str.starts_with(NODE_EXPORTER_PREFIX))
        return map_node_exporter(frame)

    def _layout(self, frame: pl.DataFrame) -> NodeExporterLayout:
        if not self.own_families_only:
            return node_exporter_layout(frame)
        own = frame.get_column("metric").str.starts_with(NODE_EXPORTER_PREFIX)
        layout = node_exporter_layout(frame.filter(own))
        return replace(layout, mapped=layout.mapped.through(own))


__all__ = [
    "COUNTER_WIDTHS",
    "SIGNALS",
    "RdmaMapping",
    "RdmaReadResult",
    "SysfsProblem",
    "counter_increase",
    "map_node_exporter",
    "map_sysfs",
    "node_exporter_entities",
    "parse_counter",
    "parse_rate_gbps",
    "parse_state",
    "read_result_partial",
    "saturation_rows",
]
