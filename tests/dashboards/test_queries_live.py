"""Every query of every dashboard returns data from a real Prometheus.

The stack is what a user runs, all real processes on loopback:

* ``gpuslo demo`` (the installed console script): the simulated fleet, serving
  the upstream exporters' own formats, and gpuslo with its Prometheus exporter,
  with faults injected so that panels that only show trouble have some;
* a real Alertmanager (Debian ``prometheus-alertmanager``) the demo alerts into;
* a real Prometheus (Debian ``prometheus``) scraping gpuslo's ``/metrics``,
  every simulated endpoint in Prometheus text format, and the lustrefs-exporter
  fixture (real upstream output), with the target labels kube-prometheus-stack
  gives them (node-exporter ``instance`` = node, kubelet ``node`` and
  ``metrics_path``, one ``instance`` per inference server).

For each dashboard, every template variable gets a value Prometheus offers (its
query run as Grafana runs it; "All" where the variable allows it), every panel
query and annotation is run through the HTTP API as Grafana would (instant or
range), and so is each top-level ``or`` alternative on its own.  A PromQL error
or an empty result fails, naming dashboard, panel and query.  Queries over series
that gpuslo does not export yet are listed in :data:`EXPECTED_EMPTY` with the
reason; they must still be valid PromQL and must still be empty, so the list
cannot go stale when the series arrive.

Prometheus ignores the simulator's sample timestamps (``honor_timestamps: false``):
they are simulated time, 60x ahead of the wall clock, and a real exporter's
samples carry none.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from dashboard_queries import (
    Selection,
    apply_regex,
    interpolate,
    parse_variable_query,
    queries,
    query_result_text,
    sort_options,
    split_or,
    variables,
)
from servers import Server, free_port, start_alertmanager, start_prometheus

from gpuslo.dashboards.catalog import JSON_DIR

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LUSTRE_FIXTURE = (ROOT / "tests/fixtures/lustre/"
                  "lustrefs_exporter__routes__tests__metrics_endpoint_is_idempotent.snap")

SCRAPE_S = 1
RANGE_S = 60
STEP_S = 5
# As Grafana computes them for a data source whose scrape interval is SCRAPE_S:
# $__rate_interval = max($__interval + scrape interval, 4 x scrape interval).
BUILTINS = {
    "__interval": f"{STEP_S}s", "__interval_ms": str(STEP_S * 1000),
    "__rate_interval": f"{max(STEP_S + SCRAPE_S, 4 * SCRAPE_S)}s",
    "__range": f"{RANGE_S}s", "__range_s": str(RANGE_S), "__range_ms": str(RANGE_S * 1000),
}
DEADLINE_S = 120.0  # from the stack's start, for the slowest dashboard to have all its data

# `gpuslo demo --inject KIND:TARGET@SECONDS`; each gives some panel its data.  The
# default scenario adds a thermal throttle on node-1/gpu2 (gpu-thermal-headroom pages).
FAULTS = (
    "xid_48:node-3/gpu2@0",               # XID and remapped rows; its replica goes down
    "oom_kill:llama-3.1-8b-instruct/1@0",  # OOM kills table
    "ceph_slow_ops:osd.2@0",               # Ceph slow ops and active health checks
    "ib_link_flap:node-6/mlx5_2@0",        # ports that went down
    "ib_symbol_errors:node-2/mlx5_0@0",    # ports with symbol errors
    "roce_congestion:node-6/mlx5_0@0",     # ECN / CNP / out_of_buffer
    "power_cap:node-0@0",                  # power-cap clock events
    "disk_saturation:node-4/nvme1n1@0",    # a busy disk
    "cpu_throttling:node-2@0",             # throttled serving containers
)

# (dashboard uid, variable) -> value, where the first value offered would show a calm
# scope; it must be among the values Prometheus offers.
PREFERRED = {("gpuslo-slo-detail", "slo"): "gpu-thermal-headroom"}


# (dashboard uid, "panel 'Title'" or "variable 'name'", refId) -> why it is empty today.
EXPECTED_EMPTY: dict[tuple[str, str, str], str] = {
}

DASHBOARDS = {p.stem: json.loads(p.read_text(encoding="utf-8"))
              for p in sorted(JSON_DIR.glob("*.json"))}

AM_CONFIG = """
route:
  receiver: "null"
