"""What Grafana does with a dashboard's queries, re-done for the tests (pure, no I/O).

* :func:`panels` / :func:`queries`: every panel (rows' nested ones too) and every
  query Grafana would run: panel targets and annotation queries.
* :func:`parse_variable_query`: the forms a Prometheus query variable takes
  (``label_values``, ``query_result``, ...), so a malformed one fails here.
* :func:`interpolate`: template variables replaced as Grafana's Prometheus data
  source does (``$x``, ``${x}``, ``${x:raw}``, ``[[x]]``; regex-escaping for
  multi-value variables; built-ins such as ``$__rate_interval``).
* :func:`split_or`: the top-level ``or`` operands of a PromQL expression, so each
  alternative (vLLM's old and new names, say) is proven on its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# Grafana's variableRegex (public/app/features/variables/utils.ts).
VARIABLE_RE = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}")

BUILTINS = frozenset({
    "__interval", "__interval_ms", "__rate_interval", "__range", "__range_s", "__range_ms",
})


@dataclass(frozen=True)
class PanelQuery:
    """One query Grafana runs for a dashboard."""

    where: str  # "panel 'Title'" or "annotation 'Name'"
    ref_id: str
    expr: str
    instant: bool
    range: bool
    hidden: bool = False


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    for p in dashboard.get("panels", []):
        yield p
        yield from p.get("panels", []) or []


def queries(dashboard: Mapping[str, Any]) -> Iterator[PanelQuery]:
    """Every panel target and annotation query, in dashboard order."""
    for p in panels(dashboard):
        for t in p.get("targets", []) or []:
            instant = bool(t.get("instant"))
            rng = bool(t.get("range", not instant))
            yield PanelQuery(f"panel {p.get('title')!r}", str(t.get("refId", "")),
                             str(t.get("expr", "")), instant, rng, bool(t.get("hide")))
    for a in dashboard.get("annotations", {}).get("list", []):
        if a.get("builtIn"):
            continue
        target = a.get("target") or {}
        yield PanelQuery(f"annotation {a.get('name')!r}", str(target.get("refId", "")),
                         str(target.get("expr") or a.get("expr", "")), False, True)


def variables(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The template variables, in order (later ones may use earlier ones)."""
    return list(dashboard.get("templating", {}).get("list", []))


@dataclass(frozen=True)
class VariableQuery:
    """A parsed Prometheus variable query."""

    kind: str  # label_values | query_result | label_names | metrics
    label: str = ""
    selector: str = ""  # metric or series selector, or the query_result expression


_LABEL_VALUES = re.compile(
    r"^label_values\(\s*(?:(?P<sel>.+?)\s*,\s*)?(?P<label>[a-zA-Z_]\w*)\s*\)$", re.S)
_QUERY_RESULT = re.compile(r"^query_result\((?P<expr>.+)\)$", re.S)
_LABEL_NAMES = re.compile(r"^label_names\(\s*\)$")
_METRICS = re.compile(r"^metrics\((?P<re>.+)\)$", re.S)


def parse_variable_query(query: str) -> VariableQuery:
    """The variable query's form; ValueError naming the query when it is none of them."""
    text = query.strip()
    if m := _LABEL_VALUES.match(text):
        return VariableQuery("label_values", m.group("label"), (m.group("sel") or "").strip())
    if m := _QUERY_RESULT.match(text):
        return VariableQuery("query_result", selector=m.group("expr").strip())
    if _LABEL_NAMES.match(text):
        return VariableQuery("label_names")
    if m := _METRICS.match(text):
        return VariableQuery("metrics", selector=m.group("re").strip())
    raise ValueError(f"not a Prometheus variable query Grafana understands: {query!r}")


def js_regex(pattern: str) -> re.Pattern[str]:
    """A Grafana variable regex (``/.../flags``) as a Python pattern."""
    m = re.fullmatch(r"/(.*)/([gimsuy]*)", pattern, re.S)
    if not m:
        raise ValueError(f"variable regex must be /pattern/flags, got {pattern!r}")
    flags = re.I if "i" in m.group(2) else 0
    return re.compile(m.group(1).replace("(?<", "(?P<").replace("(?P<=", "(?<=")
                      .replace("(?P<!", "(?<!"), flags)


