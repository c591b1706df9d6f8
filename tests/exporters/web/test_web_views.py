"""What each page decides, without a server: order, filters, the spec, rules, the fleet."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import yaml
from hypothesis import given
from hypothesis import strategies as st
from report_builders import spec
from web_builders import BAD, snapshots

from gpuslo.exporters.web.history import StatusHistory
from gpuslo.exporters.web.series import NodeHealth, ScopeNow, StatusData, TierLine
from gpuslo.exporters.web.views import (
    STATES,
    Filters,
    fleet,
    overview,
    rules_text,
    scope_state,
    slo_detail,
    spec_yaml,
    worst_first,
)

T = datetime(2026, 1, 1, tzinfo=UTC)
TIER = TierLine("page-5m-1h", "page", "5m", "1h", 14.4)


def scope(i: int, alert: str, severity: str | None, budget: float | None,
          hour_burn: float | None, node: str = "n1") -> ScopeNow:
    return ScopeNow(f"slo-{i % 3}", {"node": node, "i": str(i)}, f'{{"i":"{i}"}}', 0.999, "30d",
                    T, 0.99 if budget is not None else None, "ok", budget,
                    {"5m": hour_burn, "1h": hour_burn}, (TIER,), alert, severity)


scopes_st = st.lists(
    st.tuples(st.sampled_from(["firing", "pending", "resolved", "ok"]),
              st.sampled_from(["page", "ticket"]),
              st.none() | st.floats(-50, 1, allow_nan=False),
              st.none() | st.floats(0, 100, allow_nan=False)),
    max_size=40,
).map(lambda rows: [scope(i, a, sev if a != "ok" else None, b, h)
                    for i, (a, sev, b, h) in enumerate(rows)])


@given(scopes_st)
def test_worst_first_lists_firing_then_by_budget(scopes: list[ScopeNow]) -> None:
    ordered = worst_first(scopes)
    assert sorted(map(id, ordered)) == sorted(map(id, scopes))
    firing = [s.alert == "firing" for s in ordered]
    assert firing == sorted(firing, reverse=True)  # every firing scope before the others
    pages = [s.severity == "page" for s in ordered if s.alert == "firing"]
    assert pages == sorted(pages, reverse=True)
    for a, b in itertools.pairwise(ordered):
        same = (a.alert, a.severity, scope_state(a)) == (b.alert, b.severity, scope_state(b))
        if same and a.budget is not None and b.budget is not None:
            assert a.budget <= b.budget
        if same and a.budget is None:
            assert b.budget is None  # no figure sorts after every figure


def test_states_and_filters() -> None:
    rows = [scope(0, "firing", "page", 0.5, 20.0, "node-7"),
            scope(1, "ok", None, 0.9, 2.0), scope(2, "ok", None, None, None),
            scope(3, "pending", "ticket", 0.8, 3.0), scope(4, "ok", None, 0.99, 0.2)]
    assert [scope_state(s) for s in rows] == ["firing", "burning", "no_data", "pending", "ok"]
    data = StatusData("t", T, tuple(rows), {})
    ov = overview(data)
    assert [s.scope["i"] for s in ov.rows] == ["0", "3", "1", "2", "4"]  # no data: not green
    assert ov.counts == {"firing": 1, "pending": 1, "burning": 1, "no_data": 1, "ok": 1}
    assert set(ov.counts) == set(STATES)
    pick = overview(data, Filters.from_query({"label": "node=node-7"})).rows
    assert [s.scope["i"] for s in pick] == ["0"]
    assert [s.scope["i"] for s in overview(data, Filters(state="burning")).rows] == ["1"]
    assert {s.slo_id for s in overview(data, Filters(slo="slo-1")).rows} == {"slo-1"}
    assert overview(data, Filters.from_query({"label": "NODE-7"})).rows[0].scope["i"] == "0"
    assert Filters.from_query({"state": "nonsense"}).state == ""


def test_detail_defaults_to_the_worst_scope_and_carries_spec_rules_and_charts() -> None:
    h = StatusHistory()
    for snap in snapshots(minutes=40):
        h.publish(snap)
    d = slo_detail(h, "vllm-ttft")
    assert d is not None and d.selected is not None
    assert d.selected.scope == BAD and d.selected.alert == "firing"
    assert [c.title.split(":")[0] for c in d.charts][:2] == ["SLI over the period",
                                                             "Error budget remaining"]
    assert len(d.charts) == 2 + len(d.selected.tiers)
    assert "record: slo:sli_error:ratio_rate5m" in d.rules
    assert slo_detail(h, "no-such-slo") is None
    other = slo_detail(h, "vllm-ttft", d.scopes[-1].scope_key)
    assert other is not None and other.selected is not None and other.selected.alert == "ok"


def test_the_spec_yaml_is_the_resolved_spec() -> None:
    doc = yaml.safe_load(spec_yaml(spec()))
    assert doc["id"] == "vllm-ttft" and doc["target"] == "0.999"
    assert doc["time_window"]["duration"] == "30d"
    first = doc["windows"][0]
    assert (first["severity"], first["short"], first["long"], first["factor"]) == (
        "page", "5m", "1h", "14.4")
    assert doc["labels"] == {"team": "inference", "tier": "gold"}


def test_rules_text_is_what_gpuslo_rules_writes() -> None:
    text = rules_text(spec())
    assert yaml.safe_load(text)["groups"]
    assert "alert: VllmTtftBurnRate" in text


def test_fleet_joins_node_figures_with_slo_scopes_worst_first() -> None:
    rows = [scope(0, "firing", "page", 0.2, 20.0, "node-7"), scope(1, "ok", None, 0.9, 0.1,
                                                                    "node-1")]
    data = StatusData("t", T, tuple(rows), {}, fleet=(
        NodeHealth("node-1", gpus=8, gpus_seen=8), NodeHealth("node-3", gpus=7, gpus_seen=8,
                                                              gpus_lost=("2",))))
    out = fleet(data)
    assert [r.node for r in out] == ["node-7", "node-1", "node-3"]
    assert (out[0].firing, out[0].health, out[0].lowest_budget) == (1, None, 0.2)
    assert out[2].health is not None and out[2].health.gpus_lost == ("2",) and out[2].scopes == 0
