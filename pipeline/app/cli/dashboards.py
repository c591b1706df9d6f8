"""``gpuslo dashboards export``: the Grafana dashboards as files, for import or provisioning."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gpuslo.dashboards.export import ExportError, write_dashboards
from gpuslo.pipeline.app.cli.common import console, fail

app = typer.Typer(help="Grafana dashboards over what gpuslo and the sources export.",
                  no_args_is_help=True)


@app.command("export")
def export(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write into (created).")],
    configmap: Annotated[bool, typer.Option(
        "--configmap", help="Write ConfigMaps labelled grafana_dashboard: \"1\" for the "
        "Grafana sidecar of kube-prometheus-stack, instead of JSON files.")] = False,
    namespace: Annotated[str | None, typer.Option(
        help="Namespace of the ConfigMaps (default: none, kubectl's current one).")] = None,
) -> None:
    """Write every dashboard: one JSON file each (import them), or ConfigMaps (provision)."""
    try:
        paths = write_dashboards(out_dir, configmap=configmap, namespace=namespace)
    except ExportError as exc:
        raise fail("cannot export dashboards:", exc) from exc
    kind = "ConfigMaps" if configmap else "dashboards"
    console.print(f"wrote {len(paths)} {kind} to {out_dir}", highlight=False)
