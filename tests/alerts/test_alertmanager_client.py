"""Payload builder (pure) and the sender's timing, queue, retry and auth (stub endpoint).

The stub only records requests and answers with a chosen status; that Alertmanager
itself accepts and routes the payloads is proven in test_alertmanager_real.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr
from report_builders import SCOPE, causes, fire, report, spec

from gpuslo.alerts.alertmanager import (
    AlertmanagerClient,
    PayloadOptions,
    build_alert,
    build_alerts,
    rfc3339,
)
from gpuslo.exporters.base import ExportResult, Snapshot
from gpuslo.pipeline.auth import tls_context_from
from gpuslo.pipeline.config import AlertmanagerConfig, BasicAuthConfig, TlsConfig
from gpuslo.slo.alerting import AlertEvaluator, AlertStatus
from gpuslo.slo.windows import Severity

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


# -- pure payloads ------------------------------------------------------------------------


def test_a_firing_page_alert_has_the_routing_labels_and_rca_ready_annotations() -> None:
    s = spec()
    rep, alerts = fire(AlertEvaluator([s]), s, T0)
    page = next(a for a in alerts if a.severity is Severity.PAGE)
    opts = PayloadOptions(resend_interval=timedelta(seconds=60),
                          external_url="http://gpuslo.example:9464/",
                          dashboard_url="https://grafana.example/d/slo?var-slo={slo}")
    p = build_alert(page, now=T0, report=rep, spec=s, rca="GPU 3 throttled", options=opts)
    assert p is not None
    assert p["labels"] == {
        "alertname": "VllmTtftBurnRate", "slo": "vllm-ttft", "service": "vllm",
        "severity": "page", "model_name": "llama-70b", "team": "inference", "tier": "gold",
    }
    ann = p["annotations"]
    assert ann["summary"].startswith("[page] vllm vLLM time to first token SLO")
    assert "20x over 1h and 20x over 5m (threshold 14.4x)" in ann["description"]
    assert "Error budget left: 42 % of the 30d period" in ann["description"]
    assert "Exhausted in 3h 0m" in ann["description"]
    assert ann["runbook_url"] == "https://runbooks.example/vllm-ttft"  # the SLO's own
    assert ann["dashboard_url"] == "https://grafana.example/d/slo?var-slo=vllm-ttft"
    assert ann["rca"] == "GPU 3 throttled"
    assert p["startsAt"] == "2026-03-02T12:00:00.000Z"
    assert p["endsAt"] == "2026-03-02T12:04:00.000Z"  # now + 4 x 60 s
    assert p["generatorURL"] == "http://gpuslo.example:9464/slo/vllm-ttft"


def test_a_scope_label_cannot_override_the_routing_labels() -> None:
    s = spec()
    ev = AlertEvaluator([s])
    rep = report(s, T0, burn_rate=20, scope={"severity": "low", "slo": "x"})
    (page, _ticket) = ev.evaluate([rep], T0)
    p = build_alert(page, now=T0, report=rep, spec=s)
    assert p is not None
    assert p["labels"]["severity"] == "page" and p["labels"]["slo"] == "vllm-ttft"


def test_pending_alerts_are_not_sent_and_resolved_ones_end_when_they_resolved() -> None:
    s = spec()
    ev = AlertEvaluator([s])
    fire(ev, s, T0)
    later = T0 + timedelta(minutes=7)
    rep = report(s, later, burn_rate=0.5)
    resolved = ev.evaluate([rep], later)
    assert {a.status for a in resolved} == {AlertStatus.RESOLVED}
    payloads = build_alerts(resolved, now=later + timedelta(seconds=5), reports=[rep],
                            specs={s.id: s})
    assert [p["endsAt"] for p in payloads] == [rfc3339(later)] * 2
    assert all("back to normal" in p["annotations"]["summary"] for p in payloads)


def test_without_a_spec_the_slo_id_stands_in_for_the_service() -> None:
    s = spec()
    _, alerts = fire(AlertEvaluator([s]), s, T0)
    p = build_alert(alerts[0], now=T0)
    assert p is not None
    assert p["labels"]["service"] == "vllm-ttft"
    assert "generatorURL" not in p and "rca" not in p["annotations"]


# -- schedule (time injected, no I/O) ------------------------------------------------------


def _client(**kw: Any) -> AlertmanagerClient:
    cfg = AlertmanagerConfig.model_validate(
        {"urls": ["http://am-0:9093", "http://am-1:9093"], "resend_interval_s": 60, **kw})
    return AlertmanagerClient(cfg, clock=lambda: T0)


def test_firing_alerts_are_resent_every_interval_with_a_fresh_ends_at() -> None:
    s = spec()
    ev = AlertEvaluator([s])
    c = _client()
    rep, alerts = fire(ev, s, T0)
    assert c.submit(alerts, reports=[rep], specs={s.id: s}, now=T0) == 2
    for url in ("http://am-0:9093", "http://am-1:9093"):  # every replica gets every alert
        assert len(c.queued(url)) == 2
    t1 = T0 + timedelta(seconds=30)
    rep, alerts = fire(ev, s, t1)
    assert c.submit(alerts, reports=[rep], specs={s.id: s}, now=t1) == 0  # not due yet
    t2 = T0 + timedelta(seconds=60)
    assert c.tick(t2) == 2
    assert {p["endsAt"] for p in c.queued("http://am-0:9093")} == {
        rfc3339(t2 + timedelta(minutes=4))}
    assert len(c.queued("http://am-0:9093")) == 2  # the newer version replaced the older


def _rca_client(**kw: Any) -> AlertmanagerClient:
    cfg = AlertmanagerConfig.model_validate(
        {"urls": ["http://am-0:9093"], "resend_interval_s": 60, "rca_wait_s": 60, **kw})
    return AlertmanagerClient(cfg, clock=lambda: T0, rca_expected=True)


def _sent_rca(c: AlertmanagerClient) -> list[str | None]:
    return [p["annotations"].get("rca") for p in c.queued("http://am-0:9093")]


def test_a_new_alert_waits_for_its_causes_and_goes_out_with_them() -> None:
    """What the pager gets is the first version Alertmanager sees: it does not notify
    again when only an annotation changes."""
    s = spec()
    ev = AlertEvaluator([s])
    c = _rca_client()
    rep, alerts = fire(ev, s, T0)
    assert all(a.fired_at == T0 for a in alerts)
    assert c.submit(alerts, reports=[rep], now=T0) == 0  # no causes yet: held
    assert c.tick(T0 + timedelta(seconds=30)) == 0
    t1 = T0 + timedelta(seconds=40)
    rep, alerts = fire(ev, s, t1)
    key = (s.id, rep.scope_key)
    assert c.submit(alerts, reports=[rep], rca={key: "1. [cause] GPU 3"}, now=t1) == 2
    assert _sent_rca(c) == ["1. [cause] GPU 3"] * 2
    # startsAt is still when it fired, not when it was sent.
    assert {p["startsAt"] for p in c.queued("http://am-0:9093")} == {rfc3339(T0)}


def test_a_new_alert_without_causes_goes_out_when_the_wait_is_over() -> None:
    s = spec()
    c = _rca_client()
    rep, alerts = fire(AlertEvaluator([s]), s, T0)
    assert c.submit(alerts, reports=[rep], now=T0) == 0
    assert c.tick(T0 + timedelta(seconds=59)) == 0
    assert c.tick(T0 + timedelta(seconds=60)) == 2
    assert _sent_rca(c) == [None, None]


def test_no_wait_without_a_ranking_side_or_for_an_alert_that_fired_long_ago() -> None:
    s = spec()
    _, alerts = fire(AlertEvaluator([s]), s, T0)
    # anomaly disabled: nothing will rank the causes, so nothing waits for them
    cfg = AlertmanagerConfig(urls=["http://am-0:9093"], rca_wait_s=60)
    assert AlertmanagerClient(cfg, clock=lambda: T0).submit(alerts, now=T0) == 2
    # rca_wait_s 0: sent at once
    assert _rca_client(rca_wait_s=0).submit(alerts, now=T0) == 2
    # restored by a restarted stage 2, fired two minutes ago: its page is overdue
    later = T0 + timedelta(minutes=2)
    assert _rca_client().submit(alerts, now=later) == 2


def test_an_alert_resolved_while_it_waits_is_sent_resolved_only() -> None:
    s = spec()
    ev = AlertEvaluator([s])
    c = _rca_client()
    rep, alerts = fire(ev, s, T0)
    assert c.submit(alerts, reports=[rep], now=T0) == 0
    t1 = T0 + timedelta(seconds=20)
    rep = report(s, t1, burn_rate=0.1)
    assert c.submit(ev.evaluate([rep], t1), reports=[rep], now=t1) == 2
    assert {p["endsAt"] for p in c.queued("http://am-0:9093")} == {rfc3339(t1)}


def test_resolved_alerts_are_resent_for_the_retention_then_forgotten() -> None:
    s = spec()
    ev = AlertEvaluator([s])
    c = _client(resolved_retention_s=300)
    rep, alerts = fire(ev, s, T0)
    c.submit(alerts, reports=[rep], specs={s.id: s}, now=T0)
    t1 = T0 + timedelta(seconds=10)
    rep = report(s, t1, burn_rate=0.1)
    assert c.submit(ev.evaluate([rep], t1), reports=[rep], specs={s.id: s}, now=t1) == 2
    assert {p["endsAt"] for p in c.queued("http://am-0:9093")} == {rfc3339(t1)}
    # next evaluation: inactive (absent from the evaluator's output), still re-sent
    t2 = t1 + timedelta(seconds=60)
    assert c.submit([], now=t2) == 2
    assert {p["endsAt"] for p in c.tracked()} == {rfc3339(t1)}
    assert c.tick(t1 + timedelta(seconds=301)) == 0
    assert c.tracked() == []


def test_a_firing_alert_missing_from_a_complete_evaluation_is_resolved() -> None:
    s = spec()
    c = _client()
    _, alerts = fire(AlertEvaluator([s]), s, T0)
    c.submit(alerts, now=T0)
    t1 = T0 + timedelta(seconds=5)
    assert c.submit([], now=t1) == 2
    assert {p["endsAt"] for p in c.queued("http://am-1:9093")} == {rfc3339(t1)}


def test_a_full_queue_drops_the_oldest_alerts_and_counts_them() -> None:
    s = spec()
    ev = AlertEvaluator([s])
    c = _client(queue_capacity=3)
    reps = [report(s, T0, burn_rate=20, scope={"model_name": f"m{i}"}) for i in range(3)]
    c.submit(ev.evaluate(reps, T0), reports=reps, now=T0)  # 6 alerts
    stats = c.stats()["http://am-0:9093"]
    assert (stats.queued, stats.dropped_total) == (3, 3)
    assert [p["labels"]["model_name"] for p in c.queued("http://am-0:9093")] == ["m1", "m2", "m2"]


# -- delivery against a stub endpoint ------------------------------------------------------


@dataclass
class Stub:
    """Records POST /api/v2/alerts; answers ``statuses`` in turn, then 200."""

    statuses: list[int] = field(default_factory=list)
    requests: list[tuple[dict[str, str], list[dict[str, Any]]]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.requests.append((dict(request.headers), body))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="" if status == 200 else "boom")


@pytest.fixture
async def stub() -> AsyncIterator[Stub]:
    st = Stub()
    app = web.Application()
    app.router.add_post("/api/v2/alerts", st.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    st.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield st
    finally:
        await runner.cleanup()


def _live_client(url: str, **kw: Any) -> AlertmanagerClient:
    cfg = AlertmanagerConfig.model_validate(
        {"urls": [url], "backoff_initial_s": 0.05, "backoff_max_s": 0.2, "timeout_s": 2, **kw})
    return AlertmanagerClient(cfg)


async def test_server_errors_are_retried_with_backoff_until_accepted(stub: Stub) -> None:
    stub.statuses = [500, 503]
    s = spec()
    _, alerts = fire(AlertEvaluator([s]), s, datetime.now(UTC))
    async with _live_client(stub.url) as c:
        c.submit(alerts)
        await c.flush(5)
        st = c.stats()[stub.url]
    assert len(stub.requests) == 3
    assert (st.sent_total, st.errors_total, st.dropped_total, st.queued) == (2, 2, 0, 0)


async def test_a_rejected_payload_is_dropped_not_retried_forever(stub: Stub) -> None:
    stub.statuses = [400]
    s = spec()
    _, alerts = fire(AlertEvaluator([s]), s, datetime.now(UTC))
    async with _live_client(stub.url) as c:
        c.submit(alerts)
        await c.flush(5)
        st = c.stats()[stub.url]
    assert (st.sent_total, st.errors_total, st.dropped_total) == (0, 1, 2)


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ({"bearer_token": "tok"}, "Bearer tok"),
        ({"basic_auth": {"username": "gpuslo", "password": "pw"}},
         "Basic " + base64.b64encode(b"gpuslo:pw").decode()),
    ],
    ids=["bearer", "basic"],
)
async def test_auth_is_sent(stub: Stub, auth: dict[str, Any], expected: str) -> None:
    s = spec()
    _, alerts = fire(AlertEvaluator([s]), s, datetime.now(UTC))
    async with _live_client(stub.url, **auth) as c:
        c.submit(alerts)
        await c.flush(5)
    headers, body = stub.requests[0]
    assert headers["Authorization"] == expected
    assert headers["Content-Type"] == "application/json"
    assert len(body) == 2


def test_basic_and_bearer_auth_are_exclusive() -> None:
    with pytest.raises(ValueError, match="set one of basic_auth, bearer_token, bearer_token_file"):
        AlertmanagerConfig(urls=["http://a"], bearer_token=SecretStr("t"),
                           basic_auth=BasicAuthConfig(username="u", password=SecretStr("p")))


def test_tls_context_verifies_by_default_and_can_be_told_not_to() -> None:
    import ssl

    assert tls_context_from(TlsConfig()).verify_mode is ssl.CERT_REQUIRED
    insecure = tls_context_from(TlsConfig(insecure_skip_verify=True))
    assert insecure.verify_mode is ssl.CERT_NONE and not insecure.check_hostname


async def test_as_a_push_exporter_it_submits_the_snapshots_alerts(stub: Stub) -> None:
    s = spec()
    now = datetime.now(UTC)
    rep, alerts = fire(AlertEvaluator([s]), s, now)
    snap = Snapshot.build(reports=[rep], alerts=alerts, taken_at=now, specs=[s],
                          rca={(s.id, rep.scope_key): "NVLink errors on gpu-node-1"})
    async with _live_client(stub.url) as c:
        assert await c.export(snap) is ExportResult.SUCCESS
        await c.flush(5)
    sent = [a for _, body in stub.requests for a in body]
    assert {a["annotations"]["rca"] for a in sent} == {"NVLink errors on gpu-node-1"}
    assert {a["labels"]["model_name"] for a in sent} == {SCOPE["model_name"]}


async def test_ranked_causes_become_the_rca_annotation_top_three_one_line_each(
        stub: Stub) -> None:
    s = spec()
    now = datetime.now(UTC)
    rep, alerts = fire(AlertEvaluator([s]), s, now)
    ranked = [*causes(now), *(
        replace(c, rank=c.rank + 2, entity=f"other-{c.rank}", evidence=f"third or later {c.rank}")
        for c in causes(now))]
    snap = Snapshot.build(reports=[rep], alerts=alerts, taken_at=now, specs=[s],
                          causes={(s.id, rep.scope_key): ranked})
    async with _live_client(stub.url) as c:
        assert await c.export(snap) is ExportResult.SUCCESS
        await c.flush(5)
    texts = {a["annotations"]["rca"] for _, body in stub.requests for a in body}
    assert len(texts) == 1
    lines = texts.pop().splitlines()
    assert lines == [
        f"1. [cause] {ranked[0].evidence}",
        f"2. [symptom] {ranked[1].evidence}",
        f"3. [cause] {ranked[2].evidence}",
    ]


async def test_a_firing_alert_whose_causes_are_ranked_anew_is_sent_again_at_once(
        stub: Stub) -> None:
    s = spec()
    now = datetime.now(UTC)
    rep, alerts = fire(AlertEvaluator([s]), s, now)
    key = (s.id, rep.scope_key)
    async with _live_client(stub.url) as c:
        for text in ("1. [cause] early guess", "1. [cause] early guess", "1. [cause] final"):
            c.submit(alerts, reports=[rep], rca={key: text}, now=now)
            await c.flush(5)
    sent = [a["annotations"]["rca"] for _, body in stub.requests for a in body]
    # The same text twice is not re-sent within the resend interval; a new one is, at once.
    assert sent == ["1. [cause] early guess"] * len(alerts) + ["1. [cause] final"] * len(alerts)


async def test_shutdown_flushes_what_is_queued(stub: Stub) -> None:
    s = spec()
    _, alerts = fire(AlertEvaluator([s]), s, datetime.now(UTC))
    c = _live_client(stub.url)
    await c.start()
    c.submit(alerts)
    await c.shutdown()
    await c.shutdown()  # idempotent
    assert sum(len(b) for _, b in stub.requests) == 2
    await asyncio.sleep(0)


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fresh self-signed certificate and key for 127.0.0.1."""
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not found: install the Debian package 'openssl'")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                   timeout=30)
    return cert, key


