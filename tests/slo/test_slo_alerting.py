"""Burn-rate alerts: the hand-computed step case and the state machine's transitions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from slo_helpers import T0, ratio_spec, steady_counters

from gpuslo.slo.alerting import AlertEvaluator, AlertState, AlertStatus, evaluate_tier, transition
from gpuslo.slo.budget import SliState, Stage2State
from gpuslo.slo.sli import Stage1State
from gpuslo.slo.spec import parse_yaml
from gpuslo.slo.windows import Severity

S = timedelta(seconds=1)
M = timedelta(minutes=1)


def _page(ev: AlertEvaluator, reports: list, now: object) -> AlertStatus:  # type: ignore[type-arg]
    for a in ev.evaluate(reports, now):  # type: ignore[arg-type]
        if a.severity is Severity.PAGE:
            return a.status
    return AlertStatus.INACTIVE


def test_a_step_to_full_errors_pages_after_52_seconds_and_resolves_when_30m_recovers() -> None:
    # 99.9 % SLO, 1 request/s, six healthy hours, then every request fails for 10 minutes.
    # Page tier 5m&1h fires when the 1h error ratio exceeds 14.4 x 0.001: 0.0144 x 3600 s
    # = 51.84 s of full errors, i.e. at the 52nd failed second; the 5m window agrees.
    # (The 30m&6h tier needs 0.006 x 6 h = 129.6 s, so it cannot fire first.)
    spec = ratio_spec(target=0.999)
    s1, s2, ev = Stage1State([spec]), Stage2State([spec]), AlertEvaluator([spec])
    frame, good, total = steady_counters(T0 - timedelta(hours=6), 6 * 3600, step_s=15)
    s2.apply(s1.apply(frame, 0))
    statuses = {}
    for sec in range(1, 61):
        frame, good, total = steady_counters(T0 + (sec - 1) * S, 1, good_rate=0, good0=good,
                                             total0=total)
        s2.apply(s1.apply(frame, 0))
        (rep,) = s2.report(T0 + sec * S)
        statuses[sec] = _page(ev, [rep], T0 + sec * S)
        if sec == 52:
            assert rep.window(timedelta(hours=1)).burn_rate > 14.4  # type: ignore[operator]
            assert rep.window(timedelta(minutes=5)).burn_rate > 14.4  # type: ignore[operator]
    assert all(statuses[s] is AlertStatus.INACTIVE for s in range(1, 52))
    assert statuses[52] is AlertStatus.FIRING
    # Ten minutes of errors in all, then healthy again.
    frame, good, total = steady_counters(T0 + 60 * S, 540, good_rate=0, good0=good, total0=total)
    s2.apply(s1.apply(frame, 0))
    frame, good, total = steady_counters(T0 + 10 * M, 50 * 60, good0=good, total0=total)
    s2.apply(s1.apply(frame, 0))
    by_minute = {}
    for minute in range(11, 46):
        (rep,) = s2.report(T0 + minute * M)
        by_minute[minute] = (_page(ev, [rep], T0 + minute * M), rep)
    # The 5m&1h tier clears once the bad minutes leave the 5m window ...
    rep16 = by_minute[16][1]
    tiers = {t.name: evaluate_tier(rep16, t) for t in spec.windows}
    assert not tiers["page-5m-1h"].breaching
    assert tiers["page-30m-6h"].breaching
    # ... and the page resolves when the 30m window no longer holds the last bad minute
    # (minute T0+9 leaves the 30m window at T0+40m).
    assert by_minute[39][0] is AlertStatus.FIRING
    assert by_minute[40][0] is AlertStatus.RESOLVED
    assert by_minute[41][0] is AlertStatus.INACTIVE


@pytest.mark.parametrize(
    ("start", "breaching", "elapsed_s", "after_s", "expected"),
    [
        (AlertStatus.INACTIVE, True, 0, 0, AlertStatus.FIRING),
        (AlertStatus.INACTIVE, True, 0, 120, AlertStatus.PENDING),
        (AlertStatus.PENDING, True, 60, 120, AlertStatus.PENDING),
        (AlertStatus.PENDING, True, 120, 120, AlertStatus.FIRING),
        (AlertStatus.PENDING, False, 60, 120, AlertStatus.INACTIVE),
        (AlertStatus.FIRING, True, 600, 0, AlertStatus.FIRING),
        (AlertStatus.FIRING, False, 600, 0, AlertStatus.RESOLVED),
        (AlertStatus.RESOLVED, False, 60, 0, AlertStatus.INACTIVE),
        (AlertStatus.RESOLVED, True, 60, 0, AlertStatus.FIRING),
        (AlertStatus.INACTIVE, False, 0, 0, AlertStatus.INACTIVE),
    ],
    ids=[
        "a breach fires at once without alertAfter",
        "a breach waits in pending with alertAfter",
        "pending holds until alertAfter has passed",
        "pending fires once alertAfter has passed",
        "pending that clears goes back to inactive",
        "firing stays firing while breaching",
        "firing that clears is resolved",
        "resolved becomes inactive at the next evaluation",
        "resolved fires again on a new breach",
        "inactive stays inactive",
    ],
)
def test_state_machine_transition(
    start: AlertStatus, breaching: bool, elapsed_s: int, after_s: int, expected: AlertStatus
) -> None:
    since = T0
    state = AlertState(start, since if start is not AlertStatus.INACTIVE else None,
                       since if start is AlertStatus.FIRING else None)
    nxt = transition(state, breaching, T0 + timedelta(seconds=elapsed_s),
                     timedelta(seconds=after_s))
    assert nxt.status is expected
    if expected is AlertStatus.RESOLVED:
        assert nxt.resolved_at == T0 + timedelta(seconds=elapsed_s)
        assert nxt.fired_at == since


def _minutes_partials(spec_id: str, minutes: int, good: float, total: float) -> object:
    import polars as pl

    return pl.DataFrame(
        {
            "partition": [0] * minutes,
            "slo": [spec_id] * minutes,
            "scope": ["{}"] * minutes,
            "minute": [T0 + i * M for i in range(minutes)],
            "good": [good] * minutes,
            "total": [total] * minutes,
        }
    )


def test_too_little_traffic_never_pages_even_at_full_errors() -> None:
    # 1 event a minute, all bad, at least 50 events needed: the 5m and 30m windows
    # (5 and 30 events) are "too little traffic", so neither page tier can fire; the
    # 2h&1d ticket (60 events each) does.
    spec = ratio_spec(annotations='{"gpuslo.io/min-events": "50"}')
    s2 = Stage2State([spec])
    s2.apply(_minutes_partials(spec.id, 60, 0.0, 1.0))  # type: ignore[arg-type]
    (rep,) = s2.report(T0 + 60 * M)
    assert rep.window(timedelta(minutes=5)).state is SliState.TOO_LITTLE_TRAFFIC
    assert rep.window(timedelta(hours=1)).state is SliState.OK
    assert rep.window(timedelta(minutes=30)).state is SliState.TOO_LITTLE_TRAFFIC
    alerts = AlertEvaluator([spec]).evaluate([rep], T0 + 60 * M)
    assert [(a.severity, a.status) for a in alerts] == [(Severity.TICKET, AlertStatus.FIRING)]


def test_no_data_pages_only_when_the_policy_asks_for_it() -> None:
    base = ratio_spec()
    yaml_text = """
