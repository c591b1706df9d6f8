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

:class:`RdmaCollector` runs both paths on the scrape engine: each sysfs root
is a ``file://`` target read in a worker thread, each node_exporter page an
HTTP target; per-file problems are counted in the target's health rows.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import polars as pl

from gpuslo.collectors.engine import (
    Partial,
    ScrapeEngine,
    ScrapeTarget,
    TargetSource,
    file_target,
    settings_from_config,
    target_path,
)
from gpuslo.collectors.normalise import (
    Signal,
    normalised_rows,
    ref,
    signal,
)
from gpuslo.pipeline.config import RdmaCollectorConfig
from gpuslo.pipeline.schema import COLUMNS, Kind, empty_frame, frame_from_rows, label

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


class _Reader:
    """Accumulates rows and problems for one read of the tree."""

    def __init__(self, node: str, source: str, ts_ms: int) -> None:
        self.node, self.source, self.ts_ms = node, source, ts_ms
        self.rows: list[tuple[object, ...]] = []
        self.problems: list[SysfsProblem] = []

    def text(self, path: Path, *, required: bool = True) -> str | None:
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            if required:
                self.problems.append(SysfsProblem(str(path), "missing"))
            return None
        except OSError as exc:  # EACCES, EINVAL from some drivers' counters
            self.problems.append(SysfsProblem(str(path), "unreadable", exc.strerror or str(exc)))
            return None

    def add(self, metric: str, kind: Kind, value: float, entity: str,
            labels: dict[str, str]) -> None:
        self.rows.append((self.ts_ms, self.node, self.source, metric, kind, value, entity, labels))

    def counters_dir(self, directory: Path, prefix: str, entity: str,
                     labels: dict[str, str]) -> None:
        for path in sorted(directory.iterdir()):
            if path.is_dir():
                continue  # not a counter; a dangling link still gets reported below
            raw = self.text(path)
            if raw is None:
                continue
            try:
                value = parse_counter(raw)
            except ValueError as exc:
                self.problems.append(SysfsProblem(str(path), "malformed", str(exc)))
                continue
            if value is None:
                self.problems.append(SysfsProblem(str(path), "unavailable", raw.strip()))
                continue
            kind = Kind.GAUGE if path.name in GAUGE_FILES else Kind.COUNTER
            self.add(prefix + path.name, kind, float(value), entity, labels)


def read_sysfs(
    root: str | os.PathLike[str] = "/sys",
    *,
    node: str,
    scrape_ts_ms: int,
    source: str = SOURCE,
    devices: Iterable[str] | None = None,
) -> RdmaReadResult:
    """Read every InfiniBand/RoCE device and port under ``<root>/class/infiniband``.

    Args:
        root: the sysfs mount (the host's ``/sys`` in production).
        devices: only these device names (default: all).

    Never raises for a bad file: each becomes a :class:`SysfsProblem`.  A
    missing ``class/infiniband`` directory (no RDMA hardware) gives an empty
    frame and no problems.
    """
    base = Path(root) / "class" / "infiniband"
    r = _Reader(node, source, scrape_ts_ms)
    if not base.is_dir():
        return RdmaReadResult(empty_frame(), ())
    wanted = set(devices) if devices is not None else None
    for dev in sorted(base.iterdir()):
        if wanted is not None and dev.name not in wanted:
            continue
        info = {"device": dev.name}
        for attr in ("fw_ver", "hca_type", "board_id", "node_guid"):
            value = r.text(dev / attr, required=False)
            if value is not None:
                info[attr] = value.strip()
        r.add("infiniband_device_info", Kind.GAUGE, 1.0, dev.name, info)
        if (dev / "hw_counters").is_dir():
            r.counters_dir(dev / "hw_counters", DEVICE_HW_PREFIX, dev.name, {"device": dev.name})
        ports = dev / "ports"
        if not ports.is_dir():
            r.problems.append(SysfsProblem(str(ports), "missing"))
            continue
        for port in sorted(ports.iterdir(), key=lambda p: (len(p.name), p.name)):
            _read_port(r, dev.name, port)
    frame = frame_from_rows(r.rows) if r.rows else empty_frame()
    return RdmaReadResult(frame, tuple(r.problems))