receivers:
  - name: "null"
"""

# Simulator page kinds in Prometheus text format -> scrape job (kube-prometheus-stack names).
JOBS = {
    "dcgm": "dcgm-exporter", "node_exporter": "node-exporter", "kubelet_resource": "kubelet",
    "kubelet_cadvisor": "kubelet", "ceph": "ceph-mgr", "vllm": "vllm", "sglang": "sglang",
    "triton": "triton", "training": "training",
}


# ---- the stack ---------------------------------------------------------------------------


def _gpuslo_script() -> Path:
    """The installed console script: the CLI's module path is not part of the contract."""
    script = Path(sys.executable).parent / "gpuslo"
    if not script.exists():
        pytest.fail(f"{script} not found: install gpuslo into this environment (pip install -e .)")
    return script


def _get(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"gpuslo demo exited ({proc.returncode}):\n"
                               f"{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.read()
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not up within {timeout_s}s:\n"
                                   f"{log.read_text(errors='replace')[-3000:]}") from None
            time.sleep(0.2)


class _Lustre(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def _strip_insta_header(text: str) -> str:
    """The snapshot file's body: what lustrefs-exporter served (after insta's YAML header)."""
    lines = text.splitlines(keepends=True)
    if lines and lines[0].strip() == "---":
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
        lines = lines[end + 1:]
    return "".join(lines)


@contextlib.contextmanager
def _lustre_server() -> Iterator[int]:
    _Lustre.body = _strip_insta_header(LUSTRE_FIXTURE.read_text(encoding="utf-8")).encode()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Lustre)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield int(srv.server_address[1])
    finally:
        srv.shutdown()
        srv.server_close()


def prometheus_config(targets: list[dict[str, Any]], metrics_port: int,
                      lustre_port: int) -> str:
    """Scrape configs for the simulated fleet, gpuslo and Lustre, labelled as in a cluster."""
    jobs: dict[str, list[dict[str, Any]]] = {}
    for t in targets:
        job = JOBS.get(t["kind"])
        if job is None:
            continue  # /stats/summary (JSON) and /proc/diskstats: not Prometheus formats
        url = urllib.parse.urlsplit(t["url"])
        process = url.path.split("/")[3]  # /nodes/<node>/<process>/...
        labels: dict[str, str] = {"__metrics_path__": url.path}
        if job in ("node-exporter", "dcgm-exporter"):
            labels["instance"] = t["node"]
        elif job == "kubelet":
            labels.update(instance=t["node"], node=t["node"],
                          metrics_path=url.path.split("/kubelet", 1)[1])
        else:
            labels["instance"] = f"{t['node']}/{process}"
        jobs.setdefault(job, []).append({"targets": [url.netloc], "labels": labels})
    scrape = [
        {"job_name": job, "honor_timestamps": False, "static_configs": groups}
        for job, groups in sorted(jobs.items())
    ]
    scrape.append({"job_name": "gpuslo", "static_configs": [
        {"targets": [f"127.0.0.1:{metrics_port}"], "labels": {"instance": "gpuslo-demo"}}]})
    scrape.append({"job_name": "lustre", "static_configs": [
        {"targets": [f"127.0.0.1:{lustre_port}"], "labels": {"instance": "lustre-oss-0"}}]})
    return str(yaml.safe_dump({
        "global": {"scrape_interval": f"{SCRAPE_S}s", "scrape_timeout": f"{SCRAPE_S}s"},
        "scrape_configs": scrape,
    }, sort_keys=False))


