"""The rules every shipped dashboard keeps, checked on the committed JSON.

Each rule is one Grafana failure mode: a duplicate panel id or overlapping
``gridPos`` makes Grafana move or drop panels; a panel not on the ``datasource``
variable breaks provisioning (no ``__inputs`` resolution there); a query without
``refId`` cannot be told apart in transformations; a variable query Grafana
cannot parse leaves every panel that uses it empty; a link to a uid that does not
exist is a dead end.
"""

from __future__ import annotations

import json
import re
from itertools import combinations
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from dashboard_queries import (
    VARIABLE_RE,
    apply_regex,
    js_regex,
    panels,
    parse_variable_query,
    queries,
    referenced,
    split_or,
    variables,
)

from gpuslo.dashboards.catalog import JSON_DIR
from gpuslo.dashboards.common import DS, GRID_WIDTH

DS_JSON = {"type": DS.type_val, "uid": DS.uid}
FILES = sorted(JSON_DIR.glob("*.json"))
DASHBOARDS: dict[str, dict[str, Any]] = {
    p.name: json.loads(p.read_text(encoding="utf-8")) for p in FILES}
UIDS = {d["uid"] for d in DASHBOARDS.values()}
EXPECTED = {
    "gpuslo-slo-overview", "gpuslo-slo-detail", "gpuslo-gpu-health", "gpuslo-inference",
    "gpuslo-rdma-fabric", "gpuslo-storage", "gpuslo-k8s-gpu-nodes", "gpuslo-anomaly-rca",
    "gpuslo-self-health",
}

by_file = pytest.mark.parametrize("name", [p.name for p in FILES])


def test_the_set_is_complete_with_stable_uids() -> None:
    assert UIDS == EXPECTED
    for name, d in DASHBOARDS.items():
        assert name == f"{d['uid']}.json"
        assert re.fullmatch(r"[a-z0-9-]{1,40}", d["uid"]), d["uid"]


@by_file
def test_importable_and_provisionable_without_inputs(name: str) -> None:
    d = DASHBOARDS[name]
    text = (JSON_DIR / name).read_text(encoding="utf-8")
    assert "__inputs" not in d and "__requires" not in d
    assert "${DS_" not in text and "$DS_" not in text
    assert d.get("id") is None  # an id would clash with another dashboard on import
    ds = [v for v in variables(d) if v["type"] == "datasource"]
    assert [(v["name"], v["query"]) for v in ds] == [("datasource", "prometheus")]
    assert "current" not in ds[0] or not ds[0]["current"], "would pin one Grafana's datasource"
    assert d["title"].startswith("gpuslo / ") and "gpuslo" in d["tags"]
    assert d["schemaVersion"] >= 39


@by_file
def test_panel_ids_are_unique(name: str) -> None:
    ids = [p.get("id") for p in panels(DASHBOARDS[name])]
    assert all(isinstance(i, int) and i > 0 for i in ids), ids
    assert len(ids) == len(set(ids)), ids


@by_file
def test_panel_titles_are_unique(name: str) -> None:
    # Failures, the expected-empty list and people name panels by title.
    titles = [p["title"] for p in panels(DASHBOARDS[name]) if p["type"] != "row"]
    assert len(titles) == len(set(titles)), sorted(t for t in titles if titles.count(t) > 1)


def _overlap(a: dict[str, int], b: dict[str, int]) -> bool:
    return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
            and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])


@by_file
def test_grid_positions_fit_the_grid_and_never_overlap(name: str) -> None:
    placed = [(p["title"], p["gridPos"]) for p in panels(DASHBOARDS[name])]
    for title, g in placed:
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, title
        assert g["x"] + g["w"] <= GRID_WIDTH, f"{title!r} runs off the grid: {g}"
    for (ta, a), (tb, b) in combinations(placed, 2):
        assert not _overlap(a, b), f"{ta!r} {a} overlaps {tb!r} {b}"


@by_file
def test_every_panel_and_query_uses_the_datasource_variable(name: str) -> None:
    d = DASHBOARDS[name]
    for p in panels(d):
        if p["type"] == "row":
            assert not p.get("datasource"), p["title"]
            continue
        assert p.get("datasource") == DS_JSON, p["title"]
        assert p.get("targets"), f"panel {p['title']!r} has no query"
        for t in p["targets"]:
            assert t.get("datasource", DS_JSON) == DS_JSON, (p["title"], t)
    for a in d["annotations"]["list"]:
        if a.get("builtIn") == 1:  # Grafana's own annotation store, not a query
            assert a["datasource"]["type"] == "grafana", a
            continue
        assert a["datasource"] == DS_JSON and a["target"]["datasource"] == DS_JSON
    for v in variables(d):
        if v["type"] == "query":
            assert v["datasource"] == DS_JSON, v["name"]


