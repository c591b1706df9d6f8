"""SLO commands: ``aggregate``, ``rules``, ``replay`` and ``validate-specs``."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated

import polars as pl
import typer
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from gpuslo.collectors.history import OpenMetricsInputError, read_history
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
from gpuslo.pipeline.app.views.slo import report_table
from gpuslo.pipeline.app.wiring import aggregation, connect_kafka, http_address, serving
from gpuslo.pipeline.readiness import Readiness
from gpuslo.pipeline.schema import SchemaError
from gpuslo.pipeline.stages.board import BoardSnapshot
from gpuslo.slo.backtest import backtest
from gpuslo.slo.rules import generate, render_prometheus_rule, render_rules_file
from gpuslo.slo.spec import SloSpec, SpecError, load_specs, parse_duration

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


def _read_replay_input(path: Path) -> pl.DataFrame:
    """The replay's samples, with a progress bar over the bytes read."""
    with Progress(
        TextColumn("reading"), BarColumn(), DownloadColumn(), console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task("read", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return read_history(path, progress=advance)


def write_board_json(path: Path, snap: BoardSnapshot) -> None:
    """Write one evaluation as JSON, atomically (a reader never sees a torn file).

    For scripts and tests that watch a running ``gpuslo aggregate`` without
    scraping its exporters: the file always holds one whole evaluation.
    """
    doc = {
        "version": snap.version,
        "evaluated_at": snap.evaluated_at.isoformat() if snap.evaluated_at else None,
        "reports": [r.to_dict() for r in snap.reports],
        "alerts": [a.to_dict() for a in snap.alerts],
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


def replay(
    specs: SpecsArg,
    samples: Annotated[
        Path, typer.Option(
            "--samples", "-s",
            help="Parquet or Arrow IPC sample frames, or OpenMetrics / Prometheus text "
                 "with timestamps (.om, .txt; detected by extension or content).",
        )
    ],
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Write the full JSON report here ('-': stdout)."),
    ] = None,
    step: Annotated[str, typer.Option(help="Evaluation step (e.g. 1m, 5m).")] = "1m",
) -> None:
    """Backtest specs over recorded samples: SLIs, budgets, and when alerts would fire."""
    slos = _specs(specs)
    try:
        step_td = parse_duration(step)
    except ValueError as exc:
        err_console.print(f"[red]bad --step[/] {exc}")
        raise typer.Exit(2) from exc
    try:
        frame = _read_replay_input(samples)
    except (SchemaError, OpenMetricsInputError) as exc:
        err_console.print(f"[red]cannot replay[/] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    if frame.height == 0:
        err_console.print(f"[red]no samples in[/] {samples}")
        raise typer.Exit(2)
    with Progress(
        TextColumn("replaying"), BarColumn(), TextColumn("{task.fields[at]}"),
        TimeRemainingColumn(), console=err_console, transient=True,
    ) as progress:
        first: datetime = frame["ts"].min()  # type: ignore[assignment]
        last: datetime = frame["ts"].max()  # type: ignore[assignment]
        span = max((last - first).total_seconds(), 1.0)
        task = progress.add_task("replay", total=span, at="")

        def advance(t: datetime, end: datetime) -> None:
            progress.update(task, completed=min(span, (t - first).total_seconds()),
                            at=t.strftime("%Y-%m-%d %H:%M"))

        result = backtest(slos, frame, step=step_td, progress=advance)
    out = console if json_out is None or str(json_out) != "-" else err_console
    out.print(report_table(result.final, (), result.end))
    for a in result.alerts:
        scope = ",".join(f"{k}={v}" for k, v in sorted(a.scope.items()))
        out.print(
            f"{a.severity.value} {a.slo_id} {{{scope}}} fired {a.fired_at:%Y-%m-%d %H:%M}, "
            + (f"resolved {a.resolved_at:%Y-%m-%d %H:%M}" if a.resolved_at
               else "still firing at the end"),
            highlight=False,
        )
    if json_out is not None:
        text = json.dumps(result.to_dict(), indent=2)
        if str(json_out) == "-":
            sys.stdout.write(text + "\n")
        else:
            json_out.write_text(text + "\n", encoding="utf-8")


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
) -> None:
    """Run SLO stage 1 and stage 2 in one process and show a live table of SLO reports.

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
    drained = True

    async def main(stop: StopEvent) -> None:
        nonlocal drained
        t = cfg.kafka.topics
        s = cfg.slo
        readiness = Readiness()
        stopped: list[str] = []
        async with serving(cfg, stop, readiness) as hub:
            address = http_address(hub)
            async with connect_kafka(cfg, [t.samples, t.sli, t.dlq], stop, readiness) as servers, \
                    aggregation(cfg, slos, servers, hub=hub, readiness=readiness) as agg:
                console.print(
                    f"aggregating {len(slos)} SLO(s) from {t.samples} on {servers}; "
                    f"exporters: {', '.join(e.name for e in agg.hub.exporters) or 'none'}"
                    + (f"; /metrics, /healthz, /readyz on {address}" if address else ""),
                    highlight=False)
                with Live(report_table((), (), None), console=console,
                          refresh_per_second=2) as live:

                    async def show() -> None:
                        version = 0
                        while not stop.is_set():
                            snap = await agg.engine.board.wait(version, 1.0)
                            if snap.version != version:
                                version = snap.version
                                live.update(report_table(snap.reports, snap.alerts,
                                                         snap.evaluated_at))
                                if report_json is not None:
                                    write_board_json(report_json, snap)

                    await run_until(stop, duration, agg.run(stop), show())
                if not console.is_terminal:
                    console.line()  # rich's Live leaves its last frame without a newline
                drained = bool(agg.drained)
                done = "checkpointed, committed and out of" if drained else "cut short in"
                stopped.append(f"SLO stages {done} groups {s.stage1_group_id}, "
                               f"{s.stage2_group_id}")
                if not cfg.kafka.bootstrap_servers:
                    stopped.append(f"embedded broker {servers}")
            stopped.append("exporters" + (f" and HTTP server {address}" if address else ""))
        console.print(stop_line(stop, stopped), highlight=False, soft_wrap=True)

    why = run_async(main, grace_s=cfg.shutdown.aggregate_grace_s + HARD_STOP_MARGIN_S)
    finish(0 if drained else 1, why)