@dataclass
class Stack:
    prometheus: Server
    started: float
    timings: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    t0 = time.monotonic()
    work = tmp_path_factory.mktemp("dashboards-live")
    am = start_alertmanager(AM_CONFIG, work / "am")
    sim_port, metrics_port = free_port(), free_port()
    log = work / "demo.log"
    argv = [str(_gpuslo_script()), "demo", "--port", str(sim_port),
            "--metrics-port", str(metrics_port), "--alertmanager", am.url,
            "--duration", "600"]
    for fault in FAULTS:
        argv += ["--inject", fault]
    with log.open("wb") as out, _lustre_server() as lustre_port:
        demo = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        prom: Server | None = None
        try:
            raw = _wait_http(f"http://127.0.0.1:{sim_port}/targets", demo, log, 60)
            _wait_http(f"http://127.0.0.1:{metrics_port}/metrics", demo, log, 60)
            targets = json.loads(raw)["targets"]
            prom = start_prometheus(prometheus_config(targets, metrics_port, lustre_port),
                                    work / "prometheus")
            yield Stack(prom, t0, {"stack_up_s": time.monotonic() - t0})
        finally:
            if prom is not None:
                prom.stop()
            demo.terminate()
            try:
                demo.wait(timeout=15)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait(timeout=5)
            am.stop()


# ---- Grafana's side, against the real Prometheus -----------------------------------------


class PromError(Exception):
    """Prometheus refused a query (bad PromQL, bad selector)."""


def _api(prom: Server, path: str, params: dict[str, str] | list[tuple[str, str]]) -> Any:
    url = f"{prom.url}{path}?{urllib.parse.urlencode(params)}"
    try:
        body = _get(url)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError):
            detail = json.loads(detail).get("error", detail)
        raise PromError(detail) from None
    if body.get("status") != "success":
        raise PromError(str(body.get("error", body)))
    return body["data"]


def run_query(prom: Server, expr: str, *, instant: bool, now: float) -> int:
    """Series (or scalars) the query returns, as Grafana would run it."""
    if instant:
        data = _api(prom, "/api/v1/query", {"query": expr, "time": f"{now:.3f}"})
    else:
        data = _api(prom, "/api/v1/query_range", {
            "query": expr, "start": f"{now - RANGE_S:.3f}", "end": f"{now:.3f}",
            "step": str(STEP_S)})
    if data["resultType"] == "scalar":
        return 1
    return len(data["result"])


def variable_options(prom: Server, var: dict[str, Any], expr: str, now: float) -> list[str]:
    """What Grafana offers for a query variable whose (interpolated) query is ``expr``."""
    parsed = parse_variable_query(expr)
    span = {"start": f"{now - RANGE_S:.3f}", "end": f"{now:.3f}"}
    if parsed.kind == "label_values":
        params: list[tuple[str, str]] = list(span.items())
        if parsed.selector:
            params.append(("match[]", parsed.selector))
        texts = [str(x) for x in _api(prom, f"/api/v1/label/{parsed.label}/values", params)]
    elif parsed.kind == "query_result":
        data = _api(prom, "/api/v1/query", {"query": parsed.selector, "time": f"{now:.3f}"})
        texts = [query_result_text(s) for s in data["result"]]
    else:
        raise AssertionError(f"variable query kind {parsed.kind} is not used by the dashboards")
    options = apply_regex(var.get("regex", ""), texts)
    return sort_options(options, int(var.get("sort", 0)))


@dataclass
class Problem:
    where: str
    ref_id: str
    expr: str
    what: str  # "error: ...", "empty", "returns data but is listed in EXPECTED_EMPTY"

    def __str__(self) -> str:
        return f"{self.where} [{self.ref_id}] {self.what}\n      {self.expr}"


