"""Local files as targets: RDMA sysfs trees and ``/proc/diskstats``.

The DaemonSet mounts the host's ``/sys`` and ``/proc`` read-only; tests point
the same readers at fixture trees.  Reading is the only I/O here: what the
bytes mean is the pure mappings' business (:mod:`gpuslo.collectors.mappings.rdma`,
:mod:`gpuslo.collectors.mappings.storage`).  Readers run in a worker thread of
the scrape engine (sysfs reads block, and a hung NFS-backed ``/proc`` must not
stall the event loop); an ``OSError`` means the target itself is unreadable.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import polars as pl

from gpuslo.collectors.base import Partial, ScrapeTarget, target_path
from gpuslo.collectors.mappings.rdma import (
    DEVICE_HW_PREFIX,
    GAUGE_FILES,
    PORT_COUNTER_PREFIX,
    PORT_HW_PREFIX,
    SOURCE,
    RdmaReadResult,
    SysfsProblem,
    parse_counter,
    parse_rate_gbps,
    parse_state,
    read_result_partial,
)
from gpuslo.collectors.mappings.storage import (
    DEFAULT_DEVICE_EXCLUDE,
    DiskstatsResult,
    StorageMapping,
    parse_diskstats,
)
from gpuslo.collectors.mappings.storage import SOURCE as STORAGE_SOURCE
from gpuslo.pipeline.schema import FrameBuilder, Kind, empty_frame


class _Reader:
    """Accumulates rows and problems for one read of the tree."""

    def __init__(self, node: str, source: str, ts_ms: int) -> None:
        self.node, self.source, self.ts_ms = node, source, ts_ms
        self.rows = FrameBuilder(node, source, ts_ms)  # column-wise, label sets shared
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
        self.rows.add(metric, kind, value, entity, labels)

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
    return RdmaReadResult(r.rows.frame(), tuple(r.problems))


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


def read_diskstats(
    root: str | os.PathLike[str] = "/proc",
    *,
    node: str,
    scrape_ts_ms: int,
    source: str = STORAGE_SOURCE,
    device_exclude: str | None = DEFAULT_DEVICE_EXCLUDE,
) -> DiskstatsResult:
    """Read ``<root>/diskstats`` (the host's ``/proc`` mounted in the DaemonSet).

    Raises:
        OSError: the file cannot be read at all (the caller reports the target down).
    """
    text = (Path(root) / "diskstats").read_text()
    return parse_diskstats(text, node=node, scrape_ts_ms=scrape_ts_ms, source=source,
                           device_exclude=device_exclude)


class SysfsReader:
    """Reads one collector's sysfs roots; counts files that read ``N/A (no PMA)``."""

    def __init__(self, source: str = SOURCE, devices: Iterable[str] | None = None) -> None:
        self.source = source
        self.devices = list(devices) if devices is not None else None
        self.unavailable = 0  # counter files reading "N/A (no PMA)", cumulative

    def __call__(self, target: ScrapeTarget, scrape_ts_ms: int) -> Partial:
        root = Path(target_path(target) or "")
        if not root.is_dir():
            # read_sysfs treats a missing class/infiniband as "no RDMA hardware"; a
            # missing root is a mount mistake and must show as the target being down.
            raise FileNotFoundError(str(root))
        result = read_sysfs(root, node=target.node, scrape_ts_ms=scrape_ts_ms,
                            source=self.source, devices=self.devices)
        self.unavailable += result.unavailable
        return read_result_partial(result)


class DiskstatsReader:
    """Reads a ``diskstats`` file target and parses it with the collector's mapping."""

    def __init__(self, mapping: StorageMapping) -> None:
        self.mapping = mapping

    def __call__(self, target: ScrapeTarget, scrape_ts_ms: int) -> pl.DataFrame | Partial:
        text = Path(target_path(target) or "").read_text()
        return self.mapping.parse_diskstats(text, target, scrape_ts_ms)


__all__ = ["DiskstatsReader", "SysfsReader", "read_diskstats", "read_sysfs"]
