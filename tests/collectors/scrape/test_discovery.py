"""Target discovery: static, sidecar, and node-local pods from a kubelet-shaped /pods."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gpuslo.collectors.base import ScrapeTarget
from gpuslo.collectors.scrape.discovery import (
    CombinedTargets,
    KubernetesPods,
    StaticTargets,
    pods_url,
    sidecar_targets,
    target_source,
    targets_from_pods,
)
from gpuslo.pipeline.config import KvCacheCollectorConfig

NODE = "gpu-node-7"


def pod(name: str, *, annotations: dict[str, str], node: str = NODE, phase: str = "Running",
        ip: str | None = "10.1.2.3", ports: list[int] | None = None,
        namespace: str = "inference") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations,
                     "labels": {"app": name}},
        "spec": {"nodeName": node, "containers": [
            {"name": "server", "ports": [{"containerPort": p} for p in (ports or [])]}]},
        "status": {"phase": phase, **({"podIP": ip} if ip else {})},
    }


SCRAPE_KV = {"gpuslo.io/scrape": "true", "gpuslo.io/source": "kvcache"}

PODS: dict[str, Any] = {
    "kind": "PodList",
    "apiVersion": "v1",
    "items": [
        # opted in, explicit port and path
        pod("vllm-a", annotations={**SCRAPE_KV, "gpuslo.io/port": "8000"}, ip="10.1.2.3"),
        # opted in, port from the container spec, custom path (trtllm-serve)
        pod("trtllm-b", annotations={**SCRAPE_KV, "gpuslo.io/path": "prometheus/metrics"},
            ip="10.1.2.4", ports=[8080, 9000]),
        # not opted in
        pod("plain", annotations={}, ports=[80]),
        pod("off", annotations={"gpuslo.io/scrape": "false", "gpuslo.io/port": "1"}),
        # another collector's pod
        pod("dcgm-exporter", annotations={"gpuslo.io/scrape": "true",
                                          "gpuslo.io/source": "dcgm", "gpuslo.io/port": "9400"}),
        # opted in but not scrapeable: pending, no IP, another node, bad port
        pod("pending", annotations={**SCRAPE_KV, "gpuslo.io/port": "8000"}, phase="Pending"),
        pod("no-ip", annotations={**SCRAPE_KV, "gpuslo.io/port": "8000"}, ip=None),
        pod("elsewhere", annotations={**SCRAPE_KV, "gpuslo.io/port": "8000"}, node="other"),
        pod("bad-port", annotations={**SCRAPE_KV, "gpuslo.io/port": "http"}),
        # IPv6 pod
        pod("v6", annotations={**SCRAPE_KV, "gpuslo.io/port": "8000"}, ip="fd00::5"),
    ],
}


def test_targets_from_pods_applies_the_opt_in_rules() -> None:
    targets = targets_from_pods(PODS, source="kvcache", node=NODE)
    assert [t.url for t in targets] == [
        "http://10.1.2.3:8000/metrics",
        "http://10.1.2.4:8080/prometheus/metrics",
        "http://[fd00::5]:8000/metrics",
    ]
    assert {t.replica for t in targets} == {"inference/vllm-a", "inference/trtllm-b",
                                            "inference/v6"}
    assert all(t.node == NODE for t in targets)
    dcgm = targets_from_pods(PODS, source="dcgm", node=NODE)
    assert [t.url for t in dcgm] == ["http://10.1.2.3:9400/metrics"]
    assert dict(dcgm[0].meta) == {"namespace": "inference", "pod": "dcgm-exporter"}


def test_pods_url_for_kubelet_and_api_server() -> None:
    assert pods_url("https://10.0.0.7:10250/", NODE, "kubelet") == "https://10.0.0.7:10250/pods"
    assert pods_url("https://kubernetes.default.svc", NODE, "apiserver") == (
        "https://kubernetes.default.svc/api/v1/pods?fieldSelector=spec.nodeName%3Dgpu-node-7")


async def test_sidecar_and_static() -> None:
    side = sidecar_targets("n1", [8000, 8001], path="metrics", replica="me")
    assert [t.url for t in side] == ["http://127.0.0.1:8000/metrics",
                                     "http://127.0.0.1:8001/metrics"]
    combined = CombinedTargets([StaticTargets(side), StaticTargets(
        [ScrapeTarget("http://127.0.0.1:8000/metrics", "dup"), ScrapeTarget("http://x/m", "n")])])
    assert [t.url for t in await combined.targets()] == [
        "http://127.0.0.1:8000/metrics", "http://127.0.0.1:8001/metrics", "http://x/m"]


@dataclass
class Kubelet:
    base: str
    requests: list[dict[str, str]] = field(default_factory=list)
    fail: bool = False


@pytest.fixture
async def kubelet() -> AsyncIterator[Kubelet]:
    """A kubelet-shaped server: ``/pods`` and the API server's pod list."""
    state = Kubelet("")

    async def pods(request: web.Request) -> web.Response:
        state.requests.append({"path": request.path_qs,
                               "auth": request.headers.get("Authorization", "")})
        if state.fail:
            return web.Response(status=500)
        return web.json_response(PODS)

    app = web.Application()
    app.router.add_get("/pods", pods)
    app.router.add_get("/api/v1/pods", pods)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.base = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


async def test_node_local_discovery_from_the_kubelet(kubelet: Kubelet, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    cfg = KvCacheCollectorConfig.model_validate({
        "targets": [{"url": "http://static:1/metrics", "replica": "fixed"}],
        "discovery": {"mode": "kubernetes", "url": kubelet.base, "token_file": str(token),
                      "refresh_s": 5},
    })
    source = target_source(cfg, default_node=NODE, source="kvcache")
    assert source.refresh_s == 5
    found = await source.targets()
    assert [t.url for t in found] == ["http://static:1/metrics", "http://10.1.2.3:8000/metrics",
                                      "http://10.1.2.4:8080/prometheus/metrics",
                                      "http://[fd00::5]:8000/metrics"]
    assert kubelet.requests[-1] == {"path": "/pods", "auth": "Bearer s3cret-token"}
    # The token rotates: the next lookup sends the new one.
    token.write_text("rotated-token-value\n")
    await source.targets()
    assert kubelet.requests[-1]["auth"] == "Bearer rotated-token-value"


async def test_api_server_mode_filters_by_node_and_keeps_last_known_on_failure(
    kubelet: Kubelet, caplog: pytest.LogCaptureFixture
) -> None:
    pods = KubernetesPods(kubelet.base, NODE, "kvcache", api="apiserver",
                          headers=lambda: {"Authorization": "Bearer abc"},
                          redact=lambda s: s.replace("abc", "<redacted>"))
    first = await pods.targets()
    assert kubelet.requests[-1]["path"] == "/api/v1/pods?fieldSelector=spec.nodeName%3Dgpu-node-7"
    assert len(first) == 3
    kubelet.fail = True
    again = await pods.targets()
    assert again == first and pods.failures == 1
    assert "keeping 3 known target(s)" in caplog.text
    assert "abc" not in caplog.text
