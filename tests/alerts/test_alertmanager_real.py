"""Against the real Alertmanager 0.25 (Debian ``prometheus-alertmanager``), configured with the
shipped example: delivery, resolution, routing to gpuslo's receiver, HA fan-out, outages."""

from __future__ import annotations

import asyncio
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from report_builders import fire, report, spec
from servers import Server, free_port, require_binary, wait_for

from gpuslo.alerts.alertmanager import AlertmanagerClient
from gpuslo.alerts.receiver import WebhookReceiver
from gpuslo.pipeline.config import AlertmanagerConfig
from gpuslo.slo.alerting import AlertEvaluator

pytestmark = pytest.mark.integration

EXAMPLE_CHECK_TIMEOUT_S = 20


def _client(*urls: str, **kw: Any) -> AlertmanagerClient:
    cfg = AlertmanagerConfig.model_validate({
        "urls": list(urls), "resend_interval_s": 1, "backoff_initial_s": 0.05,
        "backoff_max_s": 0.3, "timeout_s": 2, "external_url": "http://gpuslo.test:9464",
        "dashboard_url": "https://grafana.test/d/gpuslo-slo?var-slo={slo}", **kw})
    return AlertmanagerClient(cfg)


def _alerts(am: Server) -> list[dict[str, Any]]:
    return list(am.get_json("/api/v2/alerts"))


