"""The ServiceMonitor and PrometheusRule against prometheus-operator's CRD schema; the
rules equal ``gpuslo rules`` and pass ``promtool check rules``.

The schemas are vendored (tests/fixtures/prometheus-operator, provenance in
PROVENANCE.md).  The API server prunes fields a CRD schema does not list, so a typo is
silently dropped there; here every object node that lists its properties rejects any
other key, as ``kubectl apply --validate=strict`` does.
"""

from __future__ import annotations

import copy
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from deploy_render import GPUSLO, KUSTOMIZE, REPO, Obj, all_renderings, find, render
from servers import require_binary

FIXTURES = REPO / "tests" / "fixtures" / "prometheus-operator"
SCHEMAS = {
    "ServiceMonitor": FIXTURES / "servicemonitors.v1.openAPIV3Schema.excerpt.yaml",
    "PrometheusRule": FIXTURES / "prometheusrules.v1.openAPIV3Schema.yaml",
}
RULE_DIR = KUSTOMIZE / "components" / "prometheus-rule"
RENDERINGS = all_renderings()


def _unknown_fields(schema: dict[str, Any], value: Any, path: str) -> Iterator[str]:
    if isinstance(value, dict) and "properties" in schema:
        if "additionalProperties" not in schema:
            for key in value:
                if key not in schema["properties"]:
                    yield f"{path}.{key}"
        for key, sub in schema["properties"].items():
            if key in value:
                yield from _unknown_fields(sub, value[key], f"{path}.{key}")
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, v in value.items():
            yield from _unknown_fields(schema["additionalProperties"], v, f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            yield from _unknown_fields(schema["items"], item, f"{path}[{i}]")


def check_against_crd(obj: Obj) -> None:
    """Raise if ``obj`` breaks its CRD schema or carries a field the schema lacks."""
    schema = yaml.safe_load(SCHEMAS[obj["kind"]].read_text())
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    jsonschema.Draft7Validator(schema).validate(obj)
    unknown = list(_unknown_fields(schema, obj, obj["kind"]))
    if unknown:
        raise jsonschema.ValidationError(f"fields the CRD does not define: {unknown}")


CUSTOM = [(name, o) for name, objs in RENDERINGS.items() for o in objs
          if o["kind"] in SCHEMAS]


def test_both_kinds_are_rendered_somewhere() -> None:
    assert {o["kind"] for _, o in CUSTOM} == set(SCHEMAS)


@pytest.mark.parametrize(("where", "obj"), CUSTOM,
                         ids=[f"{n}:{o['kind']}" for n, o in CUSTOM])
def test_matches_the_crd_schema(where: str, obj: Obj) -> None:
    check_against_crd(obj)


@pytest.mark.parametrize("mutate", [
    lambda sm: sm["spec"]["endpoints"][0].__setitem__("scrape_timeout", "10s"),
    lambda sm: sm["spec"]["endpoints"][0].__setitem__("scheme", "tcp"),
    lambda sm: sm["spec"]["endpoints"][0].__setitem__("interval", "30 seconds"),
    lambda sm: sm["spec"].pop("selector"),
], ids=["unknown-field", "bad-enum", "bad-duration", "missing-selector"])
def test_the_schema_check_rejects_mistakes(mutate: Any) -> None:
    sm = copy.deepcopy(find(render(KUSTOMIZE / "overlays" / "daemonset"), "ServiceMonitor")[0])
    mutate(sm)
    with pytest.raises(jsonschema.ValidationError):
        check_against_crd(sm)


def _seconds(d: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h)", d))


@pytest.mark.parametrize("name", [n for n, objs in RENDERINGS.items()
                                  if find(objs, "ServiceMonitor")])
def test_servicemonitor_selects_services_with_its_port(name: str) -> None:
    objs = RENDERINGS[name]
    (sm,) = find(objs, "ServiceMonitor")
    want = sm["spec"]["selector"]["matchLabels"]
    services = [s for s in find(objs, "Service")
                if want.items() <= (s["metadata"].get("labels") or {}).items()]
    assert services, f"{name}: the ServiceMonitor selects no Service"
    for ep in sm["spec"]["endpoints"]:
        assert _seconds(ep["scrapeTimeout"]) <= _seconds(ep["interval"])
        for s in services:
            assert ep["port"] in {p["name"] for p in s["spec"]["ports"]}, s["metadata"]["name"]


# ------------------------------------------------------------------ the PrometheusRule


def _gpuslo(*args: str) -> str:
    done = subprocess.run([str(GPUSLO), *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_committed_rule_is_what_gpuslo_rules_generates() -> None:
    """Regenerate with the command in components/prometheus-rule/kustomization.yaml."""
    fresh = _gpuslo("rules", "slo/catalog", "--prometheus-rule", "--namespace", "gpuslo")
    assert (RULE_DIR / "prometheus-rule.yaml").read_text() == fresh


def _rendered_rule() -> Obj:
    rules = [o for _, o in CUSTOM if o["kind"] == "PrometheusRule"]
    assert rules
    return rules[0]


def test_rendered_rule_groups_equal_gpuslo_rules_output() -> None:
    plain = yaml.safe_load(_gpuslo("rules", "slo/catalog"))
    rule = _rendered_rule()
    assert rule["spec"]["groups"] == plain["groups"]
    assert rule["metadata"]["labels"]["release"]


def test_extracted_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = require_binary("promtool", "prometheus")
    f = tmp_path / "rules.yaml"
    f.write_text(yaml.safe_dump({"groups": _rendered_rule()["spec"]["groups"]}))
    done = subprocess.run([promtool, "check", "rules", str(f)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
