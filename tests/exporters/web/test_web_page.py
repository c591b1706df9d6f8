"""The status page over HTTP, as the wiring mounts it: one port with /metrics.

The hub is built from a config exactly as ``gpuslo aggregate`` builds it, and
the page is read over a real socket.
"""

from __future__ import annotations

import aiohttp
import pytest
from report_builders import report, spec
from web_builders import BAD, CAUSE, T0, snapshots

from gpuslo.exporters.base import Snapshot
from gpuslo.exporters.web import render, views
from gpuslo.exporters.web.page import CSP, StatusPage
from gpuslo.pipeline.app.wiring import build_hub, status_page_url
from gpuslo.pipeline.config import GpusloConfig
from gpuslo.slo import conventions as cv


def _cfg(**web: object) -> GpusloConfig:
    return GpusloConfig.model_validate({"node": "test", "exporters": {
        "prometheus": {"host": "127.0.0.1", "port": 0}, "web": web}})


async def test_one_port_serves_metrics_the_pages_and_their_json() -> None:
    async with build_hub(_cfg(grafana_url="https://grafana.example")) as hub:
        for snap in snapshots(minutes=40):
            await hub.publish(snap)
        base = status_page_url(hub)
        assert base is not None and base.endswith("/")
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "metrics") as r:
                assert r.status == 200 and "gpuslo_slo_burn_rate" in await r.text()
            async with http.get(base) as r:
                page = await r.text()
                assert r.status == 200 and r.headers["Content-Security-Policy"] == CSP
            assert page.index("llama-70b") < page.index("model_name=small")
            assert CAUSE in page
            async with http.get(base + "api/v1/slos") as r:
                doc = await r.json()
            first = doc["slos"][0]
            assert (first["scope"], first["state"], first["cause"]) == (BAD, "firing", CAUSE)
            assert first["tiers"][0] == {
                "name": "page-5m-1h", "severity": "page", "short": "5m", "long": "1h",
                "factor": 14.4, "short_burn_rate": 20.0, "long_burn_rate": 20.0,
                "breaching": True}
            async with http.get(base + first["href"].lstrip("/")) as r:
                detail = await r.text()
                assert r.status == 200 and "<svg" in detail and "episode page" in detail
                assert "https://grafana.example/d/gpuslo-slo-detail?var-slo=vllm-ttft" in detail
            async with http.get(base + "api/v1/slos/vllm-ttft",
                                params={"scope": cv.scope_key(BAD)}) as r:
                d = await r.json()
            assert d["selected"]["scope"] == BAD and len(d["series"]["times"]) == 40
            assert d["series"]["episodes"][0]["end"] is None
            assert "record: slo:sli_error:ratio_rate5m" in d["rules"]
            async with http.get(base + "api/v1/alerts") as r:
                alerts = (await r.json())["alerts"]
            assert {(a["severity"], a["status"]) for a in alerts} == {("page", "firing")}
            async with http.get(base + "api/v1/fleet") as r:
                assert (await r.json())["targets_down"] == ["http://n2:9400/metrics"]
            async with http.get(base + "fleet") as r:
                assert r.status == 200
            async with http.get(base + "static/app.js") as r:
                assert r.status == 200 and "text/javascript" in r.headers["Content-Type"]
            for missing in ("slo/nope", "api/v1/slos/nope", "static/../page.py"):
                async with http.get(base + missing) as r:
                    assert r.status == 404, missing


async def test_labels_from_scraped_data_are_escaped() -> None:
    s = spec()
    evil = {"model_name": '<script>alert(1)</script>"'}
    snap = Snapshot.build(reports=[report(s, T0, burn_rate=1.0, scope=evil)], taken_at=T0,
                          specs=[s], rca={(s.id, cv.scope_key(evil)): "<img src=x onerror=1>"})
    page = StatusPage()
    page.publish(snap)
    html = render.overview_page(views.overview(page.source.status()), refresh_s=5)
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_page_is_off_without_the_prometheus_port_or_when_disabled() -> None:
    off = GpusloConfig.model_validate({"exporters": {"prometheus": {"enabled": False}}})
    assert not any(isinstance(e, StatusPage) for e in build_hub(off).exporters)
    assert not any(isinstance(e, StatusPage) for e in build_hub(_cfg(enabled=False)).exporters)
    (page,) = [e for e in build_hub(_cfg()).exporters if isinstance(e, StatusPage)]
    assert page.mounted


@pytest.mark.parametrize("bad", [{"history_points": 1}, {"grafana_url": "grafana:3000"}])
def test_bad_web_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"exporters\.web"):
        _cfg(**bad)
