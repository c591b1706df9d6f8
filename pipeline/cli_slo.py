"""SLO commands: ``aggregate``, ``rules``, ``replay`` and ``validate-specs``.

Registered onto the main ``gpuslo`` app (see pipeline/cli.py).  The shared
helpers of that module are imported inside the commands, because it imports
this module while it is being built.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import polars as pl
import typer
from rich.console import Console
from rich.table import Table

from gpuslo.pipeline.schema import SAMPLE_SCHEMA, SchemaError, validate
from gpuslo.slo.spec import SloSpec, SpecError, load_specs, parse_duration

if TYPE_CHECKING:
    from gpuslo.pipeline.stages import BoardSnapshot

SpecsArg = Annotated[
    list[Path], typer.Argument(help="OpenSLO spec files or directories of *.yaml files.")
]


def _err() -> Console:
    from gpuslo.pipeline.cli import err_console

    return err_console


def _out() -> Console:
    from gpuslo.pipeline.cli import console

    return console


def _specs(paths: Sequence[Path]) -> list[SloSpec]:
    """Load specs or exit 2 listing every problem with its path."""
    try:
        specs = load_specs(paths)
    except SpecError as exc:
        _err().print(f"[red]invalid SLO specs[/] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    if not specs:
        _err().print(f"[red]no SLOs found in[/] {', '.join(map(str, paths))}")
        raise typer.Exit(2)
    return specs


def _pct(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}%"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def report_table(
    reports: Sequence[object], alerts: Sequence[object], evaluated_at: datetime | None
) -> Table:
    """The live view of ``gpuslo aggregate``: one row per SLO scope."""
    from gpuslo.slo.alerting import AlertReport, AlertStatus
    from gpuslo.slo.budget import SloReport

    firing: dict[tuple[str, str], list[str]] = {}
    for a in alerts:
        assert isinstance(a, AlertReport)
        if a.status is AlertStatus.FIRING:
            key = (a.slo_id, json.dumps(dict(sorted(a.scope.items()))))
            firing.setdefault(key, []).append(a.severity.value)
    when = evaluated_at.strftime("%H:%M:%S") if evaluated_at else "waiting for data"
    table = Table(title=f"SLOs at {when}", expand=False)
    for col in ("SLO", "scope", "objective", "SLI (period)", "burn 5m", "burn 1h",
                "budget left", "alerts"):
        table.add_column(col, justify="right" if col not in ("SLO", "scope") else "left")
    for r in reports:
        assert isinstance(r, SloReport)
        scope = ",".join(f"{k}={v}" for k, v in sorted(r.scope.items())) or "-"
        burn = {w.window: w.burn_rate for w in r.windows}
        sev = firing.get((r.slo_id, json.dumps(dict(sorted(r.scope.items())))), [])
        table.add_row(
            r.slo_id, scope, _pct(r.objective), _pct(r.period.sli) if r.period.sli is not None
            else r.period.state.value, _num(burn.get(timedelta(minutes=5))),
            _num(burn.get(timedelta(hours=1))), _pct(r.budget_remaining, 1),
            "[red]" + ",".join(sev) + "[/]" if sev else "",
        )
    return table


def read_samples(path: Path) -> pl.DataFrame:
    """A sample frame from Parquet or Arrow IPC (file or stream) in the sample schema.

    Raises:
        SchemaError: unreadable, another format, or other columns.
    """
    try:
        with path.open("rb") as f:
            head = f.read(6)
    except OSError as exc:
        raise SchemaError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        if head[:4] == b"PAR1":
            frame = pl.read_parquet(path)
        elif head == b"ARROW1":
            frame = pl.read_ipc(path)
        else:
            frame = pl.read_ipc_stream(path)
    except Exception as exc:  # polars raises several error types for a bad file
        raise SchemaError(
            f"{path}: not a Parquet or Arrow IPC file of samples: {exc}"
        ) from exc
    try:
        if "kind" in frame.columns and frame.schema["kind"] != SAMPLE_SCHEMA["kind"]:
            frame = frame.with_columns(pl.col("kind").cast(pl.String).cast(SAMPLE_SCHEMA["kind"]))
        if "ts" in frame.columns and frame.schema["ts"] != SAMPLE_SCHEMA["ts"]:
            frame = frame.with_columns(pl.col("ts").cast(SAMPLE_SCHEMA["ts"]))
    except Exception as exc:
        raise SchemaError(f"{path}: {exc}") from exc
    try:
        return validate(frame)
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc}") from exc


def _read_replay_input(path: Path) -> pl.DataFrame:
    """Samples for ``gpuslo replay``: a sample frame file, or timestamped exposition text.

    Exposition text (what a Prometheus exports) is read in chunks with a
    progress bar over the bytes read, since a month of a fleet runs to
    gigabytes.
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from gpuslo.collectors.history import is_exposition_file, read_exposition

    if not is_exposition_file(path):
        return read_samples(path)
    with Progress(
        TextColumn("reading"), BarColumn(), DownloadColumn(), console=_err(), transient=True,
    ) as progress:
        task = progress.add_task("read", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return read_exposition(path, progress=advance)


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


def register(app: typer.Typer) -> None:
    """Add this module's commands to app."""

    @app.command("validate-specs")
    def validate_specs(paths: SpecsArg) -> None:
        """Check OpenSLO spec files; list every problem with its path and exit non-zero if any."""
        try:
            specs = load_specs(paths)
        except SpecError as exc:
            _err().print(f"[red]invalid[/] {exc}", highlight=False)
            raise typer.Exit(1) from exc
        _out().print(f"ok: {len(specs)} SLO(s): {', '.join(s.id for s in specs)}")

    @app.command()
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
        from gpuslo.slo.rules import generate, render_prometheus_rule, render_rules_file

        report = generate(_specs(specs))
        for skip in report.skipped:
            _err().print(f"skipped {skip.slo_id}: {skip.reason}", highlight=False)
        if not report.groups:
            _err().print("[red]no SLO has a PromQL form[/]: nothing to write")
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
            _err().print(
                f"wrote {len(report.groups)} rule groups for {len(report.slo_ids)} SLO(s) "
                f"to {output}", highlight=False,
            )

    @app.command()
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
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        from gpuslo.collectors.history import OpenMetricsInputError
        from gpuslo.slo.backtest import backtest

        slos = _specs(specs)
        try:
            step_td = parse_duration(step)
        except ValueError as exc:
            _err().print(f"[red]bad --step[/] {exc}")
            raise typer.Exit(2) from exc
        try:
            frame = _read_replay_input(samples)
        except (SchemaError, OpenMetricsInputError) as exc:
            _err().print(f"[red]cannot replay[/] {exc}", highlight=False)
            raise typer.Exit(2) from exc
        if frame.height == 0:
            _err().print(f"[red]no samples in[/] {samples}")
            raise typer.Exit(2)
        with Progress(
            TextColumn("replaying"), BarColumn(), TextColumn("{task.fields[at]}"),
            TimeRemainingColumn(), console=_err(), transient=True,
        ) as progress:
            first: datetime = frame["ts"].min()  # type: ignore[assignment]
            last: datetime = frame["ts"].max()  # type: ignore[assignment]
            span = max((last - first).total_seconds(), 1.0)
            task = progress.add_task("replay", total=span, at="")

            def advance(t: datetime, end: datetime) -> None:
                progress.update(task, completed=min(span, (t - first).total_seconds()),
                                at=t.strftime("%Y-%m-%d %H:%M"))

            result = backtest(slos, frame, step=step_td, progress=advance)
        out = _out() if json_out is None or str(json_out) != "-" else _err()
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

    @app.command()
    def aggregate(
        config: Annotated[
            Path | None,
            typer.Option("--config", "-c", help="YAML config (GPUSLO_* variables override it)."),
        ] = None,
        specs: Annotated[
            list[Path] | None,
            typer.Option("--specs", help="Spec files or directories (default: slo.specs)."),
        ] = None,
        duration: Annotated[
            float | None, typer.Option("--duration", help="Stop after this many seconds.")
        ] = None,
        report_json: Annotated[
            Path | None,
            typer.Option("--report-json",
                         help="Keep the latest reports and alerts in this JSON file "
                              "(replaced atomically on every tick)."),
        ] = None,
    ) -> None:
        """Run SLO stage 1 and stage 2 in one process and show a live table of SLO reports."""
        from rich.live import Live

        from gpuslo.exporters.registry import build_hub
        from gpuslo.pipeline.cli import _load, _run
        from gpuslo.pipeline.publish import publish_board
        from gpuslo.pipeline.runtime import kafka_servers, run_until
        from gpuslo.pipeline.stages import SloEngine

        cfg = _load(config)
        paths = specs or cfg.slo.specs
        if not paths:
            _err().print("[red]no SLO specs[/]: set slo.specs or pass --specs")
            raise typer.Exit(2)
        slos = _specs(paths)

        async def main(stop: asyncio.Event) -> None:
            t = cfg.kafka.topics
            async with kafka_servers(cfg.kafka, [t.samples, t.sli, t.dlq]) as servers:
                engine = SloEngine(cfg, slos, bootstrap_servers=servers)
                hub = build_hub(cfg)
                _out().print(f"aggregating {len(slos)} SLO(s) from {t.samples} on {servers}; "
                             f"exporters: {', '.join(e.name for e in hub.exporters) or 'none'}")
                await engine.start()
                try:
                    with Live(report_table((), (), None), console=_out(),
                              refresh_per_second=2) as live:

                        async def show() -> None:
                            version = 0
                            while not stop.is_set():
                                snap = await engine.board.wait(version, 1.0)
                                if snap.version != version:
                                    version = snap.version
                                    live.update(report_table(snap.reports, snap.alerts,
                                                             snap.evaluated_at))
                                    if report_json is not None:
                                        write_board_json(report_json, snap)

                        async with hub:
                            await run_until(stop, duration, engine.run(stop), show(),
                                            publish_board(engine.board, hub, slos, stop))
                finally:
                    await engine.stop()

        _run(main)