@pytest.fixture
async def tls_stub(tls_cert: tuple[Path, Path]) -> AsyncIterator[tuple[Stub, Path]]:
    """The stub over HTTPS."""
    import ssl as ssl_mod

    cert, key = tls_cert
    ctx = ssl_mod.create_default_context(ssl_mod.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    st = Stub()
    app = web.Application()
    app.router.add_post("/api/v2/alerts", st.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
    st.url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield st, cert
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("tls", ["ca_file", "insecure", "unverified"])
async def test_tls_verifies_with_the_ca_file_or_not_at_all_when_told(
    tls_stub: tuple[Stub, Path], tls: str
) -> None:
    stub, cert = tls_stub
    tls_cfg = {"ca_file": {"ca_file": str(cert)}, "insecure": {"insecure_skip_verify": True},
               "unverified": {}}[tls]
    s = spec()
    _, alerts = fire(AlertEvaluator([s]), s, datetime.now(UTC))
    async with _live_client(stub.url, tls=tls_cfg) as c:
        c.submit(alerts)
        if tls == "unverified":  # unknown CA: refused, kept queued, retried
            await asyncio.sleep(0.3)
            st = c.stats()[stub.url]
            assert st.errors_total >= 1 and st.queued == 2 and stub.requests == []
            await c.shutdown(flush_timeout_s=0)
            return
        await c.flush(5)
    assert sum(len(b) for _, b in stub.requests) == 2
