"""The streaming engine and a real Prometheus agree on burn rates and page alert times.

One recorded fleet (two models, four hours, a scrape every 15 s, error and
latency ratios that change every 20 minutes) is written as OpenMetrics and
backfilled into a fresh TSDB with ``promtool tsdb create-blocks-from
openmetrics``; a real Prometheus (Debian package) serves it.  At every 10
minutes, the PromQL of each generated ``slo:sli_error:ratio_rate<W>`` recording
rule (:func:`slo.rules.error_ratio_expr`, the exact text in the rules file) is
queried over the API, and compared with the engine's burn rate for the same
window, fed from the same file by :mod:`gpuslo.collectors.history`.  (Recording
rules evaluate only going forward, so over backfilled data their expressions
are queried directly: the same evaluation the rule would have stored.)

Tolerance, and why.  Scrapes are at :07, :22, :37 and :52 s, so a window of
N = W / 15 s scrape intervals ending on a minute holds N samples per series
in both.  The engine counts the N increases attributed to the window's
minutes (including the one from the sample just before the window);
Prometheus' ``rate()`` uses only the N − 1 increases between samples inside
the range and extrapolates them to the range edges, by the same factor for
good and total (same timestamps), so the factor cancels in the ratio.  The two
error ratios therefore differ only by that one leading interval:

* **exactly equal** (relative 1e-9) when the error ratio did not change over the
  window and the interval before it;
* otherwise within ``(1/N) · |r₀ − r|``, where ``r₀`` is that interval's error
  ratio and ``r`` the window's, i.e. at most ``(1/N) · max error ratio`` in
  error ratio, divided by the error budget for the burn rate.

Counters start far from zero, so Prometheus' "do not extrapolate below zero"
rule never applies (it would otherwise shorten the extrapolation of a
counter that starts at 0 in the window, and add up to 7 s / W of difference).
"""

from __future__ import annotations

import itertools
import re
import subprocess
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from servers import Server, require_binary, start_prometheus

from gpuslo.collectors.history import read_exposition
from gpuslo.slo import conventions as cv
from gpuslo.slo.alerting import AlertEvaluator, AlertStatus
from gpuslo.slo.budget import Stage2State
from gpuslo.slo.catalog import CATALOG_DIR
from gpuslo.slo.rules import error_ratio_expr, generate, slo_rule_groups
from gpuslo.slo.sli import Stage1State
from gpuslo.slo.spec import SloSpec, load_specs
from gpuslo.slo.windows import Severity

pytestmark = pytest.mark.integration

CATALOG = CATALOG_DIR
HOURS = 4
SCRAPE_S = 15
OFFSET_S = 7
PHASE_MIN = 20
PER_SCRAPE = 200  # requests per scrape interval and model
ERROR_RATIOS = (0.0005, 0.02, 0.3, 0.0, 0.01, 0.1, 0.001, 0.05, 0.0, 0.2, 0.003, 0.0)
FAST_RATIOS = (0.97, 0.9, 0.5, 0.99, 0.8, 0.95, 0.6, 0.99, 0.9, 0.7, 0.96, 0.99)
WINDOWS = (timedelta(minutes=5), timedelta(minutes=30), timedelta(hours=1),
           timedelta(hours=2))
EVERY = timedelta(minutes=10)


