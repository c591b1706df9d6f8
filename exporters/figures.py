"""The figures every exporter publishes, as flat ``(metric, labels, value)`` points.

One pure walk over a :class:`~exporters.base.Snapshot` shared by the Prometheus
and OTLP exporters, so both carry the same series with the same labels and
values; only the names differ (``ExportedMetric.prometheus`` / ``.otel``).

Labels per SLO scope: the scope's ``by:`` labels, then ``slo`` and ``service``
(reserved names win, so a ``by: [slo]`` scope cannot shadow them); windows add
``window``.  Per scrape target: ``collector``, ``source``, ``node``,
``target``.  A value that does not exist (no data, not burning) yields no
point, never NaN: an absent series is what ``absent()`` and no-data alerts
expect.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import NamedTuple

from gpuslo.exporters.base import ScrapeTargetKey, Snapshot
from gpuslo.slo import conventions as cv
from gpuslo.slo.alerting import AlertStatus
from gpuslo.slo.budget import SliState, SloReport
from gpuslo.slo.spec import SloSpec

Labels = dict[str, str]


class Figure(NamedTuple):
    """One point: which metric, its labels, its value."""

    metric: cv.ExportedMetric
    labels: Labels
    value: float


def scope_labels(scope: Mapping[str, str]) -> Labels:
    """Scope labels made safe as Prometheus label names / OTel attribute keys."""
    return {cv.prometheus_label_name(k): v for k, v in scope.items()}


def slo_labels(slo_id: str, scope: Mapping[str, str], spec: SloSpec | None) -> Labels:
    """``{<scope>..., slo, service}`` of one SLO scope."""
    return {
        **scope_labels(scope),
        cv.EXPORT_LABEL_SLO: slo_id,
        cv.EXPORT_LABEL_SERVICE: spec.service if spec is not None else slo_id,
    }


def _slo(rep: SloReport, spec: SloSpec | None) -> Iterator[Figure]:
    base = slo_labels(rep.slo_id, rep.scope, spec)
    yield Figure(cv.M_SLO_OBJECTIVE, base, rep.objective)
    yield Figure(cv.M_SLO_ERROR_BUDGET, base, rep.error_budget)
    for w in (*rep.windows, rep.period):
        wl = {**base, cv.EXPORT_LABEL_WINDOW: cv.duration_label(w.window)}
        if w.sli is not None:
            yield Figure(cv.M_SLO_SLI, wl, w.sli)
        if w.error_ratio is not None:
            yield Figure(cv.M_SLO_ERROR_RATIO, wl, w.error_ratio)
        if w.burn_rate is not None:
            yield Figure(cv.M_SLO_BURN_RATE, wl, w.burn_rate)
        for state in SliState:
            yield Figure(cv.M_SLO_WINDOW_STATE, {**wl, cv.EXPORT_LABEL_STATE: state.value},
                         1.0 if w.state is state else 0.0)
    if rep.budget_remaining is not None:
        yield Figure(cv.M_SLO_BUDGET_REMAINING, base, rep.budget_remaining)
    if rep.time_to_exhaustion is not None:
        yield Figure(cv.M_SLO_TIME_TO_EXHAUSTION, base, rep.time_to_exhaustion.total_seconds())
    yield Figure(cv.M_SLO_EVALUATED_AT, base, rep.evaluated_at.timestamp())


def target_labels(key: ScrapeTargetKey) -> Labels:
    """``{collector, source, node, target}`` of one scrape target's health series."""
    return {
        cv.EXPORT_LABEL_COLLECTOR: key.collector,
        cv.EXPORT_LABEL_SOURCE: key.source,
        cv.EXPORT_LABEL_NODE: key.node,
        cv.EXPORT_LABEL_TARGET: key.target,
    }


