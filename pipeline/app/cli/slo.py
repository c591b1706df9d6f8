"""SLO commands: ``aggregate``, ``rules`` and ``validate-specs`` (``replay``: replay.py)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live

from gpuslo.pipeline.aio import StopEvent, run_until, stop_line
from gpuslo.pipeline.app.cli.common import (
    ConfigOption,
    DurationOption,
    console,
    err_console,
    finish,
    load_or_exit,
    run_async,
)
from gpuslo.pipeline.app.keys import key_presses
from gpuslo.pipeline.app.views.fit import FitStack
from gpuslo.pipeline.app.views.slo import SloExpander, SloStatusView
from gpuslo.pipeline.app.wiring import (
    aggregation,
    aggregation_topics,
    connect_kafka,
    http_address,
    serving,
)
from gpuslo.pipeline.readiness import Readiness
from gpuslo.pipeline.stages.board import BoardSnapshot
from gpuslo.pipeline.stages.slo import STAGES
from gpuslo.slo import conventions as cv
from gpuslo.slo.rules import generate, render_prometheus_rule, render_rules_file
from gpuslo.slo.spec import SloSpec, SpecError, load_specs

# After the stages' drain (shutdown.aggregate_grace_s), stopping the embedded broker and
# flushing Alertmanager get this long before the command is cut short (deploy/: 60 s).
HARD_STOP_MARGIN_S = 5.0

SpecsArg = Annotated[
    list[Path], typer.Argument(help="OpenSLO spec files or directories of *.yaml files.")
]


def _specs(paths: Sequence[Path]) -> list[SloSpec]:
    """Load specs or exit 2 listing every problem with its path."""
    try:
        specs = load_specs(paths)
    except SpecError as exc:
        err_console.print(f"[red]invalid SLO specs[/] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    if not specs:
        err_console.print(f"[red]no SLOs found in[/] {', '.join(map(str, paths))}")
        raise typer.Exit(2)
    return specs


def write_board_json(path: Path, snap: BoardSnapshot) -> None:
    """Write one evaluation as JSON, atomically (a reader never sees a torn file).

    For scripts and tests that watch a running ``gpuslo aggregate`` without
    scraping its exporters: the file always holds one whole evaluation.
    """
    doc = {
        "version": snap.version,
        "evaluated_at": snap.evaluated_at.isoformat() if snap.evaluated_at else None,
        "reports": [r.to_dict() for r in snap.reports],
        "alerts": [
            {**a.to_dict(), "rca": [c.to_dict() for c in
                                    snap.causes.get((a.slo_id, cv.scope_key(dict(a.scope))), ())]}
            for a in snap.alerts
        ],
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def validate_specs(paths: SpecsArg) -> None:
    """Check OpenSLO spec files; list every problem with its path and exit non-zero if any."""
    try:
        specs = load_specs(paths)
    except SpecError as exc:
        err_console.print(f"[red]invalid[/] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    console.print(f"ok: {len(specs)} SLO(s): {', '.join(s.id for s in specs)}")


def rules(
    specs: SpecsArg,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
    prometheus_rule: Annotated[
        bool, typer.Option("--prometheus-rule", help="Emit a PrometheusRule resource.")
    ] = False,
    namespace: Annotated[
        str | None, typer.Option(help="Namespace of the PrometheusRule.")
    ] = None,
    name: Annotated[str, typer.Option(help="Name of the PrometheusRule.")] = "gpuslo-slos",
) -> None:
    """Generate Sloth-compatible Prometheus recording and alerting rules."""
    report = generate(_specs(specs))
    for skip in report.skipped:
        err_console.print(f"skipped {skip.slo_id}: {skip.reason}", highlight=False)
    if not report.groups:
        err_console.print("[red]no SLO has a PromQL form[/]: nothing to write")
        raise typer.Exit(1)
    text = (
        render_prometheus_rule(report, name, namespace)
        if prometheus_rule
        else render_rules_file(report)
    )
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        err_console.print(
            f"wrote {len(report.groups)} rule groups for {len(report.slo_ids)} SLO(s) "
            f"to {output}", highlight=False,
        )


def _stages(value: str) -> tuple[int, ...]:
    """``--stage``: 1, 2 or both; exit 2 naming the option otherwise."""
    chosen = {"1": (1,), "2": (2,), "both": STAGES}.get(value.strip().lower())
    if chosen is None:
        err_console.print(f"[red]bad --stage[/] {value!r}: choose 1, 2 or both",
                          highlight=False)
        raise typer.Exit(2)
    return chosen


def aggregate(
    config: ConfigOption = None,
    specs: Annotated[
        list[Path] | None,
        typer.Option("--specs", help="Spec files or directories (default: slo.specs)."),
    ] = None,
    duration: DurationOption = None,
    report_json: Annotated[
        Path | None,
        typer.Option("--report-json",
                     help="Keep the latest reports and alerts in this JSON file "
                          "(replaced atomically on every tick)."),
    ] = None,
    stage: Annotated[
        str, typer.Option("--stage",
                          help="Which SLO stage to run: 1 (samples -> gpuslo.sli, and "
                               "anomaly scoring -> gpuslo.digests), 2 (gpuslo.sli -> "
                               "reports, alerts with ranked causes, exporters) or both.")
    ] = "both",
) -> None:
    """Run SLO stage 1 and stage 2 in one process (or one of them, --stage) and show a
    live table of SLO reports.

    Serves /metrics, /healthz and /readyz on exporters.prometheus.  SIGTERM or
    Ctrl-C drains: the poll in hand finishes, state is checkpointed, offsets
    committed, the consumer groups left (limit: shutdown.aggregate_grace_s).
    """
    cfg = load_or_exit(config)
    paths = specs or cfg.slo.specs
    if not paths:
        err_console.print("[red]no SLO specs[/]: set slo.specs or pass --specs")
        raise typer.Exit(2)
    slos = _specs(paths)
    stages = _stages(stage)
    drained = True

    async def main(stop: StopEvent) -> None:
        nonlocal drained
        t = cfg.kafka.topics
        readiness = Readiness()
        stopped: list[str] = []
        async with serving(cfg, stop, readiness) as hub:
            address = http_address(hub)
            async with connect_kafka(cfg, aggregation_topics(cfg), stop, readiness) as servers, \
                    aggregation(cfg, slos, servers, hub=hub, readiness=readiness,
                                stages=stages) as agg:
                console.print(
                    f"SLO stage {' and '.join(map(str, stages))}: "
                    f"aggregating {len(slos)} SLO(s) from "
                    f"{t.samples if 1 in stages else t.sli} on {servers}; "
                    f"exporters: {', '.join(e.name for e in agg.hub.exporters) or 'none'}"
                    + (f"; /metrics, /healthz, /readyz on {address}" if address else ""),
                    highlight=False)
                if agg.page_url is not None:
                    console.print(f"status page: [bold]{agg.page_url}[/]", highlight=False)
                expander = SloExpander()
                specs_by_id = {spec.id: spec for spec in slos}

                def view() -> FitStack:
                    latest = agg.hub.latest  # the published snapshot carries causes
                    if latest is not None:
                        when = max((r.evaluated_at for r in latest.reports), default=None)
                        return FitStack([SloStatusView.of(
                            latest.reports, latest.alerts, when, specs=latest.specs,
                            rca=latest.rca, expander=expander)])
                    b = agg.engine.board.latest()
                    return FitStack([SloStatusView.of(b.reports, b.alerts, b.evaluated_at,
                                                      specs=specs_by_id, expander=expander)])

                with Live(view(), console=console, refresh_per_second=2) as live, \
                        key_presses(expander.press):

                    async def show() -> None:
                        version = 0
                        while not stop.is_set():
                            snap = await agg.engine.board.wait(version, 0.5)
                            live.update(view())  # also after a key press
                            if snap.version != version:
                                version = snap.version
                                if report_json is not None:
                                    write_board_json(report_json, snap)

                    await run_until(stop, duration, agg.run(stop), show())
                if not console.is_terminal:
                    console.line()  # rich's Live leaves its last frame without a newline
                drained = bool(agg.drained)
                done = "checkpointed, committed and out of" if drained else "cut short in"
                groups = ", ".join(r.group_id for r in agg.engine.stages)
                stopped.append(f"SLO stages {done} groups {groups}")
                if not cfg.kafka.bootstrap_servers:
                    stopped.append(f"embedded broker {servers}")
            stopped.append("exporters" + (f" and HTTP server {address}" if address else ""))
        console.print(stop_line(stop, stopped), highlight=False, soft_wrap=True)

    why = run_async(main, grace_s=cfg.shutdown.aggregate_grace_s + HARD_STOP_MARGIN_S)
    finish(0 if drained else 1, why)
