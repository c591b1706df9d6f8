"""Every name that gpuslo's SLO engine generates, in one place.

Rules, reports, partial-count frames and alerts all spell their metric, label
and column names from here and nowhere else (Sloth keeps the same discipline),
so a rename is one edit and a golden-file diff.  The recording-rule names are
Sloth's on purpose: Grafana dashboards 14348/14643 and existing alert routes
keep working when a team moves from Sloth to gpuslo.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

# --- Prometheus recording rules (Sloth-compatible) -------------------------------------------

SLI_ERROR_RATIO_PREFIX = "slo:sli_error:ratio_rate"
OBJECTIVE_RATIO = "slo:objective:ratio"
ERROR_BUDGET_RATIO = "slo:error_budget:ratio"
TIME_PERIOD_DAYS = "slo:time_period:days"
CURRENT_BURN_RATE_RATIO = "slo:current_burn_rate:ratio"
PERIOD_BURN_RATE_RATIO = "slo:period_burn_rate:ratio"
PERIOD_ERROR_BUDGET_REMAINING_RATIO = "slo:period_error_budget_remaining:ratio"
SLO_INFO = "sloth_slo_info"
# Per-minute and per-slice recordings of SLIs that are not a ratio of counters over the
# window (gauge thresholds, means of two counters, Timeslices, RatioTimeslices).
GOOD_EVENTS_PER_MINUTE = "slo:sli_good_events:increase1m"
TOTAL_EVENTS_PER_MINUTE = "slo:sli_total_events:increase1m"
SLICE_ERROR_RATIO_PREFIX = "slo:sli_slice_error:ratio"
# Alert annotation saying how far a rule form is from gpuslo's own evaluation.
RULE_ANNOTATION_APPROXIMATION = "approximation"

# --- Labels on generated series and alerts ----------------------------------------------------

LABEL_ID = "sloth_id"
LABEL_SERVICE = "sloth_service"
LABEL_SLO = "sloth_slo"
LABEL_WINDOW = "sloth_window"
LABEL_SEVERITY = "sloth_severity"
LABEL_OBJECTIVE = "sloth_objective"
LABEL_MODE = "sloth_mode"
LABEL_SPEC = "sloth_spec"
LABEL_VERSION = "sloth_version"
ALERT_LABEL_SLO = "slo"
ALERT_LABEL_SEVERITY = "severity"

META_LABELS: tuple[str, str, str] = (LABEL_ID, LABEL_SLO, LABEL_SERVICE)

# --- Rule groups and alerts --------------------------------------------------------------------

GENERATOR_NAME = "gpuslo"
RULES_VERSION = "gpuslo/v1"


def sli_recording_group(slo_id: str) -> str:
    """Name of the group holding one SLO's ``slo:sli_error:ratio_rate<W>`` rules."""
    return f"gpuslo-slo-sli-recordings-{slo_id}"


def sli_slices_group(slo_id: str) -> str:
    """Name of the group recording one SLO's per-minute events or per-slice errors."""
    return f"gpuslo-slo-sli-slices-{slo_id}"


def slice_error_ratio(slice_length: timedelta) -> str:
    """``slo:sli_slice_error:ratio5m``: one recorded value per 5-minute slice."""
    return f"{SLICE_ERROR_RATIO_PREFIX}{duration_label(slice_length)}"


def meta_recording_group(slo_id: str) -> str:
    """Name of the group holding one SLO's objective, budget and burn-rate rules."""
    return f"gpuslo-slo-meta-recordings-{slo_id}"


def alert_group(slo_id: str) -> str:
    """Name of the group holding one SLO's page and ticket alerts."""
    return f"gpuslo-slo-alerts-{slo_id}"


def alert_name(slo_id: str) -> str:
    """Alert name shared by the page and the ticket alert of one SLO (as Sloth does).

    ``my-slo`` becomes ``MySloBurnRate``: Prometheus alert names are label values,
    but CamelCase names read better in Alertmanager routes and in pagers.
    """
    parts = [p for p in slo_id.replace("_", "-").split("-") if p]
    return "".join(p[:1].upper() + p[1:] for p in parts) + "BurnRate"


def sli_error_ratio(window: timedelta) -> str:
    """``slo:sli_error:ratio_rate5m`` for a 5-minute window."""
    return f"{SLI_ERROR_RATIO_PREFIX}{duration_label(window)}"


