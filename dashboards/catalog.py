"""The dashboard set, in the order the overview's dropdown and the docs list it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.models import dashboard as dm

from gpuslo.dashboards import fabric, gpu, inference, kubernetes, rca, selfhealth, slo, storage
from gpuslo.dashboards.common import to_dict

BUILDERS: tuple[Callable[[], dm.Dashboard], ...] = (
    slo.overview,
    slo.detail,
    gpu.build,
    inference.build,
    fabric.build,
    storage.build,
    kubernetes.build,
    rca.build,
    selfhealth.build,
)

# The committed output (package data): what ``gpuslo dashboards export`` writes, byte
# for byte, and what the golden test compares the builders against.
JSON_DIR = Path(__file__).resolve().parent / "json"


def build_all() -> dict[str, dict[str, Any]]:
    """Every dashboard as JSON data, keyed by file name (``<uid>.json``)."""
    out: dict[str, dict[str, Any]] = {}
    for build in BUILDERS:
        data = to_dict(build())
        name = f"{data['uid']}.json"
        if name in out:
            raise ValueError(f"two dashboards share the uid {data['uid']!r}")
        out[name] = data
    return out
