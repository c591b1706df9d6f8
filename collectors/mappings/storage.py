"""Storage: block devices (``/proc/diskstats`` or node_exporter), Ceph and Lustre.

Latency and utilisation are *derived* quantities; this module keeps them as
the pair of cumulative counters they come from, so downstream divides
increases over its own window:

* mean read latency = ``increase(gpuslo_disk_read_time_seconds_total)`` /
  ``increase(gpuslo_disk_reads_completed_total)`` (same for writes);
* busy ratio = ``increase(gpuslo_disk_io_time_seconds_total)`` / window
  (saturates at 1.0 and means little on NVMe/RAID, which serve in parallel);
* Ceph OSD op latency = ``increase(gpuslo_ceph_osd_op_*_latency_seconds_total)`` /
  ``increase(gpuslo_ceph_osd_op_*_total)`` from the mgr's ``_sum``/``_count``.

``/proc/diskstats`` fields (Documentation/admin-guide/iostats.rst): reads
completed, reads merged, sectors read, ms reading, writes completed, writes
merged, sectors written, ms writing, I/Os in progress, ms doing I/O, weighted
ms; since 4.18 discards (4 fields), since 5.5 flushes (2 fields).  Sectors are
always 512 bytes here, whatever the device's logical block size.  Raw rows are
named ``diskstats_<field>`` in the kernel's units.

Ceph: ``ceph_health_status`` is 0 OK / 1 WARN / 2 ERR; pools are labelled by
``pool_id`` only and named by joining ``ceph_pool_metadata``; a 503 from the
mgr while it builds its first cache is a retry (:func:`ceph_status_disposition`).

Lustre (lustrefs-exporter): capacities are **KiB** (``*_kilobytes``) -> bytes.

Entities: disk = device name (``sda``); OSD = ``ceph_daemon`` (``osd.3``);
pool = ``pool:<name>`` (``pool_id:<id>`` when unnamed); Ceph cluster-wide =
``ceph``; Lustre = target (``ai400x2-OST0000``).

:class:`StorageMapping` is what the scrape engine runs it with: diskstats
files are ``file://`` targets read by its file reader in a worker thread; HTTP
targets may be any of the exporters above, or a page in diskstats format (the
simulated fleet serves one), recognised by its first line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl

from gpuslo.collectors.base import Partial, ScrapeTarget
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
from gpuslo.collectors.mappings.reader_layout import ReaderLayouts
from gpuslo.pipeline.config import StorageCollectorConfig
from gpuslo.pipeline.schema import COLUMNS, FrameBuilder, Kind, label

SOURCE = "storage"
# Families this collector keeps from a shared page (node_exporter serves many more).
OWN_PREFIXES: tuple[str, ...] = ("node_disk_", "ceph_", "lustre_", "diskstats_")
SECTOR_BYTES = 512

# node_exporter's default --collector.diskstats.device-exclude: partitions and
# pseudo devices (ram, loop, floppy); dm-* and md* are kept.
DEFAULT_DEVICE_EXCLUDE = r"^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$"

# Field names after (major, minor, device), in kernel order, with their kind.
DISKSTATS_FIELDS: tuple[tuple[str, Kind], ...] = (
    ("reads_completed", Kind.COUNTER),
    ("reads_merged", Kind.COUNTER),
    ("sectors_read", Kind.COUNTER),
    ("time_reading_ms", Kind.COUNTER),
    ("writes_completed", Kind.COUNTER),
    ("writes_merged", Kind.COUNTER),
    ("sectors_written", Kind.COUNTER),
    ("time_writing_ms", Kind.COUNTER),
    ("ios_in_progress", Kind.GAUGE),
    ("time_io_ms", Kind.COUNTER),
    ("weighted_time_io_ms", Kind.COUNTER),
    ("discards_completed", Kind.COUNTER),
    ("discards_merged", Kind.COUNTER),
    ("sectors_discarded", Kind.COUNTER),
    ("time_discarding_ms", Kind.COUNTER),
    ("flush_requests_completed", Kind.COUNTER),
    ("time_flushing_ms", Kind.COUNTER),
)


def _d(field: str) -> str:
    return "diskstats_" + field


DISK_SIGNALS: tuple[Signal, ...] = (
    signal("gpuslo_disk_reads_completed_total", "operations", Kind.COUNTER,
           _d("reads_completed"), "node_disk_reads_completed_total"),
    signal("gpuslo_disk_writes_completed_total", "operations", Kind.COUNTER,
           _d("writes_completed"), "node_disk_writes_completed_total"),
    signal("gpuslo_disk_read_bytes_total", "bytes", Kind.COUNTER,
           ref(_d("sectors_read"), scale=SECTOR_BYTES), "node_disk_read_bytes_total"),
    signal("gpuslo_disk_written_bytes_total", "bytes", Kind.COUNTER,
           ref(_d("sectors_written"), scale=SECTOR_BYTES), "node_disk_written_bytes_total"),
    signal("gpuslo_disk_read_time_seconds_total", "seconds", Kind.COUNTER,
           ref(_d("time_reading_ms"), scale=1e-3), "node_disk_read_time_seconds_total",
           help="Sum of all reads' service time; / reads completed = mean latency."),
    signal("gpuslo_disk_write_time_seconds_total", "seconds", Kind.COUNTER,
           ref(_d("time_writing_ms"), scale=1e-3), "node_disk_write_time_seconds_total"),
    signal("gpuslo_disk_io_time_seconds_total", "seconds", Kind.COUNTER,
           ref(_d("time_io_ms"), scale=1e-3), "node_disk_io_time_seconds_total",
           help="Time with I/O in flight; its rate is the busy ratio."),
    signal("gpuslo_disk_io_time_weighted_seconds_total", "seconds", Kind.COUNTER,
           ref(_d("weighted_time_io_ms"), scale=1e-3),
           "node_disk_io_time_weighted_seconds_total"),
    signal("gpuslo_disk_io_in_progress", "operations", Kind.GAUGE,
           _d("ios_in_progress"), "node_disk_io_now"),
)

CEPH_SIGNALS: tuple[Signal, ...] = (
    signal("gpuslo_ceph_health_status", "0 ok/1 warn/2 err", Kind.GAUGE, "ceph_health_status"),
    signal("gpuslo_ceph_osd_up", "bool", Kind.GAUGE, "ceph_osd_up"),
    signal("gpuslo_ceph_osd_in", "bool", Kind.GAUGE, "ceph_osd_in"),
    signal("gpuslo_ceph_osd_apply_latency_seconds", "seconds", Kind.GAUGE,
           ref("ceph_osd_apply_latency_ms", scale=1e-3)),
    signal("gpuslo_ceph_osd_commit_latency_seconds", "seconds", Kind.GAUGE,
           ref("ceph_osd_commit_latency_ms", scale=1e-3)),
    signal("gpuslo_ceph_osd_op_read_latency_seconds_total", "seconds", Kind.COUNTER,
           "ceph_osd_op_r_latency_sum"),
    signal("gpuslo_ceph_osd_op_reads_total", "operations", Kind.COUNTER,
           "ceph_osd_op_r_latency_count"),
    signal("gpuslo_ceph_osd_op_write_latency_seconds_total", "seconds", Kind.COUNTER,
           "ceph_osd_op_w_latency_sum"),
    signal("gpuslo_ceph_osd_op_writes_total", "operations", Kind.COUNTER,
           "ceph_osd_op_w_latency_count"),
    signal("gpuslo_ceph_osd_op_rw_latency_seconds_total", "seconds", Kind.COUNTER,
           "ceph_osd_op_rw_latency_sum"),
    signal("gpuslo_ceph_osd_op_rws_total", "operations", Kind.COUNTER,
           "ceph_osd_op_rw_latency_count"),
    signal("gpuslo_ceph_cluster_capacity_bytes", "bytes", Kind.GAUGE, "ceph_cluster_total_bytes"),
    signal("gpuslo_ceph_cluster_used_bytes", "bytes", Kind.GAUGE,
           "ceph_cluster_total_used_bytes"),
    signal("gpuslo_ceph_pool_stored_bytes", "bytes", Kind.GAUGE, "ceph_pool_stored"),
    signal("gpuslo_ceph_pool_max_available_bytes", "bytes", Kind.GAUGE, "ceph_pool_max_avail"),
    signal("gpuslo_ceph_pool_used_ratio", "ratio", Kind.GAUGE, "ceph_pool_percent_used",
           help="Fraction per `ceph df` semantics (scaling not verified against source)."),
    signal("gpuslo_ceph_pool_objects", "objects", Kind.GAUGE, "ceph_pool_objects"),
    signal("gpuslo_ceph_pool_reads_total", "operations", Kind.COUNTER, "ceph_pool_rd"),
    signal("gpuslo_ceph_pool_read_bytes_total", "bytes", Kind.COUNTER, "ceph_pool_rd_bytes"),
    signal("gpuslo_ceph_pool_writes_total", "operations", Kind.COUNTER, "ceph_pool_wr"),
    signal("gpuslo_ceph_pool_written_bytes_total", "bytes", Kind.COUNTER, "ceph_pool_wr_bytes"),
    signal("gpuslo_ceph_pgs_degraded", "placement groups", Kind.GAUGE, "ceph_pg_degraded"),
    signal("gpuslo_ceph_objects_degraded", "objects", Kind.GAUGE, "ceph_num_objects_degraded"),
    signal("gpuslo_ceph_slow_ops", "operations", Kind.GAUGE, "ceph_healthcheck_slow_ops"),
)

KIB = 1024.0
LUSTRE_SIGNALS: tuple[Signal, ...] = (
    signal("gpuslo_lustre_capacity_bytes", "bytes", Kind.GAUGE,
           ref("lustre_capacity_kilobytes", scale=KIB)),
    signal("gpuslo_lustre_available_bytes", "bytes", Kind.GAUGE,
           ref("lustre_available_kilobytes", scale=KIB),
           help="Space available to users (excludes reserved blocks)."),
    signal("gpuslo_lustre_free_bytes", "bytes", Kind.GAUGE,
           ref("lustre_free_kilobytes", scale=KIB)),
    signal("gpuslo_lustre_inodes_free", "inodes", Kind.GAUGE, "lustre_inodes_free"),
    signal("gpuslo_lustre_inodes", "inodes", Kind.GAUGE, "lustre_inodes_maximum"),
    signal("gpuslo_lustre_read_bytes_total", "bytes", Kind.COUNTER, "lustre_read_bytes_total"),
    signal("gpuslo_lustre_written_bytes_total", "bytes", Kind.COUNTER, "lustre_write_bytes_total"),
    signal("gpuslo_lustre_reads_total", "operations", Kind.COUNTER, "lustre_read_samples_total"),
    signal("gpuslo_lustre_writes_total", "operations", Kind.COUNTER,
           "lustre_write_samples_total"),
    signal("gpuslo_lustre_metadata_operations_total", "operations", Kind.COUNTER,
           ref("lustre_stats_total", component="mdt"),
           help="MDT operations, by the upstream `operation` label."),
    signal("gpuslo_lustre_healthy", "bool", Kind.GAUGE, "lustre_health_healthy"),
    signal("gpuslo_lustre_connected_clients", "clients", Kind.GAUGE, "lustre_connected_clients"),
)

SIGNALS: tuple[Signal, ...] = DISK_SIGNALS + CEPH_SIGNALS + LUSTRE_SIGNALS


# ---------------------------------------------------------------- /proc/diskstats


@dataclass(frozen=True)
class DiskstatsResult:
    """Rows read from ``/proc/diskstats``, lines that could not be read, devices excluded."""

    frame: pl.DataFrame
    errors: tuple[str, ...]
    excluded: int


def parse_diskstats(
    text: str,
    *,
    node: str,
    scrape_ts_ms: int,
    source: str = SOURCE,
    device_exclude: str | None = DEFAULT_DEVICE_EXCLUDE,
    layouts: ReaderLayouts | None = None,
    target: str = "",
) -> DiskstatsResult:
    """``/proc/diskstats`` text -> one raw row per device and field.

    Args:
        device_exclude: regex of device names to skip (node_exporter's default
            drops partitions and ram/loop/fd); ``None`` keeps everything.
        layouts: ``target``'s earlier layouts (see :mod:`.reader_layout`): the same
            devices with as many fields reuse a frame's series columns (the frame
            is the same either way).

    A short or non-numeric line is reported in ``errors`` (with its line
    number) and skipped; the other devices are still read.
    """
    exclude = re.compile(device_exclude) if device_exclude else None
    rows = FrameBuilder(node, source, scrape_ts_ms)
    errors: list[str] = []
    excluded = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 14:
            errors.append(f"line {lineno}: {len(parts)} fields, expected at least 14")
            continue
        major, minor, device = parts[0], parts[1], parts[2]
        if exclude is not None and exclude.match(device):
            excluded += 1
            continue
        try:
            values = [int(p) for p in parts[3:]]
        except ValueError:
            errors.append(f"line {lineno}: non-numeric field for device {device!r}")
            continue
        labels = {"device": device, "major": major, "minor": minor}
        for (field, kind), value in zip(DISKSTATS_FIELDS, values, strict=False):
            rows.add(_d(field), kind, float(value), device, labels)
    frame = rows.frame() if layouts is None else layouts.frame(target, rows)
    return DiskstatsResult(frame, tuple(errors), excluded)


# ---------------------------------------------------------------- entities


def ceph_pool_names(frame: pl.DataFrame) -> dict[str, str]:
    """``pool_id`` -> pool name from ``ceph_pool_metadata`` rows."""
    meta = frame.filter(pl.col("metric") == "ceph_pool_metadata").select(
        pool_id=label("pool_id"), name=label("name")
    )
    return {
        str(r["pool_id"]): str(r["name"])
        for r in meta.iter_rows(named=True)
        if r["pool_id"] is not None and r["name"] is not None
    }


def derive_entities(frame: pl.DataFrame) -> pl.DataFrame:
    """Set ``entity`` for disk, Ceph and Lustre rows (other rows keep theirs).

    Pool names come from ``ceph_pool_metadata`` in the same frame: a pool whose
    metadata is missing keeps ``pool_id:<id>`` rather than being dropped.
    """
    names = ceph_pool_names(frame)
    pool_id = label("pool_id")
    pool_name = pool_id.replace_strict(names, default=None, return_dtype=pl.String)
    metric = pl.col("metric")
    is_ceph = metric.str.starts_with("ceph_")
    entity = (
        pl.when(metric.str.starts_with("node_disk_"))
        .then(label("device"))
        .when(is_ceph & label("ceph_daemon").is_not_null())
        .then(label("ceph_daemon"))
        .when(is_ceph & pool_id.is_not_null())
        .then(
            pl.when(pool_name.is_not_null())
            .then(pl.lit("pool:") + pool_name)
            .otherwise(pl.lit("pool_id:") + pool_id)
        )
        .when(is_ceph)
        .then(pl.lit("ceph"))
        .when(metric.str.starts_with("lustre_") & label("target").is_not_null())
        .then(label("target"))
        .otherwise(pl.col("entity"))
    )
    return frame.with_columns(entity=entity.fill_null(""))


def map_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """Entities and normalised storage signals for a parsed frame or a diskstats frame."""
    with_entities = derive_entities(frame)
    return pl.concat([with_entities.select(COLUMNS), normalised_rows(with_entities, SIGNALS)])


def map_derivation(frame: pl.DataFrame) -> Derivation:
    """:func:`map_frame` as a :class:`Derivation` of ``frame`` (for a repeated layout)."""
    with_entities = derive_entities(frame)
    return Derivation.upstream(with_entities).then(normalised_derivation(with_entities, SIGNALS))


def ceph_status_disposition(status: int) -> str:
    """What a Ceph mgr HTTP status means for the scrape loop.

    ``ok`` (200); ``retry`` (503: no cache yet while the mgr warms up, or a
    stale cache; not an error, retry after the scrape interval); ``standby``
    (500, the default ``standby_error_status_code`` of a standby mgr when
    ``standby_behaviour=error``: expected, not a failure of the cluster);
    ``error`` otherwise.
    """
    if status == 200:
        return "ok"
    if status == 503:
        return "retry"
    if status == 500:
        return "standby"
    return "error"


def strip_insta_header(text: str) -> str:
    """Drop an insta snapshot's YAML header (``---`` ... ``---``) if present.

    lustrefs-exporter's upstream tests store ``/metrics`` bodies this way;
    ``gpuslo scrape FILE`` on such a file should just work.
    """
    if not text.startswith("---\n"):
        return text
    end = text.find("\n---\n", 4)
    return text if end < 0 else text[end + 5:]


def looks_like_diskstats(text: str) -> bool:
    """Whether a payload is ``/proc/diskstats`` (first line: major, minor, device, numbers).

    An exposition line cannot start with a digit (metric names do not), so
    the first non-blank line decides.
    """
    for line in text.splitlines():
        parts = line.split()
        if parts:
            return len(parts) >= 14 and parts[0].isdigit() and parts[1].isdigit()
    return False


def diskstats_partial(result: DiskstatsResult) -> Partial:
    """A diskstats read as a :class:`~gpuslo.collectors.base.Partial` (bad lines counted)."""
    detail = (f"{len(result.errors)} diskstats line(s) not read, e.g. {result.errors[0]}"
              if result.errors else None)
    return Partial(result.frame, {"malformed": len(result.errors)}, detail)


def exclude_pattern(config: StorageCollectorConfig) -> str | None:
    """The device-exclude regex of a config: its own, node_exporter's by default, '' = none."""
    if config.device_exclude is None:
        return DEFAULT_DEVICE_EXCLUDE
    return config.device_exclude or None