def duration_label(d: timedelta) -> str:
    """A duration as Prometheus spells it, with the largest unit that divides it.

    ``timedelta(days=1)`` -> ``1d``, ``timedelta(hours=36)`` -> ``36h``.  Prometheus
    parses ``1d``; the Sloth label values (``sloth_window="1d"``) use the same text.
    """
    total_s = int(d.total_seconds())
    if total_s <= 0 or total_s != d.total_seconds():
        raise ValueError(f"duration must be a positive whole number of seconds, got {d}")
    # No "w": Sloth and Prometheus users read "7d", not "1w", in window labels.
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total_s % size == 0:
            return f"{total_s // size}{unit}"
    raise AssertionError("unreachable")  # pragma: no cover


# --- Frame columns (partial counts, reports) --------------------------------------------------

COL_PARTITION = "partition"
COL_SLO = "slo"
COL_SCOPE = "scope"
COL_MINUTE = "minute"
COL_GOOD = "good"
COL_TOTAL = "total"
COL_SERIES = "series"
# Stable 64-bit key of one (SLO, role, series) in stage-1 state (see slo.sli).
COL_SERIES_KEY = "series_key"

PARTIAL_COLUMNS: tuple[str, ...] = (
    COL_PARTITION,
    COL_SLO,
    COL_SCOPE,
    COL_MINUTE,
    COL_GOOD,
    COL_TOTAL,
)

# --- Spec extension keys (where OpenSLO v1 allows vendor data) --------------------------------

METRIC_SOURCE_TYPE = "gpuslo"
ANNOTATION_PREFIX = "gpuslo.io/"
ANNOTATION_MIN_EVENTS = ANNOTATION_PREFIX + "min-events"
ANNOTATION_SHORT_WINDOW = ANNOTATION_PREFIX + "short-window"


def prometheus_label_name(name: str) -> str:
    """``team.example.com/owner`` -> ``team_example_com_owner``: OpenSLO label keys may hold
    characters that Prometheus label names may not."""
    out = "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in name)
    return "_" + out if out[:1].isdigit() else out


def scope_key(labels: dict[str, str]) -> str:
    """The scope string used as a key: compact, sorted JSON of the ``by:`` labels.

    JSON rather than ``k="v"`` text so any label value round-trips exactly
    through :func:`scope_labels`.  An SLO without ``by:`` has the scope ``{}``.
    """
    return json.dumps(dict(sorted(labels.items())), separators=(",", ":"), ensure_ascii=False)


def scope_labels(scope: str) -> dict[str, str]:
    """Inverse of :func:`scope_key`."""
    loaded = json.loads(scope, strict=False)
    if not isinstance(loaded, dict):
        raise ValueError(f"not a scope key: {scope!r}")
    return {str(k): str(v) for k, v in loaded.items()}


# --- Exported series (Prometheus /metrics and OTLP) -------------------------------------------
#
# Each figure gpuslo exports has one row here: the Prometheus name (base units, ``_ratio``,
# ``_seconds``, ``_total``) and the OpenTelemetry name and unit (dotted, unit kept apart, as the
# OTel semantic conventions ask).  Exporters spell names only from this table.


@dataclass(frozen=True)
class ExportedMetric:
    """One exported figure: its Prometheus and OTLP names, unit, kind and help text."""

    prometheus: str
    otel: str
    unit: str
    kind: Literal["gauge", "counter"]
    help: str

    def __post_init__(self) -> None:
        # A counter without _total breaks every rate() written against the Prometheus naming
        # guide; catch it when this module is imported, not in a dashboard.
        if self.kind == "counter" and not self.prometheus.endswith("_total"):
            raise ValueError(f"counter {self.prometheus} must end in _total")


# Label names on exported series.
EXPORT_LABEL_SLO = "slo"
EXPORT_LABEL_SERVICE = "service"
EXPORT_LABEL_WINDOW = "window"
EXPORT_LABEL_STATE = "state"
EXPORT_LABEL_SEVERITY = "severity"
EXPORT_LABEL_ALERTNAME = "alertname"
EXPORT_LABEL_ALERTSTATE = "alertstate"
EXPORT_LABEL_TARGET = "target"
EXPORT_LABEL_COLLECTOR = "collector"
EXPORT_LABEL_SOURCE = "source"
EXPORT_LABEL_NODE = "node"
EXPORT_LABEL_REASON = "reason"
EXPORT_LABEL_CONSUMER = "consumer"
EXPORT_LABEL_DETECTOR = "detector"
EXPORT_LABEL_ENTITY = "entity"
EXPORT_LABEL_METRIC = "metric"
EXPORT_LABEL_ALERTMANAGER = "alertmanager"
# A root-cause candidate of an alert (prefixed: an alert's scope may itself carry node=...).
EXPORT_LABEL_CAUSE_RANK = "cause_rank"
EXPORT_LABEL_CAUSE_ENTITY = "cause_entity"
EXPORT_LABEL_CAUSE_NODE = "cause_node"
EXPORT_LABEL_CAUSE_SIGNAL = "cause_signal"
EXPORT_LABEL_CAUSE_KIND = "cause_kind"