def _phase(i: int, model: int) -> int:
    """Which phase scrape interval ``i`` (ending at sample ``i``) belongs to."""
    minute = (i * SCRAPE_S - 1) // 60
    return (minute // PHASE_MIN + 3 * model) % len(ERROR_RATIOS)


def write_fleet(path: Path, t0: datetime) -> None:
    """Request counters and a TTFT histogram per model, as a Prometheus export."""
    n = HOURS * 3600 // SCRAPE_S
    times = [t0 + timedelta(seconds=OFFSET_S + SCRAPE_S * i) for i in range(n + 1)]
    counters: list[str] = ["# TYPE vllm:request_success counter"]
    hist: list[str] = ["# TYPE vllm:time_to_first_token_seconds histogram"]
    for m, model in enumerate(("llama", "qwen")):
        target = f'instance="10.0.0.{m + 1}:8000",job="vllm",model_name="{model}"'
        ok, err, fast, total = 50_000.0 + m, 10_000.0, 80_000.0, 90_000.0
        ok_lines, err_lines = [], []
        for i, t in enumerate(times):
            if i:
                p = _phase(i, m)
                bad = round(ERROR_RATIOS[p] * PER_SCRAPE)
                err += bad
                ok += PER_SCRAPE - bad
                fast += round(FAST_RATIOS[p] * PER_SCRAPE)
                total += PER_SCRAPE
            ts = f"{t.timestamp():.3f}"
            ok_lines.append(f'vllm:request_success_total{{finished_reason="stop",{target}}} '
                            f"{ok!r} {ts}")
            err_lines.append(f'vllm:request_success_total{{finished_reason="error",{target}}} '
                             f"{err!r} {ts}")
            base = "vllm:time_to_first_token_seconds"
            hist += [f'{base}_bucket{{{target},le="0.5"}} {fast!r} {ts}',
                     f'{base}_bucket{{{target},le="+Inf"}} {total!r} {ts}',
                     f"{base}_count{{{target}}} {total!r} {ts}",
                     f"{base}_sum{{{target}}} {total * 0.3!r} {ts}"]
        counters += ok_lines + err_lines
    path.write_text("\n".join(counters + hist + ["# EOF"]) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def specs() -> list[SloSpec]:
    chosen = [s for s in load_specs([CATALOG]) if s.id in ("request-success", "ttft")]
    assert {s.id for s in chosen} == {"request-success", "ttft"}
    assert not generate(chosen).skipped  # both have generated rules
    return chosen


@pytest.fixture(scope="module")
def t0() -> datetime:
    # Recent enough for Prometheus' retention, old enough to be fully in persisted blocks.
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(
        hours=HOURS + 3)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory, t0: datetime) -> Path:
    path = tmp_path_factory.mktemp("export") / "fleet.om"
    write_fleet(path, t0)
    return path


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, export: Path) -> Iterator[Server]:
    promtool = require_binary("promtool", "prometheus")
    require_binary("prometheus", "prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    done = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(export),
                           str(work / "data")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    server = start_prometheus("global:\n  evaluation_interval: 1m\n", work)
    try:
        yield server
    finally:
        server.stop()


def query_range(server: Server, expr: str, start: datetime, end: datetime,
                step: timedelta) -> dict[tuple[float, str], float]:
    """``{(unix time, model_name): value}`` of a range query."""
    q = urllib.parse.urlencode({"query": expr, "start": start.timestamp(),
                                "end": end.timestamp(), "step": step.total_seconds()})
    doc = server.get_json(f"/api/v1/query_range?{q}")
    assert doc["status"] == "success", doc
    out: dict[tuple[float, str], float] = {}
    for series in doc["data"]["result"]:
        for t, v in series["values"]:
            out[(float(t), series["metric"].get("model_name", ""))] = float(v)
    return out


def engine_burn_rates(specs: list[SloSpec], frame: pl.DataFrame,
                      times: list[datetime]) -> dict[tuple[str, timedelta, float, str], float]:
    """The streaming engine fed in time order, evaluated at each of ``times``."""
    frame = frame.sort("ts")
    s1, s2 = Stage1State(specs), Stage2State(specs)
    out: dict[tuple[str, timedelta, float, str], float] = {}
    fed = 0
    ts_ms = frame["ts"].dt.epoch("ms")
    for t in times:
        stop = int(ts_ms.search_sorted(int(t.timestamp() * 1000), side="right"))
        if stop > fed:
            s2.apply(s1.apply(frame.slice(fed, stop - fed), partition=0))
            fed = stop
        for rep in s2.report(t):
            for w in WINDOWS:
                burn = rep.window(w).burn_rate
                if burn is not None:
                    out[(rep.slo_id, w, t.timestamp(), rep.scope["model_name"])] = burn
    return out


def _ratio_at(spec_id: str, model: int, end_i: int) -> float:
    """Error ratio of scrape interval ``end_i`` (the one ending at sample ``end_i``)."""
    p = _phase(end_i, model)
    if spec_id == "request-success":
        return round(ERROR_RATIOS[p] * PER_SCRAPE) / PER_SCRAPE
    return 1 - round(FAST_RATIOS[p] * PER_SCRAPE) / PER_SCRAPE


def test_burn_rates_agree_with_prometheus_within_one_scrape_interval(
    specs: list[SloSpec], export: Path, prometheus: Server, t0: datetime
) -> None:
    start = t0 + max(WINDOWS) + timedelta(minutes=10)
    end = t0 + timedelta(hours=HOURS)
    times: list[datetime] = []
    t = start
    while t <= end:
        times.append(t)
        t += EVERY
    engine = engine_burn_rates(specs, read_exposition(export), times)
    models = {"llama": 0, "qwen": 1}
    compared = exact = 0
    for spec in specs:
        budget = float(spec.error_budget)
        for w in WINDOWS:
            prom = query_range(prometheus, error_ratio_expr(spec, w), start, end, EVERY)
            n = int(w.total_seconds()) // SCRAPE_S
            for at in times:
                for model, m in models.items():
                    key = (at.timestamp(), model)
                    assert key in prom, f"Prometheus has no {spec.id} {w} at {at} for {model}"
                    p_burn = prom[key] / budget
                    e_burn = engine[(spec.id, w, at.timestamp(), model)]
                    # The engine's N scrape intervals; Prometheus leaves out the first.
                    last_i = int((at - t0).total_seconds() - OFFSET_S) // SCRAPE_S
                    ratios = [_ratio_at(spec.id, m, i) for i in range(last_i - n + 1,
                                                                      last_i + 1)]
                    context = (f"{spec.id} {w} {model} at {at:%H:%M}: "
                               f"engine {e_burn} vs Prometheus {p_burn}")
                    if len(set(ratios)) == 1:
                        assert e_burn == pytest.approx(p_burn, rel=1e-9, abs=1e-12), context
                        exact += 1
                    else:
                        bound = max(abs(r - ratios[0]) for r in ratios) / n / budget
                        assert abs(e_burn - p_burn) <= bound + 1e-9, context
                    compared += 1
    # Every (SLO, window, model, time) was compared, many of them exactly.
    assert compared == len(specs) * len(WINDOWS) * len(models) * len(times)
    assert exact >= compared // 4


# --- Page alert times -----------------------------------------------------------------------
#
# The generated page alert's ``expr`` (an OR of (short AND long) tiers over the
# ``slo:sli_error:ratio_rate<W>`` recordings) is evaluated by Prometheus with
# ``query_range`` at the engine's evaluation step, each recording replaced by the
# expression the recording rule stores (recording rules do not run over
# backfilled data).  The minutes at which it returns a series are the minutes
# the alert condition holds; with ``for`` absent (alertAfter 0) those are the
# minutes the alert fires.  The engine's page alert, fed the same file and
# evaluated at the same minutes, must fire at the same minutes, except where the
# one-leading-interval effect described above can move a window's burn rate
# across its tier's factor: a minute where the two disagree must have a page
# window whose Prometheus burn rate is within that documented bound of the
# factor.  Every firing and every resolution of either side must then have one
# of the other side within one evaluation step (in practice they are equal).

ALERT_STEP = timedelta(minutes=1)
RECORDING = re.compile(r"(slo:sli_error:ratio_rate\w+)\{[^}]*\}")


def page_alert_expr(spec: SloSpec) -> str:
    """The generated page alert's expr with each recording replaced by its recorded expr."""
    groups = {g["name"]: g["rules"] for g in slo_rule_groups(spec)}
    recorded = {r["record"]: r["expr"] for r in groups[cv.sli_recording_group(spec.id)]}
    (page,) = [r for r in groups[cv.alert_group(spec.id)]
               if r["labels"][cv.LABEL_SEVERITY] == Severity.PAGE.value]
    assert "for" not in page  # alertAfter 0: firing is the condition holding
    expr = RECORDING.sub(lambda m: f"({recorded[m[1]]})", page["expr"])
    assert "slo:" not in expr
    return str(expr)


def engine_page_firing(specs: list[SloSpec], frame: pl.DataFrame,
                       times: list[datetime]) -> set[tuple[str, str, float]]:
    """``{(SLO, model_name, unix time)}`` where the engine's page alert is firing."""
    frame = frame.sort("ts")
    s1, s2, alerts = Stage1State(specs), Stage2State(specs), AlertEvaluator(specs)
    ts_ms = frame["ts"].dt.epoch("ms")
    fed = 0
    out: set[tuple[str, str, float]] = set()
    for t in times:
        stop = int(ts_ms.search_sorted(int(t.timestamp() * 1000), side="right"))
        if stop > fed:
            s2.apply(s1.apply(frame.slice(fed, stop - fed), partition=0))
            fed = stop
        for a in alerts.evaluate(s2.report(t), t):
            if a.severity is Severity.PAGE and a.status is AlertStatus.FIRING:
                out.add((a.slo_id, a.scope["model_name"], t.timestamp()))
    return out


def _edges(on: set[float], times: list[float]) -> list[float]:
    """Times the condition starts or stops holding."""
    return [t for prev, t in itertools.pairwise(times) if (prev in on) != (t in on)]


def _burn_bound(spec_id: str, model: int, since_t0_s: float, window: timedelta,
                budget: float) -> float:
    """The documented burn-rate difference bound for ``window`` ending ``since_t0_s`` in."""
    n = int(window.total_seconds()) // SCRAPE_S
    last_i = int(since_t0_s - OFFSET_S) // SCRAPE_S
    ratios = [_ratio_at(spec_id, model, i) for i in range(max(1, last_i - n + 1), last_i + 1)]
    return max(abs(r - ratios[0]) for r in ratios) / n / budget


def test_page_alert_fires_when_prometheus_says_within_one_step(
    specs: list[SloSpec], export: Path, prometheus: Server, t0: datetime
) -> None:
    start = t0 + timedelta(minutes=10)
    end = t0 + timedelta(hours=HOURS)
    times: list[datetime] = []
    t = start
    while t <= end:
        times.append(t)
        t += ALERT_STEP
    stamps = [t.timestamp() for t in times]
    engine = engine_page_firing(specs, read_exposition(export), times)
    models = {"llama": 0, "qwen": 1}
    fired = disagreed = edges = 0
    for spec in specs:
        prom = set(query_range(prometheus, page_alert_expr(spec), start, end, ALERT_STEP))
        tiers = [w for w in spec.windows if w.severity is Severity.PAGE]
        budget = float(spec.error_budget)
        burns = {(w, key): v / budget
                 for w in {x for tier in tiers for x in (tier.short, tier.long)}
                 for key, v in query_range(prometheus, error_ratio_expr(spec, w), start, end,
                                           ALERT_STEP).items()}
        for model, m in models.items():
            p_on = {at for at, mod in prom if mod == model}
            e_on = {at for slo, mod, at in engine if slo == spec.id and mod == model}
            fired += len(e_on)
            for at in sorted(p_on ^ e_on):
                disagreed += 1
                assert any(
                    (p_burn := burns.get((w, (at, model)))) is not None
                    and abs(p_burn - float(tier.factor))
                    <= _burn_bound(spec.id, m, at - t0.timestamp(), w, budget) + 1e-9
                    for tier in tiers for w in (tier.short, tier.long)), (
                    f"{spec.id} {model} at {datetime.fromtimestamp(at, UTC):%H:%M}: engine "
                    f"{'fires' if at in e_on else 'silent'}, Prometheus "
                    f"{'fires' if at in p_on else 'silent'}, no window near its factor")
            e_edges, p_edges = _edges(e_on, stamps), _edges(p_on, stamps)
            edges += len(e_edges)
            step = ALERT_STEP.total_seconds()
            for mine, theirs, who in ((e_edges, p_edges, "engine"),
                                      (p_edges, e_edges, "Prometheus")):
                for at in mine:
                    assert any(abs(at - x) <= step for x in theirs), (
                        f"{spec.id} {model}: {who} changes at "
                        f"{datetime.fromtimestamp(at, UTC):%H:%M}, the other not within {step} s")
    # The fleet pages for real, fires and resolves repeatedly, and the two rarely differ.
    assert fired >= 30 and edges >= 4
    assert disagreed <= fired // 10
