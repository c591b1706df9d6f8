"""kubelet: /metrics/resource and /stats/summary real captures, cAdvisor filtering,
token rotation and redaction, and TLS against a local HTTPS server."""

# Exposition payloads below are kept one sample per line, as served.
# ruff: noqa: E501

from __future__ import annotations

import json
import logging
import os
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import polars as pl
import pytest
from aiohttp import web

from gpuslo.collectors import kubelet
from gpuslo.collectors.normalise import default_parse

FIXTURES = Path(__file__).parent.parent / "fixtures"
TS = 1_700_000_000_000


def parsed(text: str) -> pl.DataFrame:
    return default_parse(text, node="kind-node", source="kubelet", scrape_ts_ms=TS)


def rows_of(frame: pl.DataFrame, metric: str, entity: str) -> pl.DataFrame:
    return frame.filter((pl.col("metric") == metric) & (pl.col("entity") == entity))


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp() * 1000)


# ---------------------------------------------------------------- /metrics/resource


def test_metrics_resource_capture_keeps_sample_timestamps_and_maps_usage() -> None:
    text = (FIXTURES / "kubelet" / "metrics_resource.metrics-server-client_test.prom").read_text()
    out = kubelet.map_resource(parsed(text))
    e = "kube-system/coredns-558bd4d5db-4dpjz/coredns"
    # container_cpu_usage_seconds_total{...coredns-558bd4d5db-4dpjz} 4.710169 1633253812125
    cpu = rows_of(out, "gpuslo_container_cpu_usage_seconds_total", e)
    assert cpu["value"].to_list() == [4.710169]
    assert cpu["ts"].dt.epoch("ms").to_list() == [1633253812125]
    # node_cpu_usage_seconds_total 357.35491 1633253809720: node-level entity = node name
    node = rows_of(out, "gpuslo_node_cpu_usage_seconds_total", "kind-node")
    assert node["value"].to_list() == [357.35491]
    assert node["ts"].dt.epoch("ms").to_list() == [1633253809720]
    pod = rows_of(out, "gpuslo_pod_cpu_usage_seconds_total", "kube-system/coredns-558bd4d5db-4dpjz")
    assert pod["value"].to_list() == [4.67812]
    assert out.filter(pl.col("metric") == "gpuslo_container_memory_working_set_bytes").height == 70


# ---------------------------------------------------------------- /metrics/cadvisor


def test_raw_cadvisor_fixture_keeps_ms_timestamps_and_unlabelled_series() -> None:
    text = (FIXTURES / "cadvisor" / "prometheus_metrics").read_text()
    frame = parsed(text)
    out, dropped = kubelet.map_cadvisor(frame)
    assert dropped == 0  # raw cAdvisor has no kubelet container label to filter on
    cpu = out.filter(pl.col("metric") == "gpuslo_container_cpu_usage_seconds_total")
    # per-CPU series cpu00..cpu03: 2e-09+3e-09+4e-09+5e-09 core-seconds, at 1395066363000 ms
    assert cpu["value"].sum() == pytest.approx(14e-9)
    assert set(cpu["ts"].dt.epoch("ms")) == {1395066363000}
    assert set(cpu["entity"]) == {"testcontainer"}  # cgroup id when there are no pod labels