# Per SLO scope.
M_SLO_OBJECTIVE = ExportedMetric(
    "gpuslo_slo_objective_ratio", "gpuslo.slo.objective", "1", "gauge",
    "Target share of good events (0.999 for 99.9 %).")
M_SLO_ERROR_BUDGET = ExportedMetric(
    "gpuslo_slo_error_budget_ratio", "gpuslo.slo.error_budget", "1", "gauge",
    "Allowed share of bad events, 1 - objective.")
M_SLO_SLI = ExportedMetric(
    "gpuslo_slo_sli_ratio", "gpuslo.slo.sli", "1", "gauge",
    "Share of good events over the window (absent unless the window state is ok).")
M_SLO_ERROR_RATIO = ExportedMetric(
    "gpuslo_slo_error_ratio", "gpuslo.slo.error_ratio", "1", "gauge",
    "Share of bad events over the window, 1 - SLI.")
M_SLO_BURN_RATE = ExportedMetric(
    "gpuslo_slo_burn_rate_ratio", "gpuslo.slo.burn_rate", "1", "gauge",
    "Error ratio over the window divided by the error budget (1 spends it exactly in a period).")
M_SLO_WINDOW_STATE = ExportedMetric(
    "gpuslo_slo_window_state", "gpuslo.slo.window_state", "1", "gauge",
    "1 for the window's current state (ok, no_data, too_little_traffic), 0 for the others.")
M_SLO_BUDGET_REMAINING = ExportedMetric(
    "gpuslo_slo_error_budget_remaining_ratio", "gpuslo.slo.error_budget.remaining", "1", "gauge",
    "Share of the period's error budget left; negative once overspent.")
M_SLO_TIME_TO_EXHAUSTION = ExportedMetric(
    "gpuslo_slo_time_to_exhaustion_seconds", "gpuslo.slo.time_to_exhaustion", "s", "gauge",
    "Seconds until the budget is gone at the last hour's burn rate (absent when not burning).")
M_SLO_EVALUATED_AT = ExportedMetric(
    "gpuslo_slo_evaluation_timestamp_seconds", "gpuslo.slo.evaluation.timestamp", "s", "gauge",
    "Unix time of the evaluation these figures come from.")
M_SLO_ALERTS = ExportedMetric(
    "gpuslo_slo_alerts", "gpuslo.slo.alerts", "1", "gauge",
    "1 per alert that is pending, firing or resolved (like Prometheus' ALERTS series).")
M_ANOMALY_SCORE = ExportedMetric(
    "gpuslo_anomaly_score", "gpuslo.anomaly.score", "1", "gauge",
    "Latest anomaly score per detector and entity (higher is more unusual).")
M_ALERT_CAUSE = ExportedMetric(
    "gpuslo_slo_alert_cause", "gpuslo.slo.alert.cause", "1", "gauge",
    "Ranked root-cause candidates of each firing alert, the value being the cause's score: "
    "the alert's labels plus cause_rank, cause_entity, cause_node, cause_signal, cause_kind.")

# gpuslo's own health.
M_SCRAPE_UP = ExportedMetric(
    "gpuslo_scrape_up", "gpuslo.scrape.up", "1", "gauge",
    "1 when the target's last scrape succeeded, else 0.")
M_SCRAPE_DURATION = ExportedMetric(
    "gpuslo_scrape_duration_seconds", "gpuslo.scrape.duration", "s", "gauge",
    "Duration of the target's last scrape.")
M_SCRAPE_SAMPLES = ExportedMetric(
    "gpuslo_scrape_samples", "gpuslo.scrape.samples", "{sample}", "gauge",
    "Samples in the target's last scrape.")
M_SCRAPES = ExportedMetric(
    "gpuslo_scrapes_total", "gpuslo.scrapes", "{scrape}", "counter",
    "Scrapes run, by collector.")
M_SCRAPE_ERRORS = ExportedMetric(
    "gpuslo_scrape_errors_total", "gpuslo.scrape.errors", "{error}", "counter",
    "Failed scrapes, by target and reason.")
M_SAMPLES_PRODUCED = ExportedMetric(
    "gpuslo_samples_produced_total", "gpuslo.samples.produced", "{sample}", "counter",
    "Samples written to Kafka.")
