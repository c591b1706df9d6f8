"""``gpuslo replay``: backtest SLO specs over history (a Prometheus, an export, sample files).

The command reads its input as a stream of sample frames (a file a chunk at a
time, a Prometheus a chunk of time at a time) into :func:`slo.backtest.replay`,
so memory is bounded by what the SLOs keep, not by the input.  Outputs: the
summary table (what is firing at the end, with the date), one line per alert
episode, ``--json`` (everything, timelines included), ``--parquet`` / ``--csv``
(the timelines written an SLO at a time, and the episodes beside them),
``--html`` and ``--serve`` (the status page's views of the result).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Annotated

import polars as pl
import pyarrow.parquet as pq
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from gpuslo.anomaly.rca import causes_for_alerts
from gpuslo.collectors.history import InputWarning, iter_replay_input, replay_metrics
from gpuslo.collectors.prometheus_api import PrometheusSourceConfig, iter_prometheus_frames
from gpuslo.exporters.base import ExportHub, Snapshot
from gpuslo.exporters.prometheus import PrometheusExporter
from gpuslo.exporters.web import render
from gpuslo.exporters.web.page import StatusPage
from gpuslo.exporters.web.replay import (
    SeriesSource,
    replay_source,
    series_from_timeline,
    with_episodes,
)
from gpuslo.exporters.web.series import ScopeSeries
from gpuslo.pipeline.aio import StopEvent
from gpuslo.pipeline.app.cli.common import console, err_console, fail, run_async
from gpuslo.pipeline.app.views.slo import report_table
from gpuslo.pipeline.app.wiring import dashboard_links, status_page_url
from gpuslo.pipeline.auth import BearerTokenFile
from gpuslo.pipeline.config import PrometheusExporterConfig, WebExporterConfig
from gpuslo.pipeline.errors import GpusloError, InputError
from gpuslo.slo.backtest import (
    BacktestReport,
    ReplayError,
    SloTimeline,
    episodes_frame,
    timeline_dicts,
    timeline_frame_of,
    timeline_schema,
    timeline_steps,
)
from gpuslo.slo.backtest import (
    replay as run_replay,
)
from gpuslo.slo.rules import series_selectors
from gpuslo.slo.spec import SloSpec, SpecError, input_metrics, load_specs, parse_duration

# Timeline rows are built and written this many evaluations at a time (a day of minutes).
STEPS_PER_WRITE = 1440
# A table printed to a pipe or a file is as wide as its content, whatever COLUMNS says.
UNBOUNDED_WIDTH = 10_000

SpecsArg = Annotated[
    list[Path], typer.Argument(help="OpenSLO spec files or directories of *.yaml files.")
]


# --------------------------------------------------------------------------------------------
# Times
# --------------------------------------------------------------------------------------------

_RELATIVE = re.compile(r"^now(?:\s*-\s*(\S+))?$")


def parse_instant(text: str, now: datetime, what: str) -> datetime:
    """``2026-03-02``, ``2026-03-02T12:00[:00][Z|+01:00]`` (UTC when no offset), Unix
    seconds, ``now`` or ``now-30d``.

    Raises:
        InputError: naming the option and what it accepts.
    """
    t = text.strip()
    rel = _RELATIVE.match(t)
    try:
        if rel is not None:
            return now - (parse_duration(rel.group(1)) if rel.group(1) else timedelta(0))
        if re.fullmatch(r"\d+(\.\d+)?", t):
            return datetime.fromtimestamp(float(t), UTC)
        parsed = datetime.fromisoformat(t.replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, OverflowError, OSError) as exc:
        raise InputError(f"{what} {text!r}: not a time (give 2026-03-02T12:00Z, Unix "
                         f"seconds, now or now-30d): {exc}") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# --------------------------------------------------------------------------------------------
# Timelines written as they come (Parquet, CSV)
# --------------------------------------------------------------------------------------------


def episodes_path(path: Path) -> Path:
    """The alert episodes beside a timeline file: ``x.parquet`` -> ``x.episodes.parquet``."""
    return path.with_name(f"{path.stem}.episodes{path.suffix}")


@dataclass
class TimelineWriter:
    """Each SLO's timeline appended to one Parquet or CSV file as soon as it is computed.

    Every SLO's frame is aligned to :func:`slo.backtest.timeline_schema` (windows an
    SLO does not have are null), so the file has one schema and a month of a fleet
    never sits in memory as one frame.
    """

    path: Path
    fmt: str  # "parquet" | "csv"
    schema: pl.Schema
    rows: int = 0
    _tmp: Path = field(init=False)
    _parquet: pq.ParquetWriter | None = field(default=None, init=False)
    _csv: IO[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        if self.fmt == "csv":
            self._csv = self._tmp.open("wb")
            pl.DataFrame(schema=self.schema).write_csv(self._csv)

    def add(self, tl: SloTimeline) -> None:
        for start in range(0, tl.times_ms.size, STEPS_PER_WRITE):
            self._write(timeline_frame_of(timeline_steps(tl, start, start + STEPS_PER_WRITE)))

    def _write(self, frame: pl.DataFrame) -> None:
        aligned = frame.select([
            pl.col(n).cast(t) if n in frame.columns else pl.lit(None, t).alias(n)
            for n, t in self.schema.items()])
        self.rows += aligned.height
        if self._csv is not None:
            aligned.write_csv(self._csv, include_header=False)
            return
        table = aligned.to_arrow()
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self._tmp, table.schema, compression="zstd")
        self._parquet.write_table(table)

    def close(self, episodes: pl.DataFrame) -> Path:
        """Finish the file (atomically) and write the episodes beside it; their path."""
        if self._csv is not None:
            self._csv.close()
        elif self._parquet is None:
            pl.DataFrame(schema=self.schema).write_parquet(self._tmp)
        else:
            self._parquet.close()
        os.replace(self._tmp, self.path)
        side = episodes_path(self.path)
        if self.fmt == "csv":
            episodes.with_columns(pl.col("tiers").list.join(" ")).write_csv(side)
        else:
            episodes.write_parquet(side)
        return side

    def abort(self) -> None:
        if self._csv is not None:
            self._csv.close()
        if self._parquet is not None:
            self._parquet.close()
        self._tmp.unlink(missing_ok=True)


@dataclass
class JsonTimelineWriter:
    """``--json`` with the timelines streamed: each SLO scope's series is written to a
    side file as its SLO is computed, and the report is assembled around them at the end,
    so a month of a fleet never sits in memory as one document.  The result parses to
    :meth:`~slo.backtest.BacktestReport.to_dict`."""

    path: Path  # '-': stdout
    _tmp: Path = field(init=False)
    _side: IO[str] = field(init=False)
    _first: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        stdout = str(self.path) == "-"
        fd, name = tempfile.mkstemp(prefix=".gpuslo-replay-", suffix=".timeline",
                                    dir=None if stdout else self.path.parent)
        self._tmp = Path(name)
        self._side = os.fdopen(fd, "w", encoding="utf-8")

    def add(self, tl: SloTimeline) -> None:
        for scope in timeline_dicts(tl):
            self._side.write(("" if self._first else ",\n") + json.dumps(scope))
            self._first = False

    def close(self, report: BacktestReport) -> None:
        self._side.close()
        head = json.dumps(report.to_dict(timeline=False), indent=1)
        if str(self.path) == "-":
            self._emit(head, sys.stdout)
        else:
            tmp = self.path.with_name(self.path.name + ".tmp")
            with tmp.open("w", encoding="utf-8") as f:
                self._emit(head, f)
            os.replace(tmp, self.path)
        self._tmp.unlink(missing_ok=True)

    def _emit(self, head: str, sink: IO[str]) -> None:
        sink.write(head.removesuffix("\n}") + ',\n "timeline": [\n')
        with self._tmp.open(encoding="utf-8") as side:
            shutil.copyfileobj(side, sink)
        sink.write("\n ]\n}\n")

    def abort(self) -> None:
        self._side.close()
        self._tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def _specs(paths: Sequence[Path]) -> list[SloSpec]:
    try:
        specs = load_specs(paths)
    except SpecError as exc:
        raise fail("invalid SLO specs", exc) from None
    if not specs:
        raise fail("cannot replay", InputError(f"no SLOs found in {', '.join(map(str, paths))}"))
    return specs


def _secret_file(path: Path | None, what: str) -> BearerTokenFile | None:
    if path is None:
        return None
    source = BearerTokenFile(path, what=what)
    source.get()  # a missing or empty file fails now, naming it
    return source


def _table_console() -> Console:
    """stdout for the table; outside a terminal, as wide as the table (never cut at 80)."""
    if console.is_terminal:
        return console
    return Console(file=sys.stdout, width=UNBOUNDED_WIDTH, color_system=None,
                   soft_wrap=False)


def _episode_line(report: BacktestReport) -> Iterator[str]:
    for a in report.alerts:
        scope = ",".join(f"{k}={v}" for k, v in sorted(a.scope.items()))
        end = (f"resolved {a.resolved_at:%Y-%m-%d %H:%M:%S}" if a.resolved_at
               else "still firing at the end")
        tiers = f" ({', '.join(a.tiers)})" if a.tiers else ""
        yield (f"{a.severity.value} {a.slo_id} {{{scope}}} fired "
               f"{a.fired_at:%Y-%m-%d %H:%M:%S}, {end}{tiers}")
        if a.rca is not None:
            for cause in a.rca[:3]:
                yield f"  {cause['rank']}. [{cause['kind']}] {cause['evidence']}"
            if not a.rca:
                yield "  no cause found"


def _kept(frames: Iterator[pl.DataFrame], kept: list[pl.DataFrame],
          metrics: frozenset[str]) -> Iterator[pl.DataFrame]:
    """Frames of every series for ranking causes, each passed on cut to the SLOs' inputs."""
    for frame in frames:
        kept.append(frame)
        yield frame.filter(pl.col("metric").is_in(list(metrics)))


