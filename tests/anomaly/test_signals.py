"""The signal table: every entry well-formed, names resolve the way the sources spell them."""

from __future__ import annotations

from collections import Counter

import polars as pl
import pytest

from gpuslo.anomaly.signals import BY_METRIC, ROLES, SIGNALS, lookup, scorable_expr
from gpuslo.pipeline.schema import frame_from_rows


def test_every_signal_is_well_formed() -> None:
    for spec in SIGNALS:
        assert spec.role in ROLES and spec.bad in ("up", "down", "both"), spec.name
        assert 0.0 < spec.prior <= 1.0, spec.name
        assert spec.metrics and spec.label, spec.name
        assert spec.floor_abs >= 0 and spec.floor_rel >= 0, spec.name
        if spec.transform == "ratio":
            assert len(spec.metrics) == 1 and len(spec.denominator) == 1, spec.name


def test_no_metric_means_two_things() -> None:
    owners = Counter(m for spec in SIGNALS for m in set(spec.metrics))
    twice = {m for m, n in owners.items() if n > 1}
    # the one deliberate overlap: a ratio's counters also carry their own (context) rate
    for m in twice:
        specs = {s.name for s in SIGNALS if m in s.metrics}
        assert len(specs) == 1 or "prefix_cache_tokens" in specs, (m, specs)


@pytest.mark.parametrize(("metric", "kind", "signal", "role"), [
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "gpu_temperature", "cause"),
    ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER_total", "counter", "gpu_pcie_replays", "cause"),
    ("node_infiniband_link_downed_total", "counter", "port_link_downed", "cause"),
    ("infiniband_port_counters_symbol_error", "counter", "port_symbol_errors", "cause"),
    ("vllm:time_to_first_token_seconds_sum", "histogram_sum", "ttft", "symptom"),
    ("vllm:time_to_first_token_seconds_count", "histogram_count", "ttft", "symptom"),
    ("container_oom_events_total", "counter", "container_oom", "cause"),
    ("vllm:num_requests_running", "gauge", "requests_running", "context"),
    ("nccl_watchdog_timeouts_total", "counter", "nccl_watchdog_timeouts", "cause"),
    ("some_exporter_bytes_total", "counter", "some_exporter_bytes", "context"),
])
def test_names_resolve_as_the_sources_spell_them(metric: str, kind: str, signal: str,
                                                 role: str) -> None:
    spec = lookup(metric, kind)
    assert (spec.name, spec.role) == (signal, role)


def test_normalised_duplicates_info_and_buckets_are_not_scored() -> None:
    rows = [(0, "n", "s", m, "gauge", 1.0, "", {}) for m in (
        "gpuslo_gpu_temperature_celsius", "gpuslo_scrape_up", "gpuslo_gpu_xid_event",
        "vllm:cache_config_info", "vllm:num_requests_running_created",
        "vllm:time_to_first_token_seconds_bucket", "DCGM_FI_DEV_GPU_TEMP")]
    kept = frame_from_rows(rows).filter(scorable_expr())["metric"].to_list()
    assert kept == ["gpuslo_scrape_up", "gpuslo_gpu_xid_event", "DCGM_FI_DEV_GPU_TEMP"]
    assert "DCGM_FI_DEV_GPU_TEMP" in BY_METRIC
    assert isinstance(scorable_expr(), pl.Expr)