M_RECORDS_PRODUCED = ExportedMetric(
    "gpuslo_records_produced_total", "gpuslo.records.produced", "{record}", "counter",
    "Kafka records written.")
M_PRODUCE_FAILURES = ExportedMetric(
    "gpuslo_produce_failures_total", "gpuslo.produce.failures", "{failure}", "counter",
    "Kafka produce attempts that failed.")
M_DROPPED = ExportedMetric(
    "gpuslo_dropped_total", "gpuslo.dropped", "{batch}", "counter",
    "Items dropped, by reason.")
M_CONSUMER_LAG = ExportedMetric(
    "gpuslo_consumer_lag_records", "gpuslo.consumer.lag", "{record}", "gauge",
    "Records behind the end of the consumer's assigned partitions.")
M_DEAD_LETTERS = ExportedMetric(
    "gpuslo_dead_letters_total", "gpuslo.dead_letters", "{record}", "counter",
    "Records sent to the dead-letter topic.")
M_CONSUMER_RECOVERIES = ExportedMetric(
    "gpuslo_consumer_recoveries_total", "gpuslo.consumer.recoveries", "{recovery}", "counter",
    "Consumer recoveries by the progress watchdog: log_reset (a partition's log was lost, "
    "e.g. an in-memory broker restarted: records not yet consumed are lost) or stalled "
    "(consumer recreated).")
M_ALERTMANAGER_SENT = ExportedMetric(
    "gpuslo_alertmanager_alerts_sent_total", "gpuslo.alertmanager.alerts.sent", "{alert}",
    "counter", "Alerts accepted by an Alertmanager.")
M_ALERTMANAGER_ERRORS = ExportedMetric(
    "gpuslo_alertmanager_errors_total", "gpuslo.alertmanager.errors", "{request}", "counter",
    "Failed POSTs to an Alertmanager (each is retried).")
M_ALERTMANAGER_DROPPED = ExportedMetric(
    "gpuslo_alertmanager_alerts_dropped_total", "gpuslo.alertmanager.alerts.dropped", "{alert}",
    "counter", "Alerts dropped because an Alertmanager's queue was full (oldest first).")
M_ALERTMANAGER_QUEUE = ExportedMetric(
    "gpuslo_alertmanager_queue_length", "gpuslo.alertmanager.queue.length", "{alert}", "gauge",
    "Alerts waiting to be sent to an Alertmanager.")

SLO_METRICS: tuple[ExportedMetric, ...] = (
    M_SLO_OBJECTIVE, M_SLO_ERROR_BUDGET, M_SLO_SLI, M_SLO_ERROR_RATIO, M_SLO_BURN_RATE,
    M_SLO_WINDOW_STATE, M_SLO_BUDGET_REMAINING, M_SLO_TIME_TO_EXHAUSTION, M_SLO_EVALUATED_AT,
    M_SLO_ALERTS, M_ANOMALY_SCORE, M_ALERT_CAUSE,
)
HEALTH_METRICS: tuple[ExportedMetric, ...] = (
    M_SCRAPE_UP, M_SCRAPE_DURATION, M_SCRAPE_SAMPLES, M_SCRAPES, M_SCRAPE_ERRORS,
    M_SAMPLES_PRODUCED, M_RECORDS_PRODUCED, M_PRODUCE_FAILURES, M_DROPPED, M_CONSUMER_LAG,
    M_DEAD_LETTERS, M_CONSUMER_RECOVERIES, M_ALERTMANAGER_SENT, M_ALERTMANAGER_ERRORS,
    M_ALERTMANAGER_DROPPED, M_ALERTMANAGER_QUEUE,
)

# Alertmanager payloads (labels beyond ALERT_LABEL_SLO / ALERT_LABEL_SEVERITY, annotations).
ALERT_LABEL_SERVICE = "service"
ANNOTATION_SUMMARY = "summary"
ANNOTATION_DESCRIPTION = "description"
ANNOTATION_RUNBOOK_URL = "runbook_url"
ANNOTATION_DASHBOARD_URL = "dashboard_url"
ANNOTATION_RCA = "rca"

# Pipeline stage span names (OTLP traces): scrape -> produce -> stage1 -> stage2 -> alert.
SPAN_SCRAPE = "gpuslo.scrape"
SPAN_PRODUCE = "gpuslo.produce"
SPAN_STAGE1 = "gpuslo.stage1"
SPAN_STAGE2 = "gpuslo.stage2"
SPAN_ALERT = "gpuslo.alert"