def check_dashboard(prom: Server, uid: str, d: dict[str, Any]) -> list[Problem]:
    """One pass of Grafana over dashboard ``d``: variables, then every query."""
    now = time.time()
    problems: list[Problem] = []
    selected: dict[str, Selection] = {}
    for var in variables(d):
        name = var["name"]
        if var["type"] == "datasource":
            continue
        if var["type"] == "textbox":
            selected[name] = Selection(var["query"])
            continue
        where = f"variable {name!r}"
        expected = EXPECTED_EMPTY.get((uid, where, ""))
        expr = interpolate(var["query"], selected, BUILTINS)
        try:
            options = variable_options(prom, var, expr, now)
        except PromError as exc:
            problems.append(Problem(where, "", expr, f"error: {exc}"))
            continue
        if expected and options:
            problems.append(Problem(where, "", expr, "offers values but is listed in "
                                    "EXPECTED_EMPTY: remove the entry"))
        elif not options and not expected:
            problems.append(Problem(where, "", expr, "offers no values"))
        if var.get("includeAll"):
            selected[name] = Selection(var["allValue"], multi=True, is_all_value=True)
            continue
        want = PREFERRED.get((uid, name))
        if want is not None and want not in options:
            problems.append(Problem(where, "", expr, f"does not offer {want!r}: {options}"))
        if options:
            selected[name] = Selection(want if want in options else options[0])
    for pq in queries(d):
        if pq.hidden:
            continue
        expected = EXPECTED_EMPTY.get((uid, pq.where, pq.ref_id))
        try:
            expr = interpolate(pq.expr, selected, BUILTINS)
        except KeyError as exc:
            problems.append(Problem(pq.where, pq.ref_id, pq.expr, f"error: {exc}"))
            continue
        branches = split_or(expr)
        for part in [expr, *(branches if len(branches) > 1 else [])]:
            for mode in [m for m, on in (("instant", pq.instant), ("range", pq.range)) if on]:
                try:
                    n = run_query(prom, part, instant=mode == "instant", now=now)
                except PromError as exc:
                    problems.append(Problem(pq.where, pq.ref_id, part, f"error: {exc}"))
                    continue
                if expected and n:
                    problems.append(Problem(pq.where, pq.ref_id, part,
                                            "returns data but is listed in EXPECTED_EMPTY "
                                            f"({expected}): remove the entry"))
                elif not expected and not n:
                    what = "empty" + (" (an `or` alternative)" if part != expr else "")
                    problems.append(Problem(pq.where, pq.ref_id, part, f"{what} ({mode})"))
    return problems


def test_every_expected_empty_entry_names_a_real_query() -> None:
    known: set[tuple[str, str, str]] = set()
    for uid, d in DASHBOARDS.items():
        known |= {(uid, pq.where, pq.ref_id) for pq in queries(d)}
        known |= {(uid, f"variable {v['name']!r}", "") for v in variables(d)}
    assert set(EXPECTED_EMPTY) <= known, set(EXPECTED_EMPTY) - known


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_every_query_returns_data_on_a_real_prometheus(stack: Stack, uid: str) -> None:
    d = DASHBOARDS[uid]
    rounds = 0
    while True:
        rounds += 1
        problems = check_dashboard(stack.prometheus, uid, d)
        waiting = [p for p in problems if p.what.startswith(("empty", "offers no values"))]
        if not waiting or time.monotonic() - stack.started > DEADLINE_S:
            break
        time.sleep(2.0)
    elapsed = time.monotonic() - stack.started
    assert not problems, (
        f"dashboard {uid} ({d['title']}), after {rounds} rounds, {elapsed:.0f}s into the "
        f"stack:\n  " + "\n  ".join(str(p) for p in problems)
        + f"\n\nPrometheus log:\n{stack.prometheus.log_tail(1500)}")


def test_lustre_fixture_header_is_stripped() -> None:
    body = _strip_insta_header(LUSTRE_FIXTURE.read_text(encoding="utf-8"))
    assert body.startswith("# HELP lustre_")
    assert "expression:" not in body.splitlines()[0]