apiVersion: openslo/v1
kind: SLO
metadata: {name: quiet}
spec:
  service: svc
  indicator:
    metadata: {name: quiet-sli}
    spec:
      ratioMetric:
        counter: true
        good: {metricSource: {type: gpuslo, spec: {metric: g_total}}}
        total: {metricSource: {type: gpuslo, spec: {metric: t_total}}}
  timeWindow: [{duration: 30d, isRolling: true}]
  budgetingMethod: Occurrences
  objectives: [{target: 0.99}]
  alertPolicies:
    - kind: AlertPolicy
      metadata: {name: quiet-page}
      spec:
        alertWhenNoData: true
        conditions:
          - kind: AlertCondition
            metadata: {name: quiet-page-cond}
            spec:
              severity: page
              condition: {kind: burnrate, op: gt, threshold: 10, lookbackWindow: 1h}
"""
    (quiet,) = parse_yaml(yaml_text)
    s2 = Stage2State([base, quiet])
    s2.apply(_minutes_partials(base.id, 30, 1.0, 1.0))  # type: ignore[arg-type]
    s2.apply(_minutes_partials(quiet.id, 30, 1.0, 1.0))  # type: ignore[arg-type]
    now = T0 + timedelta(hours=3)  # both scopes' data are older than the 1h window
    reports = s2.report(now)
    alerts = AlertEvaluator([base, quiet]).evaluate(reports, now)
    assert [(a.slo_id, a.severity, a.status) for a in alerts] == [
        ("quiet", Severity.PAGE, AlertStatus.FIRING)
    ]
    assert alerts[0].tiers[0].no_data


def test_a_scope_that_disappears_resolves_its_alert() -> None:
    spec = ratio_spec()
    s2, ev = Stage2State([spec]), AlertEvaluator([spec])
    s2.apply(_minutes_partials(spec.id, 60, 0.0, 10.0))  # type: ignore[arg-type]
    firing = ev.evaluate(s2.report(T0 + 60 * M), T0 + 60 * M)
    assert {a.status for a in firing} == {AlertStatus.FIRING}
    resolved = ev.evaluate([], T0 + 61 * M)
    assert {a.status for a in resolved} == {AlertStatus.RESOLVED}
    assert resolved[0].labels()["alertname"] == "ApiBurnRate"
    assert ev.evaluate([], T0 + 62 * M) == []
