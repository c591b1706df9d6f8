"""Every name that gpuslo's SLO engine generates, in one place.

Rules, reports, partial-count frames and alerts all spell their metric, label
and column names from here and nowhere else (Sloth keeps the same discipline),
so a rename is one edit and a golden-file diff.  The recording-rule names are
Sloth's on purpose: Grafana dashboards 14348/14643 and existing alert routes
keep working when a team moves from Sloth to gpuslo.
"""

from __future__ import annotations

import json
from datetime import timedelta

# --- Prometheus recording rules (Sloth-compatible) -------------------------------------------

SLI_ERROR_RATIO_PREFIX = "slo:sli_error:ratio_rate"
OBJECTIVE_RATIO = "slo:objective:ratio"
ERROR_BUDGET_RATIO = "slo:error_budget:ratio"
TIME_PERIOD_DAYS = "slo:time_period:days"
CURRENT_BURN_RATE_RATIO = "slo:current_burn_rate:ratio"
PERIOD_BURN_RATE_RATIO = "slo:period_burn_rate:ratio"
PERIOD_ERROR_BUDGET_REMAINING_RATIO = "slo:period_error_budget_remaining:ratio"
SLO_INFO = "sloth_slo_info"

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
