"""Benchmark: ``gpuslo replay`` of a month of the default catalog, against today's stepping
and against promtool backfilling the generated rules.

Why: issue 15 asks that a backtest of 30 days of the default catalog (8 SLOs)
over the default simulated fleet's samples at 15 s resolution be at least 100x
faster than the replay that stepped the live stages one minute at a time, with
a peak memory under 1 GiB, and faster than ``promtool tsdb create-blocks-from
rules`` backfilling ``gpuslo rules`` output over the same span from a
Prometheus holding the same data.

Data.  The default scenario's fleet (8 nodes x 8 GPUs, 4 models, IB ports,
disks, with its faults) is scraped every 15 simulated seconds for
``--base-hours`` (rendered pages parsed by the collectors' parser), keeping
the series the catalog reads (the histogram buckets at its bounds only, as
``--prometheus`` would fetch them).  Those hours are repeated to fill
``--days``, counters carried on from one repetition to the next (a counter
that restarted within the base restarts again each time), and written as one
Parquet file of sample frames, the collectors' format (row groups of 64 Ki
rows), with the span ending a day before now.  For promtool the same samples
are written as OpenMetrics (each series labelled with its node), backfilled
with ``promtool tsdb create-blocks-from openmetrics`` into a TSDB a real
Prometheus serves.

Runs, each in its own process (so its peak RSS is its own):

* **replay**: :func:`collectors.history.iter_sample_file` (streamed, only the
  catalog's metrics) into :func:`slo.backtest.replay`, 1-minute steps over the
  whole span; the timelines handed on and dropped, as ``gpuslo replay``
  without ``--json`` does (``--keep-timelines`` keeps them, as for JSON).
* **today**: :func:`slo.backtest.replay_stepwise` (the live stages stepped one
  evaluation at a time, which is what ``gpuslo replay`` did) over the first
  ``--baseline-hours`` of the same file; its time per step is extrapolated to
  the whole span (its cost is per step, not per sample: the stage-2 rings
  have a fixed size).
* **promtool**: ``promtool tsdb create-blocks-from rules`` with the generated
  rules file, evaluation interval 1 minute, over the last ``--promtool-hours``
  of the span (full windows), extrapolated to the whole span.  Rules that read
  other rules' recordings find nothing during a backfill (a promtool
  limitation), which only makes promtool's figure lower.

Measured (2 shared cores under other load; 30 days = 52,012,800 samples, 283 series):
replay 38-51 s at 933 MiB peak, 262 alert episodes; the stepped replay 62-144 ms a
step (6 h measured), 2,700-6,200 s extrapolated: 71x-122x.  ``--days 3``: replay
6.9 s at 660 MiB; promtool create-blocks-from rules 11.1 s for 2 h, 400 s for the 3
days extrapolated: 58x (its openmetrics backfill of the data alone took 25 s).

Run: ``python benchmarks/bench_replay.py`` (the data is cached in
``--workdir``; the first run generates it: about ``--base-hours`` x 4 minutes of
simulation, plus minutes for the files).  ``--days 3 --no-promtool`` for a
quick look.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from gpuslo.collectors.exposition import ExpositionError, parse_exposition
from gpuslo.collectors.history import iter_sample_file, replay_metrics
from gpuslo.pipeline.schema import SAMPLE_SCHEMA, SERIES_KEY
from gpuslo.simulator.endpoints import Endpoint, endpoints
from gpuslo.simulator.fleet import Fleet
from gpuslo.simulator.scenario import default_scenario
from gpuslo.slo.backtest import replay, replay_stepwise
from gpuslo.slo.catalog import CATALOG_DIR
from gpuslo.slo.rules import generate, render_rules_file
from gpuslo.slo.sli import selector_expr, with_label_columns
from gpuslo.slo.spec import SloSpec, input_metrics, load_specs

SCRAPE_S = 15
STEP = timedelta(minutes=1)
ROW_GROUP_ROWS = 1 << 16
COUNTER_KINDS = ("counter", "histogram_bucket", "histogram_count", "histogram_sum")


def catalog() -> list[SloSpec]:
    return load_specs([CATALOG_DIR])


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def _selected(frame: pl.DataFrame, specs: list[SloSpec]) -> pl.DataFrame:
    """The rows some selector of the catalog picks (buckets at the SLOs' bounds only)."""
    sels = [sel for s in specs for sel in s.sli.selectors()]
    names = sorted({m.label for sel in sels for m in sel.matchers} | {"le"})
    keep = with_label_columns(frame, names).select(
        pl.any_horizontal([selector_expr(sel) for sel in sels]) |
        pl.col("metric").is_in([sel.per for sel in sels if sel.per])).to_series()
    return frame.filter(keep)


def _scrape(fleet: Fleet, eps: list[Endpoint], specs: list[SloSpec]) -> pl.DataFrame:
    ts = int(fleet.t * 1000)
    metrics = input_metrics(specs)
    out = []
    for ep in eps:
        body = ep.render(fleet, ts)
        if body is None:
            continue  # a page that is down gives nothing, as a failed scrape would
        try:
            frame = parse_exposition(body, node=ep.node, source=ep.source, scrape_ts_ms=ts)
        except ExpositionError:
            continue  # not a Prometheus page (JSON summaries, sysfs files)
        frame = frame.filter(pl.col("metric").is_in(metrics))
        if frame.height:
            out.append(frame)
    return _selected(pl.concat(out), specs)


def base_samples(hours: float, path: Path) -> pl.DataFrame:
    """The default scenario's fleet scraped every 15 s for ``hours`` (cached at ``path``)."""
    if path.exists():
        return pl.read_parquet(path)
    specs = catalog()
    fleet, _ = default_scenario().build()
    eps = endpoints(fleet)
    frames = []
    n = int(hours * 3600 / SCRAPE_S)
    started = time.perf_counter()
    for i in range(n):
        fleet.advance(fleet.t + SCRAPE_S)
        frames.append(_scrape(fleet, eps, specs))
        if i % 240 == 0:
            print(f"  simulated {i * SCRAPE_S / 3600:.1f} h of {hours} h "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    base = pl.concat(frames).sort("ts")
    base.write_parquet(path)
    return base


def _tiles(base: pl.DataFrame, days: float, end: datetime) -> Iterator[pl.DataFrame]:
    """The base hours repeated to fill ``days`` ending at ``end``, counters carried on."""
    span_ms = int((base["ts"].max() - base["ts"].min()).total_seconds() * 1000) \
        + SCRAPE_S * 1000  # type: ignore[operator]
    key = pl.struct(*SERIES_KEY).hash()
    base = base.with_columns(key.alias("_k"))
    # A repetition continues each counter where the previous one ended (no increase across
    # the seam); one that went down over the base (a restart) restarts again.
    offsets = base.group_by("_k").agg(
        pl.col("value").first().alias("f"), pl.col("value").last().alias("l"),
        pl.col("kind").first().cast(pl.String).alias("kind"),
    ).select("_k", pl.when(pl.col("kind").is_in(COUNTER_KINDS))
             .then((pl.col("l") - pl.col("f")).clip(0.0)).otherwise(0.0).alias("off"))
    base = base.join(offsets, on="_k")
    tiles = int(days * 86_400_000 // span_ms)
    first_ms = int(base["ts"].min().timestamp() * 1000)  # type: ignore[union-attr]
    shift = int(end.timestamp() * 1000) - (first_ms + tiles * span_ms)
    for i in range(tiles):
        yield base.with_columns(
            (pl.col("ts").dt.epoch("ms") + shift + i * span_ms).cast(pl.Datetime("ms"))
            .dt.replace_time_zone("UTC").alias("ts"),
            pl.col("value") + i * pl.col("off"),
        ).select(SAMPLE_SCHEMA.names())


def write_parquet(base: pl.DataFrame, days: float, end: datetime, path: Path) -> int:
    writer = None
    rows = 0
    for tile in _tiles(base, days, end):
        table = tile.to_arrow()
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        # Row groups of 64 Ki rows: Polars decodes a few row groups ahead of the reader, so
        # their size is part of the replay's memory (Polars' own default, 256 Ki rows,
        # adds a few hundred MiB to a month's replay).
        writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        rows += tile.height
    assert writer is not None
    writer.close()
    return rows


def write_openmetrics(base: pl.DataFrame, days: float, end: datetime, path: Path) -> None:
    """The same samples as OpenMetrics, every series labelled with its node."""
    kinds = {"counter": "counter", "gauge": "gauge", "histogram_bucket": "histogram",
             "histogram_count": "histogram"}
    fam = pl.col("metric").str.replace(r"(_total|_bucket|_count)$", "")
    types = base.select(fam.alias("f"), pl.col("kind").cast(pl.String)).unique("f")
    labels = pl.concat_str([
        pl.col("labels").list.eval(
            pl.element().struct.field("name") + pl.lit('="')
            + pl.element().struct.field("value").str.replace_all(r"\\", r"\\\\", literal=True)
            .str.replace_all('"', r'\"', literal=True) + pl.lit('"')).list.join(","),
        pl.lit(',node="'), pl.col("node"), pl.lit('"')])
    with path.open("w", encoding="utf-8") as f:
        for name, kind in types.iter_rows():
            f.write(f"# TYPE {name} {kinds.get(kind, 'gauge')}\n")
        for tile in _tiles(base, days, end):
            lines = tile.select(pl.concat_str([
                pl.col("metric"), pl.lit("{"), labels, pl.lit("} "),
                pl.col("value").cast(pl.String), pl.lit(" "),
                (pl.col("ts").dt.epoch("ms") / 1000).cast(pl.String)]).alias("line"))
            f.write("\n".join(lines["line"].to_list()) + "\n")
        f.write("# EOF\n")


# --------------------------------------------------------------------------------------------
# Child runs (each measures itself)
# --------------------------------------------------------------------------------------------


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_replay(parquet: Path, keep: bool) -> dict[str, Any]:
    specs = catalog()
    started = time.perf_counter()
    frames = iter_sample_file(parquet, metrics=replay_metrics(input_metrics(specs)))
    report = replay(specs, frames, step=STEP, keep_timelines=keep)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_mib": _peak_mib(), "episodes": len(report.alerts),
            "final_reports": len(report.final),
            "span_days": (report.end - report.start) / timedelta(days=1)}


def child_stepwise(parquet: Path, hours: float) -> dict[str, Any]:
    specs = catalog()
    lazy = pl.scan_parquet(parquet)
    first: datetime = lazy.select(pl.col("ts").min()).collect().item()
    frame = lazy.filter(pl.col("ts") <= first + timedelta(hours=hours)).filter(
        pl.col("metric").is_in(list(replay_metrics(input_metrics(specs))))).collect()
    started = time.perf_counter()
    steps = 0

    def count(_: datetime) -> None:
        nonlocal steps
        steps += 1

    replay_stepwise(specs, frame, step=STEP, on_step=count)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "steps": steps, "samples": frame.height,
            "peak_mib": _peak_mib()}


# --------------------------------------------------------------------------------------------
# promtool
# --------------------------------------------------------------------------------------------


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("prometheus exited")
        try:
            with urllib.request.urlopen(url + "/-/ready", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError("prometheus not ready")


def _wait_data(url: str, at: datetime, timeout_s: float = 300.0) -> None:
    """Until the server answers a query at ``at`` with data (blocks loaded)."""
    q = urllib.parse.urlencode({"query": "count(DCGM_FI_DEV_GPU_TEMP)",
                                "time": f"{at.timestamp():.3f}"})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=5) as resp:
                if json.loads(resp.read())["data"]["result"]:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError("prometheus has no data at the end of the span")


def run_promtool(om: Path, work: Path, start: datetime, end: datetime) -> dict[str, Any]:
    promtool, prometheus = shutil.which("promtool"), shutil.which("prometheus")
    if promtool is None or prometheus is None:
        return {"skipped": "promtool or prometheus not found (Debian package prometheus)"}
    tsdb = work / "tsdb"
    backfill_s = None
    if not tsdb.exists():
        t = time.perf_counter()
        done = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics",
                               "--max-block-duration=768h", str(om), str(tsdb)],
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(done.stderr[-2000:])
        backfill_s = time.perf_counter() - t
    rules = work / "catalog.rules.yaml"
    rules.write_text(render_rules_file(generate(catalog())), encoding="utf-8")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    (work / "prometheus.yml").write_text("global:\n  evaluation_interval: 1m\n")
    log = (work / "prometheus.log").open("ab")
    proc = subprocess.Popen([prometheus, f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tsdb}", "--storage.tsdb.retention.time=10y",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    out = work / "rule-blocks"
    shutil.rmtree(out, ignore_errors=True)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", proc)
        _wait_data(f"http://127.0.0.1:{port}", end)
        t = time.perf_counter()
        done = subprocess.run([promtool, "tsdb", "create-blocks-from", "rules",
                               f"--start={int(start.timestamp())}",
                               f"--end={int(end.timestamp())}", f"--output-dir={out}",
                               "--eval-interval=1m", f"--url=http://127.0.0.1:{port}",
                               str(rules)], capture_output=True, text=True)
        seconds = time.perf_counter() - t
        if done.returncode:
            raise RuntimeError(done.stderr[-2000:])
        if not any(out.iterdir()):
            raise RuntimeError("promtool wrote no blocks: the rules found no data")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    return {"seconds": seconds, "hours": (end - start) / timedelta(hours=1),
            "openmetrics_backfill_s": backfill_s}


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def _child(args: list[str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True,
                          text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=float, default=30.0)
    ap.add_argument("--base-hours", type=float, default=3.0,
                    help="simulated hours repeated to fill the span")
    ap.add_argument("--baseline-hours", type=float, default=6.0,
                    help="hours of today's stepping measured (then extrapolated)")
    ap.add_argument("--promtool-hours", type=float, default=2.0,
                    help="hours at the end of the span promtool evaluates (then extrapolated)")
    ap.add_argument("--workdir", type=Path,
                    default=Path(tempfile.gettempdir()) / "gpuslo-bench-replay")
    ap.add_argument("--no-promtool", action="store_true")
    ap.add_argument("--keep-timelines", action="store_true",
                    help="also measure the replay keeping every timeline (for --json)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, rest = a.child[0], a.child[1:]
        if kind == "replay":
            print(json.dumps(child_replay(Path(rest[0]), rest[1] == "keep")))
        else:
            print(json.dumps(child_stepwise(Path(rest[0]), float(rest[1]))))
        return
    a.workdir.mkdir(parents=True, exist_ok=True)
    end = (datetime.now(UTC) - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    tag = f"{a.days:g}d-{a.base_hours:g}h-{end:%Y%m%dT%H}"
    base = base_samples(a.base_hours, a.workdir / f"base-{a.base_hours:g}h.parquet")
    parquet = a.workdir / f"samples-{tag}.parquet"
    if not parquet.exists():
        t = time.perf_counter()
        rows = write_parquet(base, a.days, end, parquet)
        print(f"wrote {rows:,} samples to {parquet} ({parquet.stat().st_size / 2**20:.0f} MiB, "
              f"{time.perf_counter() - t:.0f} s)", flush=True)
    samples = pq.ParquetFile(parquet).metadata.num_rows
    series = base.select(pl.struct(*SERIES_KEY)).n_unique()
    print(f"data: {a.days:g} days of the default catalog's {series} series every {SCRAPE_S} s "
          f"= {samples:,} samples ({a.base_hours:g} simulated hours repeated)", flush=True)

    mine = _child(["replay", str(parquet), "drop"])
    print(f"  replay: {mine}", flush=True)
    kept = _child(["replay", str(parquet), "keep"]) if a.keep_timelines else None
    if kept is not None:
        print(f"  replay keeping timelines: {kept}", flush=True)
    today = _child(["stepwise", str(parquet), str(a.baseline_hours)])
    print(f"  today: {today}", flush=True)
    steps_total = int(a.days * 1440)
    today_total = today["seconds"] / today["steps"] * steps_total
    prom: dict[str, Any] | None = None
    if not a.no_promtool:
        om = a.workdir / f"samples-{tag}.om"
        if not om.exists():
            t = time.perf_counter()
            write_openmetrics(base, a.days, end, om)
            print(f"wrote {om} ({om.stat().st_size / 2**30:.1f} GiB, "
                  f"{time.perf_counter() - t:.0f} s)", flush=True)
        work = a.workdir / f"prom-{tag}"
        work.mkdir(exist_ok=True)
        data_end = pl.scan_parquet(parquet).select(pl.col("ts").max()).collect().item()
        prom = run_promtool(om, work, data_end - timedelta(hours=a.promtool_hours), data_end)
        print(f"  promtool: {prom}", flush=True)

    print()
    print(f"{'run':<44}{'wall s':>12}{'peak MiB':>10}")
    label = f"replay (bulk), {a.days:g} days, 1m steps"
    print(f"{label:<44}{mine['seconds']:>12.1f}{mine['peak_mib']:>10.0f}")
    if kept is not None:
        print(f"{'  same, keeping every timeline (--json)':<44}{kept['seconds']:>12.1f}"
              f"{kept['peak_mib']:>10.0f}")
    label = f"today: stepwise, {a.baseline_hours:g} h measured"
    print(f"{label:<44}{today['seconds']:>12.1f}{today['peak_mib']:>10.0f}")
    label = f"today: extrapolated to {a.days:g} days"
    print(f"{label:<44}{today_total:>12.0f}")
    if prom is not None and "seconds" in prom:
        prom_total = prom["seconds"] / prom["hours"] * a.days * 24
        measured = f"promtool rules, {prom['hours']:g} h measured"
        print(f"{measured:<44}{prom['seconds']:>12.1f}")
        extrapolated = f"promtool rules, extrapolated to {a.days:g} days"
        print(f"{extrapolated:<44}{prom_total:>12.0f}")
        if prom.get("openmetrics_backfill_s") is not None:
            print(f"{'(promtool openmetrics backfill of the data)':<44}"
                  f"{prom['openmetrics_backfill_s']:>12.1f}")
    elif prom is not None:
        print(f"promtool: {prom['skipped']}")
    print()
    print(f"replay: {samples / mine['seconds']:,.0f} samples/s, {mine['episodes']} alert episodes")
    print(f"speed-up over today's stepping: {today_total / mine['seconds']:.0f}x "
          f"(target >= 100x; today's {today['steps']} steps at "
          f"{today['seconds'] / today['steps'] * 1000:.0f} ms each, extrapolated)")
    print(f"peak memory: {mine['peak_mib']:.0f} MiB (target < 1024)")
    if prom is not None and "seconds" in prom:
        print(f"vs promtool create-blocks-from rules: "
              f"{prom['seconds'] / prom['hours'] * a.days * 24 / mine['seconds']:.0f}x faster "
              f"(promtool extrapolated from {prom['hours']:g} h)")


if __name__ == "__main__":
    main()
