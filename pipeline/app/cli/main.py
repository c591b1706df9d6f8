"""The ``gpuslo`` command line: one Typer app, each command defined beside its area.

The command modules import only :mod:`~gpuslo.pipeline.app.cli.common` and the
layers below; this module imports them all and registers their functions, so
nothing imports the app while it is being built.
"""

from __future__ import annotations

import typer

from gpuslo.pipeline.app.cli import alerts, anomaly, collect, core, dashboards, sim, slo

app = typer.Typer(
    name="gpuslo",
    help="Observability pipeline and SLO engine for GPU / AI clusters.",
    no_args_is_help=True,
    add_completion=False,
)

for command in (
    core.version,
    core.validate,
    core.broker,
    collect.collect,
    collect.scrape,
    collect.tail,
    sim.demo,
    sim.simulate,
    sim.inject,
    slo.aggregate,
    anomaly.anomaly,
    slo.rules,
    slo.replay,
    slo.validate_specs,
    alerts.receiver,
):
    app.command()(command)
app.add_typer(dashboards.app, name="dashboards")

if __name__ == "__main__":  # pragma: no cover
    app()
