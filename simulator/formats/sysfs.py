"""Write a node's simulated ``/sys`` and ``/proc`` files to a directory (the one I/O step).

The layout is ``<root>/<node>/sys/class/infiniband/...`` and
``<root>/<node>/proc/diskstats``, so a sysfs reader is pointed at
``<root>/<node>/sys`` exactly as at a real ``/sys``.
"""

from __future__ import annotations

import os
from pathlib import Path

from gpuslo.simulator.fleet import Fleet
from gpuslo.simulator.formats.disk import render_diskstats
from gpuslo.simulator.formats.rdma import sysfs_files


def write_tree(fleet: Fleet, root: Path, nodes: list[str] | None = None) -> list[Path]:
    """Write (or refresh) every node's files; returns each node's directory.

    Files are replaced atomically so a concurrent reader never sees a half-written value.
    """
    written: list[Path] = []
    for name in nodes or [n.name for n in fleet.nodes]:
        base = root / name
        files = {f"sys/{k}": v for k, v in sysfs_files(fleet, name).items()}
        files["proc/diskstats"] = render_diskstats(fleet, name)
        for rel, content in files.items():
            path = base / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(content)
            os.replace(tmp, path)
        written.append(base)
    return written
