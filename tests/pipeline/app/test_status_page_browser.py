"""The status page and the backtest report, as a person sees them in a real Chromium.

``gpuslo demo`` (the installed console script) runs with an RDMA port fault
injected on node-7; the test reads the page's URL from what the demo prints,
waits for that fault to page, and then loads every page in headless Chromium
(Debian ``chromium``, through Playwright, no browser download):

* the overview lists firing scopes first, the injected one among them;
* the SLO detail page draws its charts: the rendered SVG paths have a length
  and lie inside their plot, the alert episode is a shaded band of real width,
  the threshold lines are there;
* the fleet page shows node-7 with its firing SLO;
* no page requests anything outside the demo's host, and none logs a console
  error; the page refreshes itself (its script fetches the page again).

Screenshots of the overview and of the detail page are saved as artefacts
(``test-artifacts/status-page/``); ``docs/img/`` holds copies for the README.

The replay report is opened from its file: it shows every episode that
``gpuslo replay --json`` lists, each as a table row and as a shaded band.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from browser import artifacts_dir, chromium, watched
from playwright.sync_api import BrowserContext, Page
from typer.testing import CliRunner

from gpuslo.exporters.web.views import rules_text
from gpuslo.pipeline.app.cli.main import app
from gpuslo.pipeline.schema import frame_from_rows
from gpuslo.slo.catalog import CATALOG_DIR
from gpuslo.slo.spec import load_specs

pytestmark = pytest.mark.integration

FAULT = "ib_link_flap:node-7/mlx5_1@0"
FAULT_SLO, FAULT_SCOPE = "rdma-port-health", {"node": "node-7", "device": "mlx5_1"}
URL_LINE = re.compile(r"status page: (http://[0-9.]+:\d+/)")


def _script() -> Path:
    script = Path(sys.executable).parent / "gpuslo"
    if not script.exists():
        pytest.fail(f"{script} not found: install gpuslo into this environment (pip install -e .)")
    return script


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _wait(what: str, probe: Any, proc: subprocess.Popen[bytes], log: Path,
          timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"gpuslo demo exited ({proc.returncode}) before {what}:\n"
                                 f"{log.read_text(errors='replace')[-3000:]}")
        try:
            got = probe()
        except OSError:
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s}s:\n"
                                 f"{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running demo whose injected fault pages; yields the status page's base URL."""
    work = tmp_path_factory.mktemp("status-page")
    log = work / "demo.log"
    argv = [str(_script()), "demo", "--port", "0", "--metrics-port", "0", "--inject", FAULT,
            "--duration", "300"]
    env = {**os.environ, "COLUMNS": "200"}  # one URL per line in the log
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env)
        try:
            base = _wait("status page URL", lambda: (m := URL_LINE.search(
                log.read_text(errors="replace"))) and m.group(1), proc, log, 60)

            def paging() -> bool:
                alerts = _get_json(base + "api/v1/alerts")["alerts"]
                return any(a["slo"] == FAULT_SLO and a["status"] == "firing"
                           and FAULT_SCOPE.items() <= a["scope"].items() for a in alerts)

            _wait(f"{FAULT_SLO} page on node-7", paging, proc, log, 60)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as ctx:
        yield ctx


def _same_host(urls: list[str], base: str) -> list[str]:
    host = urlsplit(base).netloc
    return [u for u in urls if not u.startswith("data:") and urlsplit(u).netloc != host]