def _with_causes(result: BacktestReport, kept: list[pl.DataFrame]) -> BacktestReport:
    """Every alert episode with its ranked causes (topology from the samples' labels)."""
    if not result.alerts:
        return result
    with err_console.status(f"ranking the causes of {len(result.alerts)} alert(s)"):
        causes = causes_for_alerts(pl.concat(kept, how="vertical_relaxed"), result.alerts)
    return dataclasses.replace(result, alerts=tuple(
        dataclasses.replace(a, rca=tuple(c.to_dict() for c in ranked))
        for a, ranked in zip(result.alerts, causes, strict=True)))


def replay(
    specs: SpecsArg,
    samples: Annotated[Path | None, typer.Option(
        "--samples", "-s",
        help="Recorded samples: an OpenMetrics / Prometheus text export with timestamps "
             "(promtool accepts it: a family no SLO uses never fails the replay), "
             "`promtool tsdb dump` output, or Parquet / Arrow IPC sample frames.")] = None,
    prometheus: Annotated[str | None, typer.Option(
        "--prometheus", metavar="URL",
        help="Read the raw samples of exactly the series the specs select from this "
             "Prometheus (HTTP API, chunked, retried). Needs --start.")] = None,
    start: Annotated[str | None, typer.Option(
        help="First evaluation: 2026-03-02T12:00Z, Unix seconds, now-30d (default: the "
             "first sample). Samples before it are not read.")] = None,
    end: Annotated[str | None, typer.Option(
        help="Last evaluation, same forms (default: the last sample; with --prometheus, "
             "now). Samples after it are not read.")] = None,
    step: Annotated[str, typer.Option(
        help="Evaluation step: whole seconds (15s, 1m, 5m).")] = "1m",
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Write the full JSON report here ('-': stdout): final reports, "
                       "episodes, and every window's ratio and burn rate over time.")] = None,
    parquet_out: Annotated[Path | None, typer.Option(
        "--parquet", help="Write the timelines here (a row per evaluation and SLO scope: "
                          "every window's state, error ratio and burn rate, the budget, "
                          "each tier's condition, firing per severity); the alert "
                          "episodes go to NAME.episodes.parquet.")] = None,
    csv_out: Annotated[Path | None, typer.Option(
        "--csv", help="As --parquet, in CSV (episodes in NAME.episodes.csv).")] = None,
    html: Annotated[Path | None, typer.Option(
        "--html", help="Write a self-contained HTML report (charts of every SLO scope with "
                       "its alert episodes) to this file.")] = None,
    serve: Annotated[bool, typer.Option(
        "--serve", help="Then serve the result as a status page (and /metrics) until "
                        "Ctrl-C.")] = False,
    host: Annotated[str, typer.Option(help="Address --serve listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(
        help="Port --serve listens on (0: any free port).", min=0, max=65535)] = 9464,
    bearer_token_file: Annotated[Path | None, typer.Option(
        help="--prometheus: bearer token file (re-read when it rotates).")] = None,
    username: Annotated[str | None, typer.Option(
        help="--prometheus: basic auth user (with --password-file).")] = None,
    password_file: Annotated[Path | None, typer.Option(
        help="--prometheus: basic auth password file.")] = None,
    ca_file: Annotated[Path | None, typer.Option(
        help="--prometheus: CA bundle to verify its certificate against.")] = None,
    cert_file: Annotated[Path | None, typer.Option(
        help="--prometheus: client certificate (mutual TLS, with --key-file).")] = None,
    key_file: Annotated[Path | None, typer.Option(
        help="--prometheus: client certificate key.")] = None,
    insecure_skip_verify: Annotated[bool, typer.Option(
        help="--prometheus: do not verify TLS.")] = False,
    chunk: Annotated[str, typer.Option(
        help="--prometheus: time per query (below its --query.max-samples).")] = "2h",
    rca: Annotated[bool, typer.Option(
        "--rca", help="Rank the root causes of every alert (topology from the samples' "
                      "labels): the top 3 under each alert line, all of them as 'rca' in "
                      "--json and the episodes files. Needs --samples; keeps every "
                      "series of the input in memory.")] = False,
) -> None:
    """Backtest specs over history: SLIs, budgets, burn rates, and when alerts would fire.

    What a value at time t counts: exactly what `gpuslo aggregate` reports when it
    evaluates at t after every sample stamped at or before t. A window W counts the
    samples in (t - W, t], the minute in progress included (its start rounded up to
    the minute); a counter's increase counts when both of its samples lie in the
    window, as Prometheus's rate() sees them; a per-minute slice counts what changed
    in that minute. Evaluations are every --step from --start (or the first sample)
    to --end (or the last); stretches with no data are not stepped over.
    """
    now = datetime.now(UTC)
    slos = _specs(specs)
    writers: list[TimelineWriter] = []
    json_writer: JsonTimelineWriter | None = None
    try:
        if (samples is None) == (prometheus is None):
            raise InputError("give one input: --samples FILE or --prometheus URL")
        if rca and samples is None:
            raise InputError("--rca needs --samples: ranking causes reads every series of "
                             "the fleet, --prometheus fetches only the SLOs' inputs")
        step_td = parse_duration(step)
        t0 = parse_instant(start, now, "--start") if start is not None else None
        t1 = parse_instant(end, now, "--end") if end is not None else None
        if prometheus is not None:
            if t0 is None:
                raise InputError("--prometheus needs --start (e.g. --start now-30d)")
            t1 = t1 or now
        if t0 is not None and t1 is not None and t1 < t0:
            raise InputError(f"--end {t1:%Y-%m-%d %H:%M:%S} is before --start "
                             f"{t0:%Y-%m-%d %H:%M:%S}")
        metrics = replay_metrics(input_metrics(slos))
        warnings: list[InputWarning] = []
        kept: list[pl.DataFrame] = []
        if samples is not None:
            frames = iter_replay_input(samples, metrics=None if rca else metrics,
                                       not_before=t0, not_after=t1, now=now,
                                       warnings=warnings)
            if rca:
                frames = _kept(frames, kept, metrics)
            source = str(samples)
        else:
            assert prometheus is not None and t0 is not None and t1 is not None
            if password_file is not None and username is None:
                raise InputError("--password-file needs --username")
            password = _secret_file(password_file, "--password-file")
            if username is not None and password is None:
                raise InputError("--username needs --password-file")
            cfg = PrometheusSourceConfig(
                prometheus,
                bearer_token=_secret_file(bearer_token_file, "--bearer-token-file"),
                basic_auth=(username, password) if username and password else None,
                ca_file=str(ca_file) if ca_file else None,
                cert_file=str(cert_file) if cert_file else None,
                key_file=str(key_file) if key_file else None,
                insecure_skip_verify=insecure_skip_verify, chunk=parse_duration(chunk))
            problems = cfg.problems()
            if problems:
                raise InputError(f"--prometheus {prometheus}: " + "; ".join(problems))
            frames = iter_prometheus_frames(cfg, series_selectors(slos), metrics, t0, t1,
                                            now=now)
            source = prometheus
        schema = timeline_schema(slos)
        writers = [TimelineWriter(p, fmt, schema)
                   for p, fmt in ((parquet_out, "parquet"), (csv_out, "csv")) if p is not None]
        json_writer = JsonTimelineWriter(json_out) if json_out is not None else None
        # The status page's series are built from each timeline as it comes (thinned to
        # what a chart draws), so no timeline is kept whatever the outputs.
        pages = html is not None or serve
        series: list[ScopeSeries] = []
        with Progress(TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.fields[what]}"), TimeElapsedColumn(),
                      console=err_console, transient=True) as bar:
            task = bar.add_task("reading", total=None, what="")

            def progress(phase: str, done: int, total: int) -> None:
                if phase == "read":
                    bar.update(task, what=f"{done:,} samples")
                else:
                    bar.update(task, description="evaluating", total=total, completed=done,
                               what=f"{done}/{total} SLOs")

            def write(tl: SloTimeline) -> None:
                for w in writers:
                    w.add(tl)
                if json_writer is not None:
                    json_writer.add(tl)
                if pages:
                    series.extend(series_from_timeline(tl))

            try:
                result = run_replay(slos, frames, step=step_td, start=t0, end=t1,
                                    progress=progress, keep_timelines=False,
                                    on_timeline=write)
            except ReplayError as exc:
                raise ReplayError(f"{source}: {exc}") from None
        if rca:
            result = _with_causes(result, kept)
            kept.clear()
        written = [(w.path, w.close(episodes_frame(result))) for w in writers]
        writers = []
    except (GpusloError, ValueError) as exc:  # ValueError: a bad --step or --chunk
        for w in writers:
            w.abort()
        if json_writer is not None:
            json_writer.abort()
        error = exc if isinstance(exc, GpusloError) else InputError(str(exc))
        raise fail("cannot replay", error) from None
    for warning in warnings:
        err_console.print(f"[yellow]warning[/] {samples}: {warning}", highlight=False,
                          soft_wrap=True)
    to_stdout = json_out is not None and str(json_out) == "-"
    out = err_console if to_stdout else _table_console()
    out.print(report_table(result.final, result.firing_at_end(), result.end))
    for line in _episode_line(result):
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    if json_writer is not None:
        json_writer.close(result)
    for timeline_path, side in written:
        out.print(f"timelines: {timeline_path}; alert episodes: {side}", highlight=False,
                  soft_wrap=True)
    title = f"{Path(source).name if samples is not None else source}, {len(slos)} SLO(s)"
    if not pages:
        return
    pages_source = replay_source(result, slos, title, with_episodes(series, result.alerts))
    if html is not None:
        write_replay_html(html, pages_source,
                          {"source": source, "specs": " ".join(map(str, specs)), "step": step})
        out.print(f"HTML report: {html}", highlight=False)
    if serve:
        run_async(lambda stop: serve_replay(result, slos, pages_source, title, host, port,
                                            stop))


