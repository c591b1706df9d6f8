"""Write the dashboards for Grafana: JSON files, or ConfigMaps for the Grafana sidecar.

* JSON (``<uid>.json``): import through the UI ("Dashboards > New > Import") or
  ``POST /api/dashboards/db``, or drop into a file-provisioning folder.
* ConfigMaps (``<uid>.yaml``, one per dashboard): ``kubectl apply -f DIR``;
  kube-prometheus-stack's Grafana sidecar loads every ConfigMap labelled
  ``grafana_dashboard: "1"`` (its ``sidecar.dashboards.label``/``labelValue``
  defaults), from any namespace with ``searchNamespace: ALL``.  The
  ``grafana_folder`` annotation files them under "gpuslo" where the sidecar's
  ``folderAnnotation`` is set to it.

Both carry the same JSON: a ``datasource`` variable instead of ``__inputs``,
which file and sidecar provisioning would leave unresolved.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from gpuslo.dashboards.catalog import build_all
from gpuslo.dashboards.common import render
from gpuslo.pipeline.errors import InputError

SIDECAR_LABEL = "grafana_dashboard"
SIDECAR_LABEL_VALUE = "1"
FOLDER_ANNOTATION = "grafana_folder"
FOLDER = "gpuslo"

# A ConfigMap's data may hold 1 MiB; `kubectl apply` (client-side) also copies the
# object into an annotation limited to 256 KiB, so stay under that.
CONFIGMAP_DATA_LIMIT_BYTES = 262_144

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ExportError(InputError):
    """The dashboards cannot be written as asked (bad namespace, file in the way)."""


class _LiteralStr(str):
    """A string YAML writes as a ``|`` block, so the dashboard JSON stays readable."""


def _literal(dumper: yaml.SafeDumper, data: _LiteralStr) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_LiteralStr, _literal)


def configmap_manifest(name: str, dashboard: dict[str, Any], *,
                       namespace: str | None = None) -> str:
    """One dashboard as a ConfigMap manifest for the Grafana sidecar (YAML text)."""
    text = render(dashboard)
    if len(text.encode()) > CONFIGMAP_DATA_LIMIT_BYTES:
        raise ExportError(f"dashboard {dashboard.get('uid')!r} is {len(text.encode())} bytes, "
                          f"over the {CONFIGMAP_DATA_LIMIT_BYTES} a ConfigMap applied with "
                          f"kubectl can carry")
    metadata: dict[str, Any] = {"name": f"{dashboard['uid']}-dashboard"}
    if namespace is not None:
        metadata["namespace"] = namespace
    metadata |= {
        "labels": {
            SIDECAR_LABEL: SIDECAR_LABEL_VALUE,
            "app.kubernetes.io/name": "gpuslo",
            "app.kubernetes.io/component": "dashboards",
        },
        "annotations": {FOLDER_ANNOTATION: FOLDER},
    }
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {name: _LiteralStr(text)},
    }
    return str(yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=1 << 16,
                         allow_unicode=True))


def validate_namespace(namespace: str) -> None:
    """ExportError unless ``namespace`` is a Kubernetes namespace name (a DNS-1123 label)."""
    if not _DNS1123_LABEL.match(namespace) or len(namespace) > 63:
        raise ExportError(f"namespace {namespace!r} is not a valid Kubernetes name "
                          "(lower-case letters, digits and '-', at most 63 characters)")


def write_dashboards(out_dir: Path, *, configmap: bool = False,
                     namespace: str | None = None) -> list[Path]:
    """Write every dashboard into ``out_dir`` (created if missing); returns the paths.

    ``configmap`` writes Kubernetes ConfigMaps (``<uid>.yaml``) labelled for the
    Grafana sidecar instead of plain JSON (``<uid>.json``); ``namespace`` sets
    their namespace (default: the one ``kubectl`` uses).  Existing files of the
    same names are replaced; nothing else in ``out_dir`` is touched.
    """
    if namespace is not None and not configmap:
        raise ExportError("--namespace only applies to ConfigMaps (--configmap)")
    if namespace is not None:
        validate_namespace(namespace)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, data in build_all().items():
        if configmap:
            path = out_dir / (Path(name).stem + ".yaml")
            text = configmap_manifest(name, data, namespace=namespace)
        else:
            path = out_dir / name
            text = render(data)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    return written