def _svg_geometry(page: Page, chart_id: str) -> dict[str, Any]:
    """What Chromium drew for one chart: path lengths and boxes, bands, threshold lines."""
    return page.evaluate(
        """(id) => {
          const fig = document.getElementById(id);
          const svg = fig.querySelector('svg');
          const plot = svg.querySelector('rect.plot').getBBox();
          const lines = Array.from(svg.querySelectorAll('path.line'), (p) => {
            const b = p.getBBox();
            return {cls: p.getAttribute('class'), length: p.getTotalLength(),
                    x: b.x, y: b.y, w: b.width, h: b.height};
          });
          const bands = Array.from(svg.querySelectorAll('rect.episode'),
                                   (r) => r.getBoundingClientRect().width);
          const shown = svg.getBoundingClientRect();
          return {plot: {x: plot.x, y: plot.y, w: plot.width, h: plot.height}, lines, bands,
                  hlines: svg.querySelectorAll('line.hline').length,
                  screen: {w: shown.width, h: shown.height},
                  label: svg.getAttribute('aria-labelledby')};
        }""",
        chart_id,
    )


def test_a_fault_burning_an_slo_shows_in_the_browser(demo: str, browser: BrowserContext) -> None:
    shots = artifacts_dir("status-page")
    page = browser.new_page()
    log = watched(page)

    # Overview: firing first, the injected fault among them.
    page.goto(demo)
    rows = page.eval_on_selector_all(
        "#slo-table tbody tr.row",
        "rs => rs.map(r => ({state: r.dataset.state, slo: r.dataset.slo,"
        " scope: r.querySelector('td.scope').textContent,"
        " href: r.querySelector('th a').getAttribute('href')}))")
    states = [r["state"] for r in rows]
    assert states[0] == "firing", rows[:5]
    n_firing = states.count("firing")
    assert states[:n_firing] == ["firing"] * n_firing, "a firing scope is listed below a calm one"
    fault_rows = [r for r in rows[:n_firing] if r["slo"] == FAULT_SLO
                  and "node=node-7" in r["scope"] and "device=mlx5_1" in r["scope"]]
    assert fault_rows, f"the injected fault is not among the firing rows: {rows[:n_firing]}"
    assert len(rows) > 20  # every SLO scope, not only the bad ones
    page.screenshot(path=str(shots / "overview.png"))

    # The page refreshes itself: its script fetches the same page again.
    before = len(log.requests)
    page.wait_for_timeout(2600)  # the demo's refresh_s is 2
    assert any(u == demo for u in log.requests[before:]), log.requests[before:]

    # Keyboard: the first Tab lands on the skip link.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"

    # Detail page of the injected fault: the charts are drawn.
    page.click(f"#slo-table a[href='{fault_rows[0]['href']}']")
    page.wait_for_selector("figure.chart svg path.line")
    assert page.locator("h2#scope-h").inner_text().startswith("device=mlx5_1, node=node-7")
    charts = page.eval_on_selector_all("figure.chart", "fs => fs.map(f => f.id)")
    assert len(charts) >= 6, charts  # SLI, budget, one per tier (4 by default)
    for chart_id in charts:
        g = _svg_geometry(page, chart_id)
        assert g["screen"]["w"] > 300 and g["screen"]["h"] > 80, (chart_id, g)
        assert g["label"], chart_id  # title and description for screen readers
        drawn = [line for line in g["lines"] if line["length"] > 0]
        assert drawn, f"{chart_id}: no line drawn: {g}"
        p = g["plot"]
        for line in drawn:
            assert p["x"] - 1 <= line["x"] and line["x"] + line["w"] <= p["x"] + p["w"] + 1, \
                (chart_id, line, p)
            assert p["y"] - 1 <= line["y"] and line["y"] + line["h"] <= p["y"] + p["h"] + 1, \
                (chart_id, line, p)
        assert g["bands"] and max(g["bands"]) > 5, f"{chart_id}: the firing episode is not shaded"
        assert g["hlines"] >= 1, chart_id  # objective, budget zero or the tier's threshold
    assert page.locator("table.episodes tr.episode-row").count() >= 1
    assert "still firing" in page.locator("table.episodes").inner_text()
    yaml_text = page.locator("details.code pre").first.text_content() or ""
    assert f"id: {FAULT_SLO}" in yaml_text
    (spec,) = [s for s in load_specs([CATALOG_DIR]) if s.id == FAULT_SLO]
    shown_rules = page.locator("details.code pre").nth(1).text_content() or ""
    assert shown_rules.strip() == rules_text(spec).strip()  # `gpuslo rules`' own output
    page.screenshot(path=str(shots / "slo-detail.png"))  # the charts are at the top

    # Fleet: node-7 with its firing SLO.
    page.goto(demo + "fleet")
    node7 = page.locator("#fleet-table tr", has=page.locator("th", has_text="node-7"))
    assert node7.count() == 1
    assert "firing" in node7.inner_text() and FAULT_SLO in node7.inner_text()
    page.screenshot(path=str(shots / "fleet.png"))

    assert not _same_host(log.requests, demo), "requests outside the host"
    assert not log.console_errors(), log.console
    page.close()


