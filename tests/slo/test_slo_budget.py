"""Stage 2: windows as ratios of sums, budgeting methods, explicit states, upserts."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slo_helpers import T0, ratio_spec

from gpuslo.slo.budget import SliState, Stage2State
from gpuslo.slo.spec import SloSpec

M = timedelta(minutes=1)
H = timedelta(hours=1)


def partials(rows: list[tuple[int, int, float, float]], slo: str = "api",
             scope: str = "{}") -> pl.DataFrame:
    """Partials from ``(partition, minute offset, good, total)`` rows."""
    return pl.DataFrame(
        {
            "partition": [r[0] for r in rows],
            "slo": [slo] * len(rows),
            "scope": [scope] * len(rows),
            "minute": [T0 + r[1] * M for r in rows],
            "good": [r[2] for r in rows],
            "total": [r[3] for r in rows],
        },
        schema_overrides={"partition": pl.Int32, "minute": pl.Datetime("ms", "UTC")},
    )


def one_report(spec: SloSpec, rows: list[tuple[int, int, float, float]], now: datetime,
               **kw: object):  # type: ignore[no-untyped-def]
    s2 = Stage2State([spec], **kw)  # type: ignore[arg-type]
    s2.apply(partials(rows, slo=spec.id))
    (rep,) = s2.report(now)
    return rep


def test_the_error_ratio_is_a_ratio_of_sums_not_an_average_of_ratios() -> None:
    # 1h: 59 quiet minutes with 1 request each, all good; one busy minute with 1000
    # requests, 100 failed. Ratio of sums: 100/1059 = 9.4 %. Average of the 60
    # per-minute ratios (Sloth's optimised period rule): 0.1/60 = 0.17 %.
    spec = ratio_spec(target=0.99)
    rows = [(0, i, 1.0, 1.0) for i in range(59)] + [(0, 59, 900.0, 1000.0)]
    rep = one_report(spec, rows, T0 + 60 * M)
    w = rep.window(H)
    assert w.error_ratio == pytest.approx(100 / 1059)
    assert w.error_ratio != pytest.approx((0.1 + 0 * 59) / 60)
    assert w.burn_rate == pytest.approx(100 / 1059 / 0.01)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 50)), min_size=1, max_size=120))
def test_every_window_is_bad_over_total_of_its_minutes(traffic: list[tuple[int, int]]) -> None:
    spec = ratio_spec(target=0.995)
    rows = [(0, i, float(ok), float(ok + bad)) for i, (ok, bad) in enumerate(traffic)]
    now = T0 + len(rows) * M
    rep = one_report(spec, rows, now)
    for w in rep.windows:
        n = int(w.window / M)
        part = traffic[max(0, len(traffic) - n):]
        bad = sum(b for _, b in part)
        total = sum(o + b for o, b in part)
        if total == 0:
            assert w.state is SliState.NO_DATA and w.sli is None and w.burn_rate is None
            continue
        assert w.state is SliState.OK
        assert w.error_ratio == pytest.approx(bad / total)
        assert w.sli is not None and 0.0 <= w.sli <= 1.0
        assert w.burn_rate is not None and w.burn_rate >= 0.0
        assert w.burn_rate == pytest.approx(bad / total / 0.005)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(-5, 50), st.floats(0, 50)), min_size=1, max_size=30))
def test_the_sli_stays_within_zero_and_one_even_when_counters_are_skewed(
    traffic: list[tuple[float, float]],
) -> None:
    # good and total come from different counters: a scrape can put good above total
    # in one minute, or below zero (bad > total). Still 0 <= SLI <= 1, burn >= 0.
    spec = ratio_spec(target=0.99)
    rows = [(0, i, g, t) for i, (g, t) in enumerate(traffic)]
    rep = one_report(spec, rows, T0 + len(rows) * M)
    for w in (*rep.windows, rep.period):
        if w.state is SliState.OK:
            assert w.sli is not None and 0.0 <= w.sli <= 1.0
            assert w.burn_rate is not None and w.burn_rate >= 0.0


def test_no_traffic_is_no_data_and_little_traffic_is_its_own_state() -> None:
    spec = ratio_spec(annotations='{"gpuslo.io/min-events": "10"}')
    rep = one_report(spec, [(0, 0, 0.0, 0.0), (0, 57, 3.0, 4.0)], T0 + 60 * M)
    assert rep.window(timedelta(minutes=5)).state is SliState.TOO_LITTLE_TRAFFIC
    rep = one_report(spec, [(0, 0, 0.0, 0.0)], T0 + 60 * M)
    five = rep.window(timedelta(minutes=5))
    assert (five.state, five.sli, five.error_ratio, five.burn_rate) == (
        SliState.NO_DATA, None, None, None)
    assert rep.budget_remaining is None and rep.time_to_exhaustion is None


def test_budget_remaining_and_time_to_exhaustion_by_hand() -> None:
    # 99 % over 30 days. 10 hours at 100 requests/minute, the last hour with 2 % errors.
    # Period error ratio: 120/60000 = 0.002 -> budget remaining 1 - 0.2 = 0.8.
    # Last hour burns 2x: 0.8 of the budget lasts 0.8 x 30 d / 2 = 12 days.
    spec = ratio_spec(target=0.99)
    rows = [(0, i, 100.0, 100.0) for i in range(540)] + [(0, i, 98.0, 100.0)
                                                         for i in range(540, 600)]
    rep = one_report(spec, rows, T0 + 600 * M)
    assert rep.period.error_ratio == pytest.approx(0.002)
    assert rep.budget_remaining == pytest.approx(0.8)
    assert rep.window(H).burn_rate == pytest.approx(2.0)
    assert rep.time_to_exhaustion == timedelta(days=12)


def test_an_overspent_budget_goes_negative_and_is_exhausted_now() -> None:
    spec = ratio_spec(target=0.99)
    rep = one_report(spec, [(0, 0, 50.0, 100.0)], T0 + M)
    assert rep.budget_remaining == pytest.approx(1 - 0.5 / 0.01)
    assert rep.time_to_exhaustion == timedelta(0)


def test_timeslices_count_good_slices_and_ratio_timeslices_average_them() -> None:
    # Four 5-minute slices with ratios 1.0, 0.5 (tiny traffic), 0.98, 1.0.
    minutes = {0: (10, 10), 5: (1, 2), 10: (98, 100), 15: (40, 40)}
    rows = [(0, m, float(g), float(t)) for m, (g, t) in minutes.items()]
    extra = "      timeSliceWindow: 5m"
    ts = ratio_spec(method="Timeslices", target=0.95,
                    objective_extra=extra + "\n      timeSliceTarget: 0.95")
    rts = ratio_spec(method="RatioTimeslices", target=0.95, objective_extra=extra)
    occ = ratio_spec(target=0.95)
    now = T0 + 20 * M
    assert one_report(ts, rows, now).window(H).sli == pytest.approx(3 / 4)
    assert one_report(rts, rows, now).window(H).sli == pytest.approx((1 + 0.5 + 0.98 + 1) / 4)
    assert one_report(occ, rows, now).window(H).sli == pytest.approx(149 / 152)


def test_a_partial_replayed_or_resent_is_counted_once() -> None:
    spec = ratio_spec()
    s2 = Stage2State([spec])
    batch = partials([(0, 0, 5.0, 5.0), (1, 0, 3.0, 4.0)])
    s2.apply(batch)
    s2.apply(batch)                                 # redelivered
    s2.apply(partials([(0, 0, 9.0, 10.0)]))         # cumulative update for partition 0
    (rep,) = s2.report(T0 + M)
    assert (rep.window(timedelta(minutes=5)).good, rep.window(timedelta(minutes=5)).total) == (
        12.0, 14.0)


def test_any_split_into_batches_gives_the_same_report() -> None:
    spec = ratio_spec()
    rows = [(p, m, float(m % 7), 10.0) for m in range(40) for p in (0, 1, 2)]
    whole = Stage2State([spec])
    whole.apply(partials(rows))
    split = Stage2State([spec])
    for i in range(0, len(rows), 7):
        split.apply(partials(rows[i:i + 7]))
    now = T0 + 40 * M
    assert whole.report(now) == split.report(now)


def test_partials_for_a_closed_minute_are_dropped_and_counted() -> None:
    spec = ratio_spec()
    s2 = Stage2State([spec], open_minutes=10)
    s2.apply(partials([(0, 30, 1.0, 1.0)]))
    s2.apply(partials([(0, 5, 0.0, 100.0), (1, 5, 2.0, 2.0)]))
    assert s2.late_dropped == 1   # partition 1 had no earlier minute: not late
    (rep,) = s2.report(T0 + 31 * M)
    assert rep.window(H).total == 3.0


def test_old_minutes_roll_up_into_hours_and_the_period_still_sums_exactly() -> None:
    spec = ratio_spec(target=0.99, duration="7d")
    s2 = Stage2State([spec])
    days = 5
    rows = [(0, m, 99.0 if m % 97 else 0.0, 100.0) for m in range(0, days * 1440, 7)]
    for i in range(0, len(rows), 500):
        s2.apply(partials(rows[i:i + 500]))
    assert s2.snapshot()["coarse"].height > 0
    assert s2.snapshot()["fine"]["minute"].min() >= T0 + timedelta(days=1)  # type: ignore[operator]
    now = T0 + days * timedelta(days=1)
    (rep,) = s2.report(now)
    assert rep.period.total == sum(r[3] for r in rows)
    assert rep.period.good == sum(r[2] for r in rows)
    three = rep.window(timedelta(days=3))
    in3 = [r for r in rows if T0 + r[1] * M >= now - timedelta(days=3)]
    assert (three.good, three.total) == (sum(r[2] for r in in3), sum(r[3] for r in in3))


def test_snapshot_and_restore_give_the_same_reports() -> None:
    spec = ratio_spec()
    a = Stage2State([spec])
    a.apply(partials([(0, m, 9.0, 10.0) for m in range(30)]))
    b = Stage2State([spec])
    b.restore(a.snapshot())
    more = partials([(0, m, 5.0, 10.0) for m in range(30, 45)])
    a.apply(more)
    b.apply(more)
    assert a.report(T0 + 45 * M) == b.report(T0 + 45 * M)


def test_two_stage_processes_splitting_the_slos_report_what_one_process_reports() -> None:
    a, b = ratio_spec(name="a"), ratio_spec(name="b", target=0.99)
    rows_a = partials([(p, m, float(m % 5), 5.0) for m in range(30) for p in (0, 1)], slo="a")
    rows_b = partials([(p, m, 4.0, 5.0) for m in range(30) for p in (1, 2)], slo="b")
    interleaved = pl.concat([rows_a, rows_b]).sort("minute")
    one = Stage2State([a, b])
    for i in range(0, interleaved.height, 11):
        one.apply(interleaved.slice(i, 11))
    first, second = Stage2State([a]), Stage2State([b])
    first.apply(rows_a)
    second.apply(rows_b)
    now = T0 + 30 * M
    assert one.report(now) == first.report(now) + second.report(now)


def test_timeslices_stay_exact_across_the_hourly_roll_up() -> None:
    # 5 days of minutes: most hours roll up into hourly slice statistics; the period's
    # Timeslices and RatioTimeslices SLIs still equal the slice-by-slice computation.
    extra = "      timeSliceWindow: 5m"
    ts = ratio_spec(method="Timeslices", target=0.95, duration="7d",
                    objective_extra=extra + "\n      timeSliceTarget: 0.95")
    rts = ratio_spec(name="r", method="RatioTimeslices", target=0.95, duration="7d",
                     objective_extra=extra)
    rows = [(m % 2, m, 90.0 if m % 31 == 0 else 100.0, 100.0) for m in range(0, 5 * 1440, 3)]
    slices: dict[int, list[float]] = {}
    for _, m, g, t in rows:
        acc = slices.setdefault(m // 5, [0.0, 0.0])
        acc[0] += g
        acc[1] += t
    ratios = [g / t for g, t in slices.values()]
    now = T0 + 5 * timedelta(days=1)
    for spec, expected in ((ts, sum(r >= 0.95 for r in ratios) / len(ratios)),
                           (rts, sum(ratios) / len(ratios))):
        s2 = Stage2State([spec])
        for i in range(0, len(rows), 300):
            s2.apply(partials(rows[i:i + 300], slo=spec.id))
        assert s2.snapshot()["coarse"].height > 0
        (rep,) = s2.report(now)
        assert rep.period.sli == pytest.approx(expected)


def test_state_per_scope_is_dense_and_under_100_kib_for_a_30_day_window() -> None:
    extra = "      timeSliceWindow: 5m\n      timeSliceTarget: 0.95"
    for spec in (ratio_spec(target=0.99),
                 ratio_spec(method="Timeslices", target=0.95, objective_extra=extra)):
        s2 = Stage2State([spec])
        scopes = 50
        for k in range(scopes):
            s2.apply(partials([(0, m, 9.0, 10.0) for m in range(0, 120, 10)], slo=spec.id,
                              scope=f'{{"k":"{k}"}}'))
        assert s2.scope_count() == scopes
        # The rings hold the whole window from the start: the size does not grow later.
        assert s2.state_nbytes() / scopes <= 100 * 1024


def test_a_checkpoint_without_the_scopes_frame_restores_the_same_reports() -> None:
    # Checkpoints written by the row-per-bucket state carry open/fine/coarse/wm/meta only.
    spec = ratio_spec(duration="7d")
    a = Stage2State([spec])
    rows = [(p, m, 9.0, 10.0) for m in range(0, 4 * 1440, 11) for p in (0, 1)]
    for i in range(0, len(rows), 400):
        a.apply(partials(rows[i:i + 400]))
    snap = {k: v for k, v in a.snapshot().items() if k != "scopes"}
    b = Stage2State([spec])
    b.restore(snap)
    now = T0 + 4 * timedelta(days=1)
    assert a.report(now) == b.report(now)


def test_a_vanishing_burn_rate_means_no_exhaustion_time_not_an_overflow() -> None:
    # One bad event in 60 billion: burn ~1.7e-9, so the budget would last ~5e7 years,
    # past what a timedelta can hold. That is "not running out", like a burn of 0.
    spec = ratio_spec(target=0.99)
    rows = [(0, i, 1e9, 1e9) for i in range(59)] + [(0, 59, 1e9 - 1.0, 1e9)]
    rep = one_report(spec, rows, T0 + 60 * M)
    assert rep.window(H).burn_rate == pytest.approx(1 / 6e10 / 0.01)
    assert rep.budget_remaining is not None and rep.budget_remaining > 0.99
    assert rep.time_to_exhaustion is None
