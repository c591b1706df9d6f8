"""The status page's memory: bounded per scope, episodes opened and closed from alerts."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from web_builders import BAD, CAUSE, GOOD, T0, snapshots

from gpuslo.exporters.web.history import StatusHistory
from gpuslo.slo import conventions as cv

BAD_KEY, GOOD_KEY = cv.scope_key(BAD), cv.scope_key(GOOD)
M = timedelta(minutes=1)


def test_while_a_scope_burns_it_fires_with_its_cause_and_the_episode_is_open() -> None:
    h = StatusHistory(points=1000)
    for snap in snapshots(minutes=40):
        h.publish(snap)
    now = {s.scope_key: s for s in h.status().scopes}
    bad, good = now[BAD_KEY], now[GOOD_KEY]
    assert (bad.alert, bad.severity, bad.cause) == ("firing", "page", CAUSE)
    assert (good.alert, good.severity, good.cause) == ("ok", None, None)
    assert [t.name for t in bad.tiers] == ["page-5m-1h", "page-30m-6h", "ticket-2h-1d",
                                           "ticket-6h-3d"]
    series = h.series("vllm-ttft", BAD_KEY)
    assert series is not None
    assert {(e.severity, e.start, e.end) for e in series.episodes} == {
        ("page", T0 + 30 * M, None), ("ticket", T0 + 30 * M, None)}
    assert h.status().targets_down == ("http://n2:9400/metrics",)


def test_the_episode_closes_when_the_alert_resolves() -> None:
    h = StatusHistory(points=1000)
    for snap in snapshots(minutes=80):
        h.publish(snap)
    series = h.series("vllm-ttft", BAD_KEY)
    assert series is not None
    assert [(e.severity, e.start, e.end) for e in series.episodes if e.severity == "page"] == [
        ("page", T0 + 30 * M, T0 + 50 * M)]
    assert {s.scope_key: s.alert for s in h.status().scopes}[BAD_KEY] == "ok"
    burn = series.burn["5m"]
    assert burn[30] == 20.0 and burn[29] == 0.1 and len(series.times) == 80


def test_history_is_bounded_and_keeps_the_newest_points_in_order() -> None:
    h = StatusHistory(points=25)
    for snap in snapshots(minutes=80):
        h.publish(snap)
    series = h.series("vllm-ttft", BAD_KEY)
    assert series is not None
    assert series.times == tuple(T0 + i * M for i in range(55, 80))
    assert series.budget[-1] == 1 - 79 / 100
    assert len(series.sli) == len(series.budget) == len(series.burn["1h"]) == 25


def test_republishing_the_same_evaluation_adds_no_point() -> None:
    h = StatusHistory(points=100)
    snaps = list(snapshots(minutes=3))
    for snap in (*snaps, snaps[-1], snaps[-1]):
        h.publish(snap)
    series = h.series("vllm-ttft", GOOD_KEY)
    assert series is not None and len(series.times) == 3


def test_a_scope_gone_for_longer_than_the_history_is_forgotten() -> None:
    h = StatusHistory(points=5)
    snaps = list(snapshots(minutes=12))
    h.publish(snaps[0])
    for snap in snaps[1:]:  # only the good scope keeps reporting
        h.publish(dataclasses.replace(
            snap, reports=tuple(r for r in snap.reports if r.scope == GOOD), alerts=()))
    assert h.series("vllm-ttft", BAD_KEY) is None
    assert h.series("vllm-ttft", GOOD_KEY) is not None
    assert [s.scope_key for s in h.status().scopes] == [GOOD_KEY]


def test_the_overview_shows_the_top_cause_of_a_three_line_rca_annotation() -> None:
    """The page (and the terminal view, same rows) has one line per alert: the first of
    the ranked causes Alertmanager gets, without its rank."""
    h = StatusHistory(points=1000)
    for snap in snapshots(minutes=40):
        key = next(iter(snap.rca), None)
        if key is not None:
            snap = dataclasses.replace(snap, rca={key: (
                f"1. [cause] {CAUSE}\n2. [symptom] TTFT up\n3. [cause] a disk is slow")})
        h.publish(snap)
    bad = {s.scope_key: s for s in h.status().scopes}[BAD_KEY]
    assert bad.cause == f"[cause] {CAUSE}"