def _by_severity(alerts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {a["labels"]["severity"]: a for a in alerts}


def test_the_example_config_passes_amtool() -> None:
    amtool = require_binary("amtool", "prometheus-alertmanager")
    example = Path(__file__).parents[2] / "alerts" / "examples" / "alertmanager.yml"
    out = subprocess.run([amtool, "check-config", str(example)], capture_output=True,
                         text=True, timeout=EXAMPLE_CHECK_TIMEOUT_S, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


async def test_a_firing_slo_alert_is_visible_routed_to_the_receiver_and_resolves(
    alertmanager: Any, receiver: WebhookReceiver,
) -> None:
    am = await alertmanager()
    s = spec()
    ev = AlertEvaluator([s])
    async with _client(am.url) as client:
        now = datetime.now(UTC)
        rep, alerts = fire(ev, s, now)
        client.submit(alerts, reports=[rep], specs={s.id: s},
                      rca={(s.id, rep.scope_key): "ECC errors on gpu-node-1 GPU 3"})

        # 1. Both alerts are in Alertmanager with gpuslo's labels and annotations.
        got = _by_severity(await wait_for(lambda: len(_alerts(am)) == 2 and _alerts(am),
                                          what="two alerts in GET /api/v2/alerts"))
        page = got["page"]
        assert page["labels"] == {
            "alertname": "VllmTtftBurnRate", "slo": "vllm-ttft", "service": "vllm",
            "severity": "page", "model_name": "llama-70b", "team": "inference", "tier": "gold"}
        ann = page["annotations"]
        assert "20x over 1h and 20x over 5m (threshold 14.4x)" in ann["description"]
        assert "Error budget left: 42 %" in ann["description"]
        assert ann["runbook_url"] == "https://runbooks.example/vllm-ttft"
        assert ann["dashboard_url"] == "https://grafana.test/d/gpuslo-slo?var-slo=vllm-ttft"
        assert ann["rca"] == "ECC errors on gpu-node-1 GPU 3"
        assert page["generatorURL"] == "http://gpuslo.test:9464/slo/vllm-ttft"
        assert page["receivers"] == [{"name": "gpuslo-page"}]
        assert page["status"]["state"] == "active"
        ends = datetime.fromisoformat(page["endsAt"].replace("Z", "+00:00"))
        assert ends > now + timedelta(seconds=3)  # now + 4 x resend interval
        # The example inhibits the ticket while the page of the same SLO fires.
        assert got["ticket"]["status"]["state"] == "suppressed"
        assert got["ticket"]["status"]["inhibitedBy"] == [page["fingerprint"]]

        # 2. Alertmanager routed the page (only) to gpuslo's receiver, as a v4 payload.
        await wait_for(lambda: any(n.message.status == "firing"
                                   for n in receiver.notifications), what="firing webhook")
        firing = [n.message for n in receiver.notifications if n.message.status == "firing"]
        assert {m.receiver for m in firing} == {"gpuslo-page"}
        msg = firing[0]
        assert msg.version == "4"
        assert msg.groupLabels == {"slo": "vllm-ttft"}
        assert msg.externalURL == am.url
        (alert,) = msg.alerts
        assert alert.labels["severity"] == "page"
        assert alert.annotations["rca"] == "ECC errors on gpu-node-1 GPU 3"
        assert alert.generatorURL == "http://gpuslo.test:9464/slo/vllm-ttft"

        # 3. The SLO recovers: both alerts resolve and the receiver hears it.
        later = datetime.now(UTC)
        rep = report(s, later, burn_rate=0.2)
        client.submit(ev.evaluate([rep], later), reports=[rep], specs={s.id: s})
        await wait_for(lambda: _alerts(am) == [], what="alerts resolved in Alertmanager")
        resolved = await wait_for(
            lambda: [n.message for n in receiver.notifications if n.message.status == "resolved"],
            what="resolved webhook")
        assert resolved[0].alerts[0].status == "resolved"
        assert resolved[0].alerts[0].endsAt <= datetime.now(UTC)
        assert client.stats()[am.url].errors_total == 0


async def test_every_alertmanager_replica_gets_the_alert(
    alertmanager: Any, receiver: WebhookReceiver,
) -> None:
    am0, am1 = await alertmanager(), await alertmanager()
    s = spec()
    async with _client(am0.url, am1.url) as client:
        rep, alerts = fire(AlertEvaluator([s]), s, datetime.now(UTC))
        client.submit(alerts, reports=[rep], specs={s.id: s})
        for am in (am0, am1):
            got = await wait_for(lambda am=am: _alerts(am), what=f"alerts in {am.name}")
            assert {a["labels"]["severity"] for a in got} == {"page", "ticket"}
        # Two independent (unclustered) replicas: each notifies the receiver itself.
        await wait_for(
            lambda: {n.message.externalURL for n in receiver.notifications} == {am0.url, am1.url},
            what="a webhook from each replica")
        stats = client.stats()
        assert stats[am0.url].sent_total == stats[am1.url].sent_total == 2


async def test_an_alert_sent_while_alertmanager_is_down_arrives_once_it_is_back(
    alertmanager: Any, receiver: WebhookReceiver,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    s = spec()
    ev = AlertEvaluator([s])
    async with _client(url, resend_interval_s=0.5) as client:
        rep, alerts = fire(ev, s, datetime.now(UTC))
        client.submit(alerts, reports=[rep], specs={s.id: s})
        await wait_for(lambda: client.stats()[url].errors_total >= 2, what="failed attempts")
        # Keep evaluating while it is down, as the engine would.
        rep, alerts = fire(ev, s, datetime.now(UTC))
        client.submit(alerts, reports=[rep], specs={s.id: s})
        await asyncio.sleep(1.0)
        assert client.stats()[url].queued == 2  # still waiting, not lost
        am = await alertmanager(port=port)
        got = await wait_for(lambda: _alerts(am), what="alerts after Alertmanager came back")
        assert {a["labels"]["severity"] for a in got} == {"page", "ticket"}
        for a in got:  # what arrived is the fresh version, not an expired one
            ends = datetime.fromisoformat(a["endsAt"].replace("Z", "+00:00"))
            assert ends > datetime.now(UTC)
        await wait_for(lambda: any(n.message.status == "firing" for n in receiver.notifications),
                       what="webhook after the outage")
        st = client.stats()[url]
        assert st.errors_total >= 2 and st.dropped_total == 0