def _read_port(r: _Reader, device: str, port: Path) -> None:
    entity = f"{device}/{port.name}"
    labels = {"device": device, "port": port.name}
    for attr, metric in (("state", "infiniband_port_state"),
                         ("phys_state", "infiniband_port_phys_state")):
        raw = r.text(port / attr)
        if raw is None:
            continue
        try:
            num, name = parse_state(raw)
        except ValueError as exc:
            r.problems.append(SysfsProblem(str(port / attr), "malformed", str(exc)))
            continue
        r.add(metric, Kind.GAUGE, float(num), entity, {**labels, "state": name})
    raw = r.text(port / "rate")
    if raw is not None:
        try:
            r.add("infiniband_port_rate_gbps", Kind.GAUGE, parse_rate_gbps(raw), entity,
                  {**labels, "rate": raw.strip()})
        except ValueError as exc:
            r.problems.append(SysfsProblem(str(port / "rate"), "malformed", str(exc)))
    link_layer = r.text(port / "link_layer", required=False)
    if link_layer is not None:
        r.add("infiniband_port_info", Kind.GAUGE, 1.0, entity,
              {**labels, "link_layer": link_layer.strip()})
    if (port / "counters").is_dir():
        r.counters_dir(port / "counters", PORT_COUNTER_PREFIX, entity, labels)
    else:
        r.problems.append(SysfsProblem(str(port / "counters"), "missing"))
    if (port / "hw_counters").is_dir():
        r.counters_dir(port / "hw_counters", PORT_HW_PREFIX, entity, labels)


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
    ``counter`` names the normalised counter.
    """
    rows = []
    for name, (bits, saturates) in COUNTER_WIDTHS.items():
        if not saturates:
            continue
        top = float(2**bits - 1)
        part = normalised.filter(pl.col("metric") == name)
        if part.height == 0:
            continue
        extra = pl.lit([{"name": "counter", "value": name}],
                       dtype=normalised.schema["labels"])
        rows.append(
            part.with_columns(
                metric=pl.lit(SATURATED_METRIC),
                kind=pl.lit(Kind.GAUGE.value, dtype=normalised.schema["kind"]),
                value=(pl.col("value") >= top).cast(pl.Float64),
                labels=pl.concat_list([pl.col("labels"), extra])
                .list.eval(pl.element().sort_by(pl.element().struct.field("name"))),
            ).select(COLUMNS)
        )
    return pl.concat(rows) if rows else empty_frame()


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


def read_result_partial(result: RdmaReadResult) -> Partial:
    """A sysfs read as the engine's :class:`~collectors.engine.Partial`.

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


class RdmaCollector(ScrapeEngine):
    """InfiniBand/RoCE counters from sysfs roots and/or node_exporter pages.

    Sysfs roots are ``file://`` targets of the scrape engine, read in a worker
    thread on the collector's interval; a missing root is the target's
    ``missing`` error (``up == 0``), a missing or malformed file inside it a
    per-series problem (``gpuslo_scrape_series_errors_total``) while the rest
    of the tree is still read.  node_exporter pages keep only their
    ``node_infiniband_*`` families by default (the page is shared with the
    storage collector, which takes ``node_disk_*``).
    """

    def __init__(
        self,
        config: RdmaCollectorConfig,
        *,
        default_node: str,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        from gpuslo.collectors.discovery import CombinedTargets, StaticTargets, target_source

        self.config = config
        self.unavailable = 0  # counter files reading "N/A (no PMA)", cumulative
        http = target_source(config, default_node=default_node, source=SOURCE)
        files = [file_target(s.path, s.node or default_node) for s in config.sysfs_sources()]
        targets: TargetSource = (
            CombinedTargets([http, StaticTargets(files)]) if files else http
        )
        super().__init__(config.name, settings_from_config(config), targets,
                         source=config.source, transform=self._map, read=self._read,
                         session=session)

    def _read(self, target: ScrapeTarget, ts_ms: int) -> Partial:
        root = Path(target_path(target) or "")
        if not root.is_dir():
            # read_sysfs treats a missing class/infiniband as "no RDMA hardware"; a
            # missing root is a mount mistake and must show as the target being down.
            raise FileNotFoundError(str(root))
        result = read_sysfs(root, node=target.node, scrape_ts_ms=ts_ms, source=self.source,
                            devices=self.config.devices)
        self.unavailable += result.unavailable
        return read_result_partial(result)

    def _map(self, frame: pl.DataFrame, target: ScrapeTarget) -> pl.DataFrame:
        if target_path(target) is not None:
            return map_sysfs(RdmaReadResult(frame, ()))
        if self.config.own_families_only:
            frame = frame.filter(pl.col("metric").str.starts_with(NODE_EXPORTER_PREFIX))
        return map_node_exporter(frame)


__all__ = [
    "COUNTER_WIDTHS",
    "SIGNALS",
    "RdmaCollector",
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
    "read_sysfs",
    "saturation_rows",
]