class StorageMapping(PrometheusMapping):
    """Block devices, Ceph and Lustre: ``/proc/diskstats`` text and exporter pages.

    From shared pages (node_exporter) only the storage families are kept by
    default, so RDMA rows of the same page are not produced twice.  A diskstats
    file target is read by the engine's file reader and parsed here.
    """

    def __init__(self, source: str = SOURCE, *, own_families_only: bool = True,
                 device_exclude: str | None = DEFAULT_DEVICE_EXCLUDE) -> None:
        super().__init__(source)
        self.own_families_only = own_families_only
        self.device_exclude = device_exclude
        self.excluded = 0  # partition/virtual devices skipped, cumulative
        self.diskstats_layouts = ReaderLayouts()  # diskstats has no parser shape

    @classmethod
    def from_config(cls, config: StorageCollectorConfig) -> StorageMapping:
        return cls(config.source, own_families_only=config.own_families_only,
                   device_exclude=exclude_pattern(config))

    def parse_diskstats(self, text: str, target: ScrapeTarget, scrape_ts_ms: int) -> Partial:
        result = parse_diskstats(text, node=target.node, scrape_ts_ms=scrape_ts_ms,
                                 source=self.source, device_exclude=self.device_exclude,
                                 layouts=self.diskstats_layouts, target=target.url)
        self.excluded += result.excluded
        return diskstats_partial(result)

    def parse(self, text: str, openmetrics: bool, target: ScrapeTarget, scrape_ts_ms: int,
              shape_cache: ShapeCache | None = None) -> pl.DataFrame | Partial:
        if looks_like_diskstats(text):
            return self.parse_diskstats(text, target, scrape_ts_ms)
        return super().parse(text, openmetrics, target, scrape_ts_ms, shape_cache)

    def transform(self, frame: pl.DataFrame, target: ScrapeTarget,
                  shape_cache: ShapeCache | None = None) -> pl.DataFrame:
        kept = layout_derivation(shape_cache, frame, self._derivation, Derivation)
        if kept is not None:
            return kept.apply(frame)
        got = self.diskstats_layouts.transform(target.url, frame, self._derivation)
        if got is not None:
            return got
        if self.own_families_only:
            frame = frame.filter(self._own(frame))
        return map_frame(frame)

    def _own(self, frame: pl.DataFrame) -> pl.Series:
        """Which rows are of this collector's families."""
        metric = frame.get_column("metric")
        keep = metric.str.starts_with(OWN_PREFIXES[0])
        for prefix in OWN_PREFIXES[1:]:
            keep = keep | metric.str.starts_with(prefix)
        return keep

    def _derivation(self, frame: pl.DataFrame) -> Derivation:
        if not self.own_families_only:
            return map_derivation(frame)
        own = self._own(frame)
        return map_derivation(frame.filter(own)).through(own)


