"""The burn-rate table as data: factors derived from budget share, period and window."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from gpuslo.slo.conventions import alert_name, duration_label, scope_key, scope_labels
from gpuslo.slo.windows import budget_consumed_at_fire, default_windows, factor

D = timedelta(days=1)
H = timedelta(hours=1)


@pytest.mark.parametrize(
    ("period", "expected"),
    [
        (30 * D, ["14.4", "6", "3", "1"]),
        (28 * D, ["13.44", "5.6", "2.8", "0.933333333333"]),
    ],
    ids=["30 days gives Sloth's and the Workbook's 14.4, 6, 3, 1",
         "28 days gives Sloth's 13.44, 5.6, 2.8, 0.9333"],
)
def test_default_factors_follow_the_period(period: timedelta, expected: list[str]) -> None:
    assert [str(w.factor) for w in default_windows(period)] == expected


def test_sloths_7d_example_shares_give_its_factors() -> None:
    # Sloth examples/windows/7d.yaml: 8 / 12.5 / 20 / 42 % -> 13.44 / 3.5 / 1.4 / 0.98.
    got = [
        factor(Decimal(p), 7 * D, long)
        for p, long in (("8", H), ("12.5", 6 * H), ("20", D), ("42", 3 * D))
    ]
    assert got == [Decimal("13.44"), Decimal("3.5"), Decimal("1.4"), Decimal("0.98")]


def test_the_fast_page_fires_after_two_percent_of_the_budget() -> None:
    page = default_windows(30 * D)[0]
    assert budget_consumed_at_fire(page, 30 * D) == Decimal("0.02")


@pytest.mark.parametrize(
    ("d", "text"),
    [(timedelta(minutes=5), "5m"), (H, "1h"), (D, "1d"), (3 * D, "3d"), (30 * D, "30d"),
     (timedelta(hours=36), "36h"), (timedelta(seconds=90), "90s")],
)
def test_durations_are_labelled_as_prometheus_spells_them(d: timedelta, text: str) -> None:
    assert duration_label(d) == text


def test_alert_names_are_camel_case_of_the_slo_id() -> None:
    assert alert_name("kv-cache-hit-ratio") == "KvCacheHitRatioBurnRate"


def test_scope_keys_round_trip_any_label_value() -> None:
    labels = {"model_name": 'meta/llama "3" \\ 70b', "node": "gpu-01"}
    assert scope_labels(scope_key(labels)) == labels
    assert scope_key({}) == "{}"


def test_openslo_label_keys_become_valid_prometheus_label_names() -> None:
    from gpuslo.slo.conventions import prometheus_label_name

    assert prometheus_label_name("team.example.com/owner") == "team_example_com_owner"
    assert prometheus_label_name("9lives") == "_9lives"
