"""``/proc/diskstats`` lines and node_exporter's ``node_disk_*`` families built from them.

The kernel prints 17 fields after ``major minor name`` (since 5.5: reads,
merges, sectors, ms, the same for writes, in-flight, io ms, weighted ms, then
discards and flushes).  node_exporter turns sectors into bytes (x512, always)
and milliseconds into seconds.
"""

# ruff: noqa: E501  (upstream help texts are kept on one line, verbatim)

from __future__ import annotations

from gpuslo.simulator.entities import Disk
from gpuslo.simulator.fleet import Fleet
from gpuslo.simulator.formats.exposition import Family, go_float

FIELDS: tuple[str, ...] = (
    "reads", "reads_merged", "sectors_read", "read_ms", "writes", "writes_merged",
    "sectors_written", "write_ms", "io_now", "io_ms", "weighted_ms", "discards",
    "discards_merged", "sectors_discarded", "discard_ms", "flushes", "flush_ms",
)


def disk_fields(d: Disk) -> dict[str, int]:
    """The integer counters the kernel would print for ``d``."""
    out = {k: int(d.stats.get(k, 0.0)) for k in FIELDS if k != "io_now"}
    out["io_now"] = round(d.io_now)
    return out


def render_diskstats(fleet: Fleet, node: str) -> str:
    """``/proc/diskstats`` of ``node`` (NVMe namespaces only; no partitions)."""
    lines = []
    for d in fleet.node_by_name[node].disks:
        v = disk_fields(d)
        lines.append(f"{d.major:4d} {d.minor:7d} {d.name} " + " ".join(str(v[k]) for k in FIELDS))
    return "\n".join(lines) + "\n"


_NE_DISK: tuple[tuple[str, str, str, str, float], ...] = (
    ("node_disk_discard_time_seconds_total", "counter", "This is the total number of seconds spent by all discards.", "discard_ms", 0.001),
    ("node_disk_discarded_sectors_total", "counter", "The total number of sectors discarded successfully.", "sectors_discarded", 1.0),
    ("node_disk_discards_completed_total", "counter", "The total number of discards completed successfully.", "discards", 1.0),
    ("node_disk_discards_merged_total", "counter", "The total number of discards merged.", "discards_merged", 1.0),
    ("node_disk_flush_requests_time_seconds_total", "counter", "This is the total number of seconds spent by all flush requests.", "flush_ms", 0.001),
    ("node_disk_flush_requests_total", "counter", "The total number of flush requests completed successfully", "flushes", 1.0),
    ("node_disk_io_now", "gauge", "The number of I/Os currently in progress.", "io_now", 1.0),
    ("node_disk_io_time_seconds_total", "counter", "Total seconds spent doing I/Os.", "io_ms", 0.001),
    ("node_disk_io_time_weighted_seconds_total", "counter", "The weighted # of seconds spent doing I/Os.", "weighted_ms", 0.001),
    ("node_disk_read_bytes_total", "counter", "The total number of bytes read successfully.", "sectors_read", 512.0),
    ("node_disk_read_time_seconds_total", "counter", "The total number of seconds spent by all reads.", "read_ms", 0.001),
    ("node_disk_reads_completed_total", "counter", "The total number of reads completed successfully.", "reads", 1.0),
    ("node_disk_reads_merged_total", "counter", "The total number of reads merged.", "reads_merged", 1.0),
    ("node_disk_write_time_seconds_total", "counter", "This is the total number of seconds spent by all writes.", "write_ms", 0.001),
    ("node_disk_writes_completed_total", "counter", "The total number of writes completed successfully.", "writes", 1.0),
    ("node_disk_writes_merged_total", "counter", "The number of writes merged.", "writes_merged", 1.0),
    ("node_disk_written_bytes_total", "counter", "The total number of bytes written successfully.", "sectors_written", 512.0),
)


def disk_families(fleet: Fleet, node: str) -> list[Family]:
    """node_exporter's ``node_disk_*`` families for ``node``."""
    disks = fleet.node_by_name[node].disks
    values = [(d, disk_fields(d)) for d in disks]
    info = Family("node_disk_info", "gauge", "Info of /sys/block/<block_device>.")
    for d in disks:
        info.add([("device", d.name), ("major", str(d.major)), ("minor", str(d.minor)),
                  ("model", d.model), ("path", f"pci-0000:{0x41 + d.minor:02x}:00.0-nvme-1"),
                  ("revision", "MPPA5B5Q"), ("rotational", "0"), ("serial", d.serial),
                  ("wwn", f"eui.{d.serial.lower()}")], "1")
    fams = [info]
    for name, kind, help_, field, scale in _NE_DISK:
        fam = Family(name, kind, help_)
        for d, v in values:
            x = v[field] * scale
            fam.add([("device", d.name)], go_float(round(x, 3) if scale == 0.001 else x))
        fams.append(fam)
    return fams