def apply_regex(pattern: str, texts: list[str]) -> list[str]:
    """Options after the variable's regex: the first group (or ``value``), unmatched dropped."""
    if not pattern:
        return texts
    rx = js_regex(pattern)
    out: list[str] = []
    for t in texts:
        m = rx.search(t)
        if m is None:
            continue
        groups = m.groupdict()
        value = groups.get("value") or (m.group(1) if rx.groups else t)
        if value is not None and value not in out:
            out.append(value)
    return out


def query_result_text(sample: Mapping[str, Any]) -> str:
    """How Grafana renders one instant-vector sample for ``query_result``."""
    metric = dict(sample["metric"])
    text = metric.pop("__name__", "")
    text += "{" + ",".join(f'{k}="{v}"' for k, v in metric.items()) + "}"
    ts, value = sample["value"]
    return f"{text} {value} {int(float(ts) * 1000)}"


def sort_options(options: list[str], sort: int) -> list[str]:
    """Grafana's variable sort orders (the ones the dashboards use)."""
    if sort == 0:
        return options
    if sort == 1:
        return sorted(options)
    if sort == 2:
        return sorted(options, reverse=True)
    if sort == 7:
        def natural(s: str) -> list[Any]:
            return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", s)]
        return sorted(options, key=natural)
    raise ValueError(f"variable sort {sort} is not implemented by the test")


_REGEX_SPECIAL = re.compile(r"([\\^$*+?.()|{}\[\]])")


def regex_escape(value: str) -> str:
    """Grafana's prometheusSpecialRegexEscape."""
    return _REGEX_SPECIAL.sub(r"\\\\\1", value)


@dataclass(frozen=True)
class Selection:
    """A variable's chosen value and how Grafana formats it."""

    value: str
    multi: bool = False  # multi-value or include-all variable
    is_all_value: bool = False  # the custom "All" value (sent raw)


def interpolate(expr: str, selected: Mapping[str, Selection],
                builtins: Mapping[str, str]) -> str:
    """``expr`` with every variable replaced; KeyError for a variable with no value."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(6) or ""
        if name.isdigit():
            return m.group(0)  # $1 in label_replace: not a variable
        if name in BUILTINS:
            return builtins[name]
        if name not in selected:
            raise KeyError(f"variable ${name} is used but not defined")
        sel = selected[name]
        if fmt == "raw" or sel.is_all_value:
            return sel.value
        if fmt == "regex" or sel.multi:
            return regex_escape(sel.value)
        if fmt:
            raise ValueError(f"format :{fmt} of ${name} is not implemented by the test")
        return sel.value.replace("\\", "\\\\").replace("'", "\\\\'")

    return VARIABLE_RE.sub(repl, expr)


def referenced(expr: str) -> set[str]:
    """Names of the template variables ``expr`` uses (built-ins and ``$1`` excluded)."""
    out: set[str] = set()
    for m in VARIABLE_RE.finditer(expr):
        name = m.group(1) or m.group(2) or m.group(4)
        if not name.isdigit() and name not in BUILTINS:
            out.add(name)
    return out


def split_or(expr: str) -> list[str]:
    """Top-level ``or`` operands (outside parentheses, braces, brackets and strings)."""
    parts: list[str] = []
    depth = 0
    quote = ""
    start = 0
    i = 0
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = ""
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif (depth == 0 and expr.startswith("or", i)
              and (i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] in "_:"))
              and (i + 2 == len(expr) or not (expr[i + 2].isalnum() or expr[i + 2] in "_:"))):
            parts.append(expr[start:i].strip())
            start = i + 2
            i += 2
            continue
        i += 1
    parts.append(expr[start:].strip())
    return [p for p in parts if p]