KUBELET_CADVISOR = """# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container="",cpu="total",id="/kubepods.slice",image="",name="",namespace="",pod=""} 900.5 1700000000000
container_cpu_usage_seconds_total{container="",cpu="total",id="/kubepods.slice/kubepods-burstable.slice",image="",name="",namespace="",pod=""} 600.25 1700000000000
container_cpu_usage_seconds_total{container="",cpu="total",id="/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice",image="",name="",namespace="ml",pod="vllm-0"} 500 1700000000000
container_cpu_usage_seconds_total{container="",cpu="total",id="/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-aaa.scope",image="registry.k8s.io/pause:3.9",name="aaa",namespace="ml",pod="vllm-0"} 0.02 1700000000000
container_cpu_usage_seconds_total{container="vllm",cpu="total",id="/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-bbb.scope",image="vllm/vllm-openai:v0.9",name="bbb",namespace="ml",pod="vllm-0"} 480.5 1700000001234
container_cpu_usage_seconds_total{container="POD",cpu="total",id="/docker/ccc",image="k8s.gcr.io/pause:3.1",name="k8s_POD_old",namespace="ml",pod="old-0"} 0.01 1700000000000
# TYPE container_network_receive_bytes_total counter
container_network_receive_bytes_total{container="",id="/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice",image="",interface="eth0",name="",namespace="ml",pod="vllm-0"} 999 1700000000000
container_network_receive_bytes_total{container="",id="/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-aaa.scope",image="registry.k8s.io/pause:3.9",interface="eth0",name="aaa",namespace="ml",pod="vllm-0"} 123456 1700000000000
# TYPE machine_cpu_cores gauge
machine_cpu_cores{boot_id="b",machine_id="m",system_uuid="s"} 96
"""


def test_kubelet_cadvisor_drops_pod_qos_and_pause_series_so_nothing_counts_twice() -> None:
    out, dropped = kubelet.map_cadvisor(parsed(KUBELET_CADVISOR))
    cpu = out.filter(pl.col("metric") == "gpuslo_container_cpu_usage_seconds_total")
    # Only the real container survives: 480.5, with its own ms timestamp.
    assert cpu.select("entity", "value").rows() == [("ml/vllm-0/vllm", 480.5)]
    assert cpu["ts"].dt.epoch("ms").to_list() == [1700000001234]
    # Pod network comes from the sandbox only (not also from the pod cgroup).
    net = out.filter(pl.col("metric") == "gpuslo_pod_network_receive_bytes_total")
    assert net.select("entity", "value").rows() == [("ml/vllm-0", 123456.0)]
    # root, QoS, pod cgroup, pause (containerd), POD (dockershim) cpu + pod-cgroup net
    assert dropped == 6
    assert out.filter(pl.col("metric") == "machine_cpu_cores")["entity"].to_list() == ["kind-node"]
    without_usage, _ = kubelet.map_cadvisor(parsed(KUBELET_CADVISOR), with_usage=False)
    assert "gpuslo_container_cpu_usage_seconds_total" not in set(without_usage["metric"])


# ---------------------------------------------------------------- /stats/summary


def summary_fixture() -> dict:
    return json.loads((FIXTURES / "kubelet" / "stats_summary.metrics-server-types_test.json")
                      .read_text())


def test_stats_summary_capture_by_hand() -> None:
    res = kubelet.summary_to_frame(summary_fixture(), node="kind-node", scrape_ts_ms=TS)
    assert res.errors == ()
    out = kubelet.map_summary(res)
    node = "kind-node"
    # node.cpu.usageCoreNanoSeconds 519978197128 ns = 519.978197128 core-seconds,
    # stamped with the cpu block's own time 2020-04-16T20:25:28Z
    cpu = rows_of(out, "gpuslo_node_cpu_usage_seconds_total", node)
    assert cpu["value"].to_list() == [pytest.approx(519.978197128)]
    assert cpu["ts"].dt.epoch("ms").to_list() == [ms("2020-04-16T20:25:28")]
    assert rows_of(out, "gpuslo_node_memory_working_set_bytes", node)["value"].to_list() == [
        1417551872]
    # node.fs: used 108749709312 of 500684595200 bytes
    assert rows_of(out, "gpuslo_node_fs_used_bytes", node)["value"].to_list() == [108749709312]
    # pod "all-fields": container cpu 29328792 ns at 20:25:30, pod cpu 54096725 ns at 20:25:24
    e = "default/all-fields/container"
    c = rows_of(out, "gpuslo_container_cpu_usage_seconds_total", e)
    assert c["value"].to_list() == [pytest.approx(0.029328792)]
    assert c["ts"].dt.epoch("ms").to_list() == [ms("2020-04-16T20:25:30")]
    p = rows_of(out, "gpuslo_pod_cpu_usage_seconds_total", "default/all-fields")
    assert p["ts"].dt.epoch("ms").to_list() == [ms("2020-04-16T20:25:24")]
    # rootfs block has its own time (20:25:26), different from cpu's
    rootfs = rows_of(out, "gpuslo_container_rootfs_used_bytes", e)
    assert rootfs["value"].to_list() == [24576]
    assert rootfs["ts"].dt.epoch("ms").to_list() == [ms("2020-04-16T20:25:26")]
    # system container "kubelet" is its own entity
    assert rows_of(out, "kubelet_summary_cpu_usageCoreNanoSeconds",
                   "kind-node/kubelet")["value"].to_list() == [183912297212]
    # network counters are counters
    rx = rows_of(out, "kubelet_summary_network_rxBytes", node)
    assert rx["kind"].to_list() == ["counter"] and rx["value"].to_list() == [9848384]


