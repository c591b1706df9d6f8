"""Benchmark: SLO stage 1 throughput and stage 2 report time, against naive baselines.

Why: the issue's targets are stage 1 at >= 2 M samples/s per core on
in-memory Arrow batches and one stage-2 evaluation of 10,000 scopes in <= 1 s.
Each is measured in one process next to a naive per-row Python version of the
same arithmetic (a dict of last values per series for stage 1, a loop over
minute buckets per scope for stage 2), so the ratio says what the columnar
code buys on this machine.

Workload.  Stage 1: the default catalog's request-success SLO over vLLM-shaped
counters (``finished_reason`` stop / length / error, by ``model_name``) mixed
with DCGM temperature gauges (thermal-headroom SLO, by node): per scrape batch
``--series`` series, batches every 15 s, as a collector produces them, fed
to one :class:`~slo.sli.Stage1State` partition.  Stage 2: ``--scopes`` scopes
with 3 days + 2 hours of one-minute partials, then :meth:`Stage2State.report`.

Run: ``python benchmarks/bench_slo.py`` (about a minute); ``POLARS_MAX_THREADS=1``
for the per-core figure.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from pipeline.schema import SAMPLE_SCHEMA, canonical_labels
from slo import conventions as cv
from slo.budget import Stage2State
from slo.sli import PARTIAL_SCHEMA, Stage1State
from slo.spec import SloSpec, load_specs

ROOT = Path(__file__).resolve().parent.parent
CATALOG = ROOT / "examples" / "slos"
T0 = datetime(2026, 3, 2, tzinfo=UTC)
REASONS = ("stop", "length", "error")


def catalog(ids: set[str]) -> list[SloSpec]:
    return [s for s in load_specs([CATALOG]) if s.id in ids]


def scrape_batch(k: int, series: int) -> pl.DataFrame:
    """One collector batch at scrape ``k``: ``series`` counters + gauges, built column-wise."""
    ts = T0 + timedelta(seconds=15 * k)
    n_counter = series * 3 // 4
    n_gauge = series - n_counter
    metric = ["vllm:request_success_total"] * n_counter + ["DCGM_FI_DEV_GPU_TEMP"] * n_gauge
    kind = ["counter"] * n_counter + ["gauge"] * n_gauge
    node = [f"node-{i // 24}" for i in range(n_counter)] + [f"node-{i // 8}" for i in
                                                            range(n_gauge)]
    value = [float(k * (10 + i % 7) + (i % 3 == 2) * (k // 3)) for i in range(n_counter)] + [
        60.0 + (i + k) % 30 for i in range(n_gauge)]
    labels = [
        canonical_labels({"model_name": f"model-{i % 8}", "finished_reason": REASONS[i % 3],
                          "replica": str(i // 24)})
        for i in range(n_counter)
    ] + [canonical_labels({"gpu": str(i % 8)}) for i in range(n_gauge)]
    return pl.DataFrame(
        {"ts": [ts] * series, "node": node, "source": ["bench"] * series, "metric": metric,
         "kind": kind, "value": value, "entity": [""] * series, "labels": labels},
        schema=SAMPLE_SCHEMA,
    )


def naive_stage1(batches: list[pl.DataFrame]) -> dict[tuple[str, str, int], list[float]]:
    """Per-row Python: last value per series, increases per (SLO, scope, minute)."""
    last: dict[tuple[object, ...], tuple[int, float]] = {}
    out: dict[tuple[str, str, int], list[float]] = {}
    for frame in batches:
        for row in frame.iter_rows(named=True):
            labels = {lab["name"]: lab["value"] for lab in row["labels"]}
            ts = int(row["ts"].timestamp() * 1000)
            minute = ts - ts % 60_000
            if row["metric"] == "vllm:request_success_total":
                slo, scope = "request-success", cv.scope_key(
                    {"model_name": labels.get("model_name", "")})
                key = (row["node"], row["metric"], tuple(sorted(labels.items())))
                prev = last.get(key)
                last[key] = (ts, row["value"])
                if prev is None or ts <= prev[0]:
                    continue
                inc = row["value"] - prev[1] if row["value"] >= prev[1] else row["value"]
                acc = out.setdefault((slo, scope, minute), [0.0, 0.0])
                acc[1] += inc
                if labels.get("finished_reason") != "error":
                    acc[0] += inc
            elif row["metric"] == "DCGM_FI_DEV_GPU_TEMP":
                acc = out.setdefault(("gpu-thermal-headroom", row["node"], minute), [0.0, 0.0])
                acc[1] += 1
                acc[0] += row["value"] < 85
    return out


def bench_stage1(series: int, scrapes: int) -> None:
    specs = catalog({"request-success", "gpu-thermal-headroom"})
    batches = [scrape_batch(k, series) for k in range(scrapes)]
    n = sum(b.height for b in batches)
    state = Stage1State(specs)
    state.apply(batches[0], 0)  # warm-up: baselines, compiled expressions
    t = time.perf_counter()
    rows_out = 0
    for b in batches[1:]:
        rows_out += state.apply(b, 0).height
    fast = time.perf_counter() - t
    per_s = (n - batches[0].height) / fast
    # The naive baseline on a tenth of the batches (it is slow), scaled per sample.
    few = batches[: max(2, scrapes // 10)]
    t = time.perf_counter()
    naive_stage1(few)
    slow = time.perf_counter() - t
    naive_per_s = sum(b.height for b in few) / slow
    print(f"stage 1: {n:,} samples in {scrapes} batches of {series:,}: "
          f"{per_s / 1e6:.2f} M samples/s ({fast:.2f} s, {rows_out:,} partial rows); "
          f"naive per-row Python {naive_per_s / 1e6:.3f} M samples/s; "
          f"ratio {per_s / naive_per_s:.0f}x")
    one = pl.concat(batches)
    state = Stage1State(specs)
    t = time.perf_counter()
    state.apply(one, 0)
    big = time.perf_counter() - t
    print(f"stage 1, one batch of {n:,} samples (catch-up / replay): "
          f"{n / big / 1e6:.2f} M samples/s")


def partials(scopes: int, minutes: int, end: datetime) -> pl.DataFrame:
    """One partial per scope per minute, ending at ``end``, built column-wise."""
    start = end - timedelta(minutes=minutes)
    minute = pl.datetime_range(start, end - timedelta(minutes=1), "1m", time_unit="ms",
                               time_zone="UTC", eager=True)
    scope = pl.Series(cv.COL_SCOPE, [cv.scope_key({"model_name": f"m{i}"})
                                     for i in range(scopes)])
    frame = pl.DataFrame({cv.COL_SCOPE: scope}).join(
        pl.DataFrame({cv.COL_MINUTE: minute}), how="cross")
    frame = frame.with_columns(
        pl.lit(0, pl.Int32).alias(cv.COL_PARTITION),
        pl.lit("request-success").alias(cv.COL_SLO),
        pl.lit(100.0).alias(cv.COL_TOTAL),
        (100.0 - (pl.int_range(pl.len()) % 97 == 0).cast(pl.Float64)).alias(cv.COL_GOOD),
    )
    return frame.select(PARTIAL_SCHEMA.names())


def naive_report(frame: pl.DataFrame, now: datetime, windows: list[timedelta]) -> int:
    """Per-row Python: sum good and total per scope per window from the minute buckets."""
    sums: dict[str, list[float]] = {}
    cut = [now - w for w in windows]
    for scope, minute, good, total in frame.select(
            cv.COL_SCOPE, cv.COL_MINUTE, cv.COL_GOOD, cv.COL_TOTAL).iter_rows():
        acc = sums.setdefault(scope, [0.0] * (2 * len(windows)))
        for i, c in enumerate(cut):
            if minute >= c:
                acc[2 * i] += good
                acc[2 * i + 1] += total
    return len(sums)


def bench_stage2(scopes: int, minutes: int) -> None:
    (spec,) = catalog({"request-success"})
    end = T0 + timedelta(days=4)
    frame = partials(scopes, minutes, end)
    state = Stage2State([spec])
    t = time.perf_counter()
    for chunk in frame.sort(cv.COL_MINUTE).iter_slices(max(1, frame.height // 20)):
        state.apply(chunk)
    load = time.perf_counter() - t
    state.report(end)  # warm-up
    best = min(_timed(lambda: state.report(end)) for _ in range(3))
    snap = state.snapshot()
    size = sum(f.estimated_size() for f in snap.values())
    print(f"stage 2: {scopes:,} scopes x {minutes:,} minutes ({frame.height:,} partials) "
          f"loaded in {load:.2f} s; one report of all scopes {best:.3f} s; "
          f"state {size / scopes / 1024:.1f} KiB per scope")
    # The naive baseline on a tenth of the scopes, scaled.
    keep = frame[cv.COL_SCOPE].unique()[: scopes // 10].implode()
    part = frame.filter(pl.col(cv.COL_SCOPE).is_in(keep))
    windows = [timedelta(minutes=5), timedelta(minutes=30), timedelta(hours=1),
               timedelta(hours=2), timedelta(hours=6), timedelta(days=1), timedelta(days=3)]
    slow = _timed(lambda: naive_report(part, end, windows)) * 10
    print(f"stage 2 naive per-row Python report (scaled to {scopes:,} scopes): {slow:.2f} s; "
          f"ratio {slow / best:.0f}x")


def _timed(fn: object) -> float:
    t = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=20_000, help="samples per scrape batch")
    ap.add_argument("--scrapes", type=int, default=40, help="scrape batches for stage 1")
    ap.add_argument("--scopes", type=int, default=10_000, help="stage-2 scopes")
    ap.add_argument("--minutes", type=int, default=3 * 24 * 60 + 120,
                    help="stage-2 minutes of history per scope")
    args = ap.parse_args()
    print(f"polars {pl.__version__}, threads {pl.thread_pool_size()}, "
          f"cpus {os.cpu_count()}")
    bench_stage1(args.series, args.scrapes)
    bench_stage2(args.scopes, args.minutes)


if __name__ == "__main__":
    main()