def write_replay_html(path: Path, source: SeriesSource, inputs: dict[str, str]) -> None:
    """One self-contained HTML file of the backtest, written atomically."""
    text = render.report(source, command="gpuslo replay", inputs=inputs)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


async def serve_replay(result: BacktestReport, specs: Sequence[SloSpec], source: SeriesSource,
                       title: str, host: str, port: int, stop: StopEvent) -> None:
    """Serve a finished backtest: the status page over its series, /metrics of its end."""
    http = PrometheusExporter(PrometheusExporterConfig(host=host, port=port))
    page = StatusPage(WebExporterConfig(), title=title, dashboards=dashboard_links(),
                      source=source)
    page.mount(http.app)
    try:
        hub = await ExportHub([http, page]).start()
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port} (use --port 0 for any free port):",
                   exc) from None
    try:
        await hub.publish(Snapshot.build(reports=result.final, taken_at=result.end,
                                         specs=specs))
        console.print(f"serving the replay at [bold]{status_page_url(hub)}[/]; Ctrl-C stops",
                      highlight=False)
        await stop.wait()
    finally:
        await hub.shutdown()


__all__ = ["JsonTimelineWriter", "TimelineWriter", "episodes_path", "parse_instant", "replay",
           "serve_replay", "write_replay_html"]