def test_stats_summary_missing_fields_are_simply_absent() -> None:
    res = kubelet.summary_to_frame(summary_fixture(), node="kind-node", scrape_ts_ms=TS)
    out = kubelet.map_summary(res)
    cpu = out.filter(pl.col("metric") == "gpuslo_container_cpu_usage_seconds_total")
    wss = out.filter(pl.col("metric") == "gpuslo_container_memory_working_set_bytes")
    cpu_pods = {e.split("/")[1] for e in cpu["entity"]}
    wss_pods = {e.split("/")[1] for e in wss["entity"]}
    assert "no CPU" not in cpu_pods and "no usageCoreNanoSeconds" not in cpu_pods
    assert "zero usageCoreNanoSeconds" in cpu_pods  # zero is a value, not a gap
    assert "no memory" not in wss_pods and "no workingSetBytes" not in wss_pods
    assert "zero workingSetBytes" in wss_pods


def test_stats_summary_malformed_parts_are_reported_and_the_rest_collected() -> None:
    data = summary_fixture()
    data["pods"].append({"podRef": {"namespace": "default"}, "cpu": {"usageNanoCores": 1}})
    data["pods"].append("not an object")
    data["pods"][0]["memory"]["usageBytes"] = "lots"
    data["pods"][0]["cpu"]["time"] = "yesterday"
    del data["node"]["memory"]["time"]
    res = kubelet.summary_to_frame(data, node="kind-node", scrape_ts_ms=TS)
    text = "\n".join(res.errors)
    assert "pods[7]: no podRef.name" in text
    assert "pods[8]: expected an object" in text
    assert "pods[default/all-fields].memory.usageBytes: not a number" in text
    assert "pods[default/all-fields].cpu.time: unparseable" in text
    assert res.untimed_blocks == 2  # the bad time and the missing time
    out = kubelet.map_summary(res)
    mem = rows_of(out, "gpuslo_node_memory_working_set_bytes", "kind-node")
    assert mem["ts"].dt.epoch("ms").to_list() == [TS]  # no time -> scrape time
    assert rows_of(out, "gpuslo_pod_cpu_usage_seconds_total", "default/all-fields").height == 1
    with pytest.raises(ValueError, match="not JSON"):
        kubelet.summary_to_frame("{", node="n", scrape_ts_ms=TS)
    with pytest.raises(ValueError, match="expected an object"):
        kubelet.summary_to_frame("[]", node="n", scrape_ts_ms=TS)
    empty = kubelet.summary_to_frame({}, node="n", scrape_ts_ms=TS)
    assert empty.frame.height == 0 and empty.errors == ()


# ---------------------------------------------------------------- token and redaction

TOKEN_A = "eyJhbGciOiJSUzI1NiJ9.tokenA.sig"
TOKEN_B = "eyJhbGciOiJSUzI1NiJ9.tokenB.sig"


