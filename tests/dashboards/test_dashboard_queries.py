"""The tests' model of Grafana's variable handling, checked against Grafana's documented rules.

The live test is only as good as this substitution: a wrong one would send
Prometheus a query Grafana never sends.
"""

from __future__ import annotations

import pytest
from dashboard_queries import (
    Selection,
    apply_regex,
    interpolate,
    parse_variable_query,
    query_result_text,
    referenced,
    sort_options,
)

BUILTINS = {"__rate_interval": "6s", "__range": "60s", "__interval": "5s",
            "__interval_ms": "5000", "__range_s": "60", "__range_ms": "60000"}


def test_every_variable_syntax_and_format_is_replaced() -> None:
    sel = {
        "node": Selection(".*", multi=True, is_all_value=True),
        "slo": Selection("gpu-thermal-headroom"),
        "scope": Selection('node="node-1",slo="x"'),
        "model": Selection("llama-3.1-8b", multi=True),
    }
    expr = ('rate(x{Hostname=~"$node", slo="${slo}", m=~"$model"}[$__rate_interval]) '
            '+ y{${scope:raw}} + z{s="[[slo]]"} + label_replace(v, "a", "$1", "b", "(.*)")')
    assert interpolate(expr, sel, BUILTINS) == (
        'rate(x{Hostname=~".*", slo="gpu-thermal-headroom", m=~"llama-3\\\\.1-8b"}[6s]) '
        '+ y{node="node-1",slo="x"} + z{s="gpu-thermal-headroom"} '
        '+ label_replace(v, "a", "$1", "b", "(.*)")')


def test_an_undefined_variable_is_an_error_not_a_silent_literal() -> None:
    with pytest.raises(KeyError, match=r"\$missing"):
        interpolate('x{a="$missing"}', {}, BUILTINS)
    assert referenced('x{a="$a", b="${b:raw}"}[$__range] + label_replace(y, "c", "$1")') == {
        "a", "b"}


def test_variable_queries_parse_as_grafana_reads_them() -> None:
    q = parse_variable_query('label_values(DCGM_FI_DEV_GPU_UTIL{Hostname=~"$node"}, gpu)')
    assert (q.kind, q.label, q.selector) == (
        "label_values", "gpu", 'DCGM_FI_DEV_GPU_UTIL{Hostname=~"$node"}')
    assert parse_variable_query("label_values(model_name)").selector == ""
    assert parse_variable_query("query_result(sort(up))").selector == "sort(up)"
    with pytest.raises(ValueError, match="not a Prometheus variable query"):
        parse_variable_query("label_values(up{job='x'})")  # no label: Grafana rejects it


def test_query_result_text_and_regex_give_grafanas_options() -> None:
    text = query_result_text({"metric": {"__name__": "m", "a": "1", "b": "x"},
                              "value": [1700000000.5, "0.25"]})
    assert text == 'm{a="1",b="x"} 0.25 1700000000500'
    assert apply_regex("/\\{(.+)\\}/", [text, "n{} 1 2"]) == ['a="1",b="x"']
    assert apply_regex("/(?<value>gpu\\d)/", ["gpu1", "cpu"]) == ["gpu1"]
    assert sort_options(["gpu10", "gpu2", "gpu1"], 7) == ["gpu1", "gpu2", "gpu10"]
    assert sort_options(["b", "a"], 0) == ["b", "a"]