@by_file
def test_every_query_has_a_unique_ref_id_and_an_expression(name: str) -> None:
    d = DASHBOARDS[name]
    for p in panels(d):
        refs = [t.get("refId") for t in p.get("targets", [])]
        assert all(refs) and len(refs) == len(set(refs)), (p["title"], refs)
    for pq in queries(d):
        assert pq.ref_id, pq
        assert pq.expr.strip(), pq
        assert pq.expr.count("(") == pq.expr.count(")"), pq
        assert pq.expr.count("{") == pq.expr.count("}"), pq


@by_file
def test_stat_and_table_panels_run_instant_queries(name: str) -> None:
    for p in panels(DASHBOARDS[name]):
        if p["type"] in ("stat", "table"):
            for t in p["targets"]:
                assert t.get("instant") is True and t.get("range") is False, (p["title"], t)
            if p["type"] == "table":
                assert all(t.get("format") == "table" for t in p["targets"]), p["title"]


@by_file
def test_every_variable_query_is_valid_and_used_variables_are_defined(name: str) -> None:
    d = DASHBOARDS[name]
    defined: list[str] = []
    for v in variables(d):
        if v["type"] == "query":
            parsed = parse_variable_query(v["query"])
            for used in referenced(v["query"]):
                assert used in defined, f"variable {v['name']} uses ${used} defined after it"
            if parsed.kind == "label_values" and parsed.selector:
                assert parsed.selector.count("{") == parsed.selector.count("}"), v["query"]
            if v.get("regex"):
                js_regex(v["regex"])
            if v.get("multi"):
                assert v.get("includeAll") and v.get("allValue") == ".*", v["name"]
            assert v.get("refresh") == 2, f"{v['name']} must follow the time range"
        elif v["type"] == "textbox":
            assert v.get("query"), v["name"]
        else:
            assert v["type"] == "datasource", v
        defined.append(v["name"])
    for pq in queries(d):
        for used in referenced(pq.expr):
            assert used in defined, f"{pq.where} {pq.ref_id} uses undefined ${used}"
        multi = {v["name"] for v in variables(d) if v.get("multi")}
        for m in VARIABLE_RE.finditer(pq.expr):
            var = m.group(1) or m.group(2) or m.group(4)
            if var in multi:
                before = pq.expr[:m.start()].rstrip()
                assert before.endswith('=~"'), (
                    f"{pq.where} {pq.ref_id}: multi-value ${var} needs =~, not =")


def test_scope_regex_takes_the_label_set_from_query_result() -> None:
    (scope,) = [v for v in variables(DASHBOARDS["gpuslo-slo-detail.json"])
                if v["name"] == "scope"]
    text = 'gpuslo_slo_objective_ratio{node="node-1",service="gpu-fleet",slo="x"} 0.99 1700000'
    assert apply_regex(scope["regex"], [text, "{} 1 2"]) == [
        'node="node-1",service="gpu-fleet",slo="x"']


def test_split_or_keeps_nested_alternatives_together() -> None:
    assert split_or('a{x="or"} or max (b or c) or d') == ['a{x="or"}', "max (b or c)", "d"]
    assert split_or("sum by (order) (x)") == ["sum by (order) (x)"]


def _links(d: dict[str, Any]) -> list[str]:
    urls = [link.get("url", "") for link in d.get("links", []) if link.get("type") == "link"]
    for p in panels(d):
        urls += [link["url"] for link in p.get("fieldConfig", {}).get("defaults", {})
                 .get("links", [])]
    return urls


@by_file
def test_links_lead_to_existing_dashboards_and_variables(name: str) -> None:
    d = DASHBOARDS[name]
    var_names = {uid: {v["name"] for v in variables(x)} for x in DASHBOARDS.values()
                 for uid in [x["uid"]]}
    for url in _links(d):
        if not url.startswith("/d/"):
            assert url.startswith("${runbook_url}"), url
            continue
        parts = urlsplit(url)
        uid = parts.path.removeprefix("/d/").split("/")[0]
        assert uid in UIDS, f"{name}: link to unknown dashboard {uid!r}"
        for key in parse_qs(parts.query):
            if key.startswith("var-"):
                assert key[4:] in var_names[uid], f"{name}: {url} sets unknown {key}"
        assert "var-datasource=${datasource}" in url, url


def test_the_slo_detail_links_to_every_source_dashboard() -> None:
    sources = {d["uid"] for d in DASHBOARDS.values() if "gpuslo-source" in d["tags"]}
    assert sources == {"gpuslo-gpu-health", "gpuslo-inference", "gpuslo-rdma-fabric",
                       "gpuslo-storage", "gpuslo-k8s-gpu-nodes"}
    detail = DASHBOARDS["gpuslo-slo-detail.json"]
    linked = {urlsplit(u).path.removeprefix("/d/") for u in _links(detail)
              if u.startswith("/d/")}
    assert sources <= linked
    assert any(link.get("tags") == ["gpuslo-source"] for link in detail["links"])
    overview = DASHBOARDS["gpuslo-slo-overview.json"]
    assert any(u.startswith("/d/gpuslo-slo-detail?") for u in _links(overview))