def test_token_file_is_reread_when_it_rotates(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN_A + "\n")
    now = [0.0]
    tok = kubelet.BearerTokenFile(path, max_age_s=60.0, clock=lambda: now[0])
    assert tok.get().reveal() == TOKEN_A
    # Rotation the way the kubelet does it: a new file swapped in (new inode).
    new = tmp_path / "token.new"
    new.write_text(TOKEN_B)
    os.replace(new, path)
    assert tok.get().reveal() == TOKEN_B
    assert tok.reloads == 2
    # A same-stat rewrite is still caught after max_age_s.
    st = os.stat(path)
    path.write_text(TOKEN_A.replace("A", "C"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    now[0] = 61.0
    assert tok.get().reveal() == TOKEN_A.replace("A", "C")


def test_token_errors_name_the_path_never_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "token"
    with pytest.raises(kubelet.TokenError, match="cannot stat token file"):
        kubelet.BearerTokenFile(path).get()
    path.write_text("  \n")
    with pytest.raises(kubelet.TokenError, match="is empty"):
        kubelet.BearerTokenFile(path).get()
    path.write_text(TOKEN_A)
    tok = kubelet.BearerTokenFile(path)
    secret = tok.get()
    path.unlink()
    with caplog.at_level(logging.WARNING):
        assert tok.get() == secret  # keeps serving the last good token
    assert str(path) in caplog.text and TOKEN_A not in caplog.text
    assert TOKEN_A not in repr(secret) and TOKEN_A not in f"{secret}" and TOKEN_A not in str(tok)


def test_redact() -> None:
    s = kubelet.Secret(TOKEN_A)
    assert kubelet.redact(f"header Authorization: Bearer {TOKEN_A} x", [s]) == (
        "header Authorization: Bearer <redacted> x")
    assert kubelet.redact(f"... {TOKEN_A} ...", [s]) == "... <redacted> ..."
    assert kubelet.redact("Bearer other-token", []) == "Bearer <redacted>"


# ---------------------------------------------------------------- TLS fetch


@pytest.fixture
async def kubelet_server(tls_files: tuple[Path, Path]) -> AsyncIterator[tuple[str, list[str]]]:
    cert, key = tls_files
    seen: list[str] = []

    async def metrics(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        seen.append(auth)
        if not auth.startswith("Bearer "):
            return web.Response(status=401)
        return web.Response(text="node_cpu_usage_seconds_total 1.5 1700000000000\n")

    app = web.Application()
    app.router.add_get("/metrics/resource", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}/metrics/resource", seen
    finally:
        await runner.cleanup()


async def test_tls_verification_with_ca_without_ca_and_insecure(
    kubelet_server: tuple[str, list[str]], tls_files: tuple[Path, Path], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, seen = kubelet_server
    cert, _ = tls_files
    token_path = tmp_path / "token"
    token_path.write_text(TOKEN_A)
    token = kubelet.BearerTokenFile(token_path)
    async with aiohttp.ClientSession() as session:
        body = await kubelet.fetch(session, url, token=token,
                                   ssl_context=kubelet.make_ssl_context(cert))
        assert body.startswith(b"node_cpu_usage_seconds_total")
        assert seen[-1] == f"Bearer {TOKEN_A}"

        with caplog.at_level(logging.DEBUG), pytest.raises(kubelet.KubeletFetchError) as err:
            await kubelet.fetch(session, url, token=token,
                                ssl_context=kubelet.make_ssl_context(None))
        assert err.value.reason == "tls" and not err.value.retriable
        assert "CA bundle" in str(err.value) and "insecure" in str(err.value)
        assert TOKEN_A not in str(err.value) and err.value.__cause__ is None

        body = await kubelet.fetch(session, url, token=token,
                                   ssl_context=kubelet.make_ssl_context(insecure=True))
        assert body.endswith(b"1700000000000\n")

        # Rotation: the next request carries the new token.
        new = tmp_path / "token.new"
        new.write_text(TOKEN_B)
        os.replace(new, token_path)
        await kubelet.fetch(session, url, token=token, ssl_context=kubelet.make_ssl_context(cert))
        assert seen[-1] == f"Bearer {TOKEN_B}"

        with pytest.raises(kubelet.KubeletFetchError) as err401:
            await kubelet.fetch(session, url, token=None,
                                ssl_context=kubelet.make_ssl_context(cert))
        assert err401.value.reason == "http_401"
    assert TOKEN_A not in caplog.text and TOKEN_B not in caplog.text