def _replay_samples(path: Path) -> None:
    """Two hours of vLLM request counters, 15 s apart: llama fails from minute 20 to 30,
    mistral from minute 75 to 82, qwen never."""
    t0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    rows = []
    for model, (a, b) in {"llama": (80, 120), "mistral": (300, 330), "qwen": (-1, -1)}.items():
        ok = err = 0.0
        for i in range(8 * 60 + 1):
            if i:
                ok += 20
                err += 5 if a <= i < b else 0
            ts = t0 + timedelta(seconds=15 * i)
            for reason, value in (("stop", ok), ("error", err)):
                rows.append((ts, "n1", "vllm", "vllm:request_success_total", "counter", value,
                             "", {"model_name": model, "finished_reason": reason}))
    frame_from_rows(rows).write_parquet(path)


def test_the_replay_report_opens_in_chromium_and_shows_each_episode(
        tmp_path: Path, browser: BrowserContext) -> None:
    samples, html, report = tmp_path / "s.parquet", tmp_path / "report.html", tmp_path / "r.json"
    _replay_samples(samples)
    result = CliRunner().invoke(app, [
        "replay", str(CATALOG_DIR / "request-success.yaml"), "--samples", str(samples),
        "--json", str(report), "--html", str(html)])
    assert result.exit_code == 0, result.output
    episodes = json.loads(report.read_text())["alerts"]
    assert len(episodes) >= 3 and any(e["resolved_at"] for e in episodes), episodes

    page = browser.new_page()
    log = watched(page)
    page.goto(html.as_uri())
    rows = page.eval_on_selector_all(
        "#episodes tbody tr.episode-row",
        "rs => rs.map(r => Array.from(r.cells, c => c.textContent.trim()))")
    assert len(rows) == len(episodes)
    for e in episodes:
        fired = e["fired_at"][:19].replace("T", " ")
        resolved = e["resolved_at"][:19].replace("T", " ") if e["resolved_at"] else None
        match = [r for r in rows if r[0] == e["severity"]
                 and f"model_name={e['scope']['model_name']}" == r[2] and r[3].startswith(fired)
                 and (r[4].startswith(resolved) if resolved else "still firing" in r[4])]
        assert len(match) == 1, (e, rows)
    # Each scope with episodes is open, its charts shade them with a visible width.
    for model in {e["scope"]["model_name"] for e in episodes}:
        section = page.locator("details.scope-report", has_text=f"model_name={model}")
        assert section.get_attribute("open") is not None
        widths = section.locator("figure.chart").first.evaluate(
            "f => Array.from(f.querySelectorAll('rect.episode'),"
            " r => r.getBoundingClientRect().width)")
        mine = [e for e in episodes if e["scope"]["model_name"] == model]
        assert len(widths) == len(mine) and min(widths) > 3, (model, widths)
        assert section.locator("path.line.sli").evaluate("p => p.getTotalLength()") > 50
    assert page.locator("details.scope-report:not([open])", has_text="model_name=qwen").count()
    page.screenshot(path=str(artifacts_dir("status-page") / "replay-report.png"), full_page=True)
    assert log.requests == [html.as_uri()], log.requests  # self-contained
    assert not log.console_errors(), log.console
    page.close()
