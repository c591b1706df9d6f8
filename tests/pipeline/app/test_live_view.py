"""The live terminal view fits: firing alerts first with their cause, never taller than
the terminal, one line per SLO for the healthy rest, a key to list an SLO's scopes.

Rendered with rich's console capture at the sizes a person uses (100x30, 180x50).
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
from report_builders import SPEC_YAML, report
from rich.console import Console
from rich.table import Table

from gpuslo.pipeline.app.views.fit import FitStack
from gpuslo.pipeline.app.views.slo import SloExpander, SloStatusView
from gpuslo.slo import conventions as cv
from gpuslo.slo.alerting import AlertEvaluator
from gpuslo.slo.budget import SloReport
from gpuslo.slo.spec import SloSpec, parse_yaml

T = datetime(2026, 1, 1, 12, tzinfo=UTC)
SLOS = ["gpu-availability", "gpu-thermal-headroom", "inter-token-latency", "kv-cache-hit-ratio",
        "rdma-port-health", "request-success", "storage-read-latency", "ttft"]
FIRING = {("rdma-port-health", "node-7"), ("ttft", "node-3"), ("ttft", "node-5"),
          ("gpu-thermal-headroom", "node-1")}
BURNING = {("storage-read-latency", "node-2"), ("request-success", "node-4")}


def _spec(name: str) -> SloSpec:
    (s,) = parse_yaml(SPEC_YAML.replace("name: vllm-ttft", f"name: {name}"))
    return s


def _fleet(firing: set[tuple[str, str]], nodes: int = 9) -> tuple[
        list[SloReport], list, dict[str, SloSpec], dict[tuple[str, str], str]]:
    """Eight SLOs over ``nodes`` nodes (72 scopes): ``firing`` scopes burn at 40x,
    ``BURNING`` at 1.5x (over budget, under every tier), the rest barely."""
    specs = {n: _spec(n) for n in SLOS}
    reports = []
    for slo in SLOS:
        for i in range(nodes):
            node = f"node-{i}"
            burn = 40.0 if (slo, node) in firing else 1.5 if (slo, node) in BURNING else 0.01
            reports.append(report(specs[slo], T, burn_rate=burn, scope={"node": node},
                                  budget_remaining=0.998 - i / 1000,
                                  no_data=frozenset({timedelta(days=3)}) if burn == 1.5
                                  else frozenset()))
    alerts = AlertEvaluator(list(specs.values())).evaluate(reports, T)
    rca = {(slo, cv.scope_key({"node": node})): f"{node} cause of {slo}" for slo, node in firing}
    return reports, alerts, specs, rca


def _render(width: int, height: int, view: object) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, width=width, height=height, force_terminal=True,
                      color_system=None, legacy_windows=False)
    console.print(view)
    return out.getvalue().splitlines()


def _fleet_panel(rows: int) -> Table:
    t = Table(title="fleet")
    for col in ("node", "GPUs", "temp"):
        t.add_column(col)
    for i in range(rows):
        t.add_row(f"node-{i}", "8/8", "45")
    return t


@pytest.mark.parametrize(("width", "height"), [(100, 30), (180, 50)])
def test_every_firing_alert_shows_with_its_cause_and_the_view_fits(width: int,
                                                                  height: int) -> None:
    reports, alerts, specs, rca = _fleet(FIRING)
    view = FitStack([SloStatusView.of(reports, alerts, T, specs=specs, rca=rca,
                                      expander=SloExpander()), _fleet_panel(9)])
    lines = _render(width, height, view)
    assert len(lines) <= height and max(map(len, lines)) <= width
    text = "\n".join(lines)
    firing = [line for line in lines if line.startswith("FIRING")]
    assert len(firing) == len(FIRING), text
    for slo, node in FIRING:
        (line,) = [x for x in firing if f" {slo} {{node={node}}}  cause: {node} cause of {slo}"
                   in x]
        assert line.startswith("FIRING page"), line
    assert lines.index(firing[-1]) < min(i for i, x in enumerate(lines) if x.startswith(
        ("BURNING", "[")))  # firing first
    burning = [line for line in lines if line.startswith("BURNING")]
    assert {(x.split()[1], x.split()[2]) for x in burning} == {
        (slo, f"{{node={node}}}") for slo, node in BURNING}
    summary = [line for line in lines if line.startswith("[")]
    assert "[a] gpu-availability: 9 scopes healthy, lowest budget 99.0 %" in summary
    assert "[h] ttft: 7 scopes healthy, lowest budget 99.0 % (2 above)" in summary
    if height >= 50:
        assert "fleet" in text and "node-8" in text  # room left for the fleet panel


def test_more_firing_alerts_than_lines_are_folded_per_slo_and_all_still_shown() -> None:
    firing = {(slo, f"node-{i}") for slo in SLOS[:5] for i in range(9)}  # 45 alerts
    reports, alerts, specs, rca = _fleet(firing)
    lines = _render(100, 30, FitStack([SloStatusView.of(reports, alerts, T, specs=specs,
                                                        rca=rca), _fleet_panel(9)]))
    assert len(lines) <= 30
    firing_lines = [line for line in lines if line.startswith("FIRING")]
    assert {line.split()[2].rstrip(":") for line in firing_lines} == set(SLOS[:5])
    assert all(": 9 scopes node=node-8, node=node-7" in line for line in firing_lines)


def test_a_key_lists_an_slos_scopes_and_0_folds_them() -> None:
    reports, alerts, specs, rca = _fleet(FIRING)
    exp = SloExpander()
    view = SloStatusView.of(reports, alerts, T, specs=specs, rca=rca, expander=exp)
    before = _render(180, 50, view)
    assert not any(line.startswith("    node=") for line in before)
    assert exp.press("a")  # gpu-availability
    after = _render(180, 50, SloStatusView.of(reports, alerts, T, specs=specs, expander=exp))
    scopes = [line for line in after if line.startswith("    node=")]
    assert len(scopes) == 9 and scopes[0].startswith("    node=node-8  budget 99.0 %")
    assert after.index(scopes[0]) == after.index(
        "[a] gpu-availability: 9 scopes healthy, lowest budget 99.0 %") + 1
    assert not exp.press("z") and exp.press("0") and not exp.expanded
    # Expanded but short of room: cut with a count, still within the height.
    exp.press("h")
    exp.press("a")
    tight = _render(100, 14, SloStatusView.of(reports, alerts, T, specs=specs, expander=exp))
    assert len(tight) <= 14 and tight[-1].strip().startswith("…")


def test_a_panel_that_does_not_fit_is_cut_with_a_count_or_left_out() -> None:
    lines = _render(80, 12, FitStack([_fleet_panel(20), _fleet_panel(5)]))
    assert len(lines) == 12 and "more lines" in lines[-1]
    assert sum("fleet" in line for line in lines) == 1  # no room for the second panel
    few = _render(80, 40, FitStack([_fleet_panel(2), _fleet_panel(2)]))
    assert sum("fleet" in line for line in few) == 2