def _health(snapshot: Snapshot) -> Iterator[Figure]:
    h = snapshot.health
    for key, up in sorted(h.target_up.items()):
        yield Figure(cv.M_SCRAPE_UP, target_labels(key), 1.0 if up else 0.0)
    for key, dur in sorted(h.target_duration_s.items()):
        yield Figure(cv.M_SCRAPE_DURATION, target_labels(key), dur)
    for key, n in sorted(h.target_samples.items()):
        yield Figure(cv.M_SCRAPE_SAMPLES, target_labels(key), n)
    for collector, n in sorted(h.scrapes_total.items()):
        yield Figure(cv.M_SCRAPES, {cv.EXPORT_LABEL_COLLECTOR: collector}, n)
    for (key, reason), n in sorted(h.scrape_errors_total.items()):
        yield Figure(cv.M_SCRAPE_ERRORS,
                     {**target_labels(key), cv.EXPORT_LABEL_REASON: reason}, n)
    yield Figure(cv.M_SAMPLES_PRODUCED, {}, h.samples_produced_total)
    yield Figure(cv.M_RECORDS_PRODUCED, {}, h.records_produced_total)
    yield Figure(cv.M_PRODUCE_FAILURES, {}, h.produce_failures_total)
    for reason, n in sorted(h.dropped_total.items()):
        yield Figure(cv.M_DROPPED, {cv.EXPORT_LABEL_REASON: reason}, n)
    for consumer, lag in sorted(h.consumer_lag_records.items()):
        yield Figure(cv.M_CONSUMER_LAG, {cv.EXPORT_LABEL_CONSUMER: consumer}, lag)
    yield Figure(cv.M_DEAD_LETTERS, {}, h.dead_letters_total)
    for (consumer, reason), n in sorted(h.consumer_recoveries_total.items()):
        yield Figure(cv.M_CONSUMER_RECOVERIES,
                     {cv.EXPORT_LABEL_CONSUMER: consumer, cv.EXPORT_LABEL_REASON: reason}, n)
    for url, d in sorted(h.deliveries.items()):
        am = {cv.EXPORT_LABEL_ALERTMANAGER: url}
        yield Figure(cv.M_ALERTMANAGER_SENT, am, d.sent_total)
        yield Figure(cv.M_ALERTMANAGER_ERRORS, am, d.errors_total)
        yield Figure(cv.M_ALERTMANAGER_DROPPED, am, d.dropped_total)
        yield Figure(cv.M_ALERTMANAGER_QUEUE, am, d.queued)


def _causes(snapshot: Snapshot) -> Iterator[Figure]:
    """``gpuslo_slo_alert_cause``: per alert that is firing, its ranked causes (the alert's
    labels, as on ``gpuslo_slo_alerts``, plus the cause's), the value being the score."""
    for a in snapshot.alerts:
        if a.status is not AlertStatus.FIRING:
            continue
        causes = snapshot.causes.get((a.slo_id, cv.scope_key(dict(a.scope))), ())
        base = {
            **slo_labels(a.slo_id, a.scope, snapshot.specs.get(a.slo_id)),
            cv.EXPORT_LABEL_ALERTNAME: a.alertname,
            cv.EXPORT_LABEL_SEVERITY: a.severity.value,
        }
        for c in causes:
            yield Figure(cv.M_ALERT_CAUSE, {**base, **c.export_labels()}, c.score)


def iter_figures(snapshot: Snapshot) -> Iterator[Figure]:
    """Every point of ``snapshot``: SLO scopes, alerts and their causes, anomaly scores,
    self-health."""
    for rep in snapshot.reports:
        yield from _slo(rep, snapshot.specs.get(rep.slo_id))
    for a in snapshot.alerts:
        yield Figure(cv.M_SLO_ALERTS, {
            **slo_labels(a.slo_id, a.scope, snapshot.specs.get(a.slo_id)),
            cv.EXPORT_LABEL_ALERTNAME: a.alertname,
            cv.EXPORT_LABEL_SEVERITY: a.severity.value,
            cv.EXPORT_LABEL_ALERTSTATE: a.status.value,
        }, 1.0)
    yield from _causes(snapshot)
    for s in snapshot.anomaly_scores:
        labels = scope_labels(s.labels)
        labels.update({cv.EXPORT_LABEL_DETECTOR: s.detector, cv.EXPORT_LABEL_ENTITY: s.entity})
        if s.metric:
            labels[cv.EXPORT_LABEL_METRIC] = s.metric
        yield Figure(cv.M_ANOMALY_SCORE, labels, s.score)
    yield from _health(snapshot)
