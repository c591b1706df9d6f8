"""The server over real HTTP on loopback, with a hand-moved clock."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from sim_helpers import small_spec

from gpuslo.simulator import Fleet, FleetServer, FleetSpec, ManualClock, ServiceSpec, TrainingSpec


async def test_index_pages_faults_and_ceph_readiness() -> None:
    fleet = Fleet(small_spec())
    clock = ManualClock(fleet.t)
    async with FleetServer(fleet, clock) as srv, aiohttp.ClientSession() as http:
        async with http.get(f"{srv.base_url}/targets") as resp:
            index = await resp.json()
        urls = {t["url"] for t in index["targets"]}
        assert {t.url for t in srv.targets()} == urls
        assert {t["source"] for t in index["targets"]} == {
            "dcgm", "rdma", "kubelet", "storage", "kvcache", "prometheus"}
        ceph = next(t.url for t in srv.targets() if t.kind == "ceph")
        async with http.get(ceph) as resp:
            assert resp.status == 503  # the mgr has not collected yet
        clock.advance(60)
        for t in srv.targets():
            async with http.get(t.url) as resp:
                assert resp.status == 200, t
                body = await resp.text()
            if t.kind not in ("kubelet_summary", "diskstats"):
                fams = list(text_string_to_metric_families(body))
                assert fams and all(s.timestamp is not None for f in fams for s in f.samples
                                    if f.name.startswith(("DCGM", "vllm:num")))
        dcgm = next(t.url for t in srv.targets() if t.kind == "dcgm" and t.node == "node-1")
        async with http.post(f"{srv.base_url}/faults",
                             json={"kind": "xid_79", "target": "node-1/gpu0",
                                   "duration_s": 300}) as resp:
            assert resp.status == 201
        async with http.post(f"{srv.base_url}/faults",
                             json={"kind": "xid_79", "target": "node-1/mlx5_0"}) as resp:
            assert resp.status == 400 and "matches none" in (await resp.json())["error"]
        clock.advance(15)
        async with http.get(dcgm) as resp:
            text = await resp.text()
        assert 'gpu="0"' not in text and 'gpu="1"' in text
        async with http.get(f"{srv.base_url}/faults") as resp:
            truth = await resp.json()
        assert truth["faults"][0]["target"] == "node-1/gpu0"


async def test_per_endpoint_ports_and_sysfs_tree(tmp_path: Path) -> None:
    spec = FleetSpec(nodes=1, gpus_per_node=2, ib_ports=1, disks=1, training=None,
                     services=(ServiceSpec("tiny", "vllm", replicas=1),))
    fleet = Fleet(spec)
    clock = ManualClock(fleet.t + 30)
    async with FleetServer(fleet, clock, per_endpoint_ports=True, sysfs_dir=tmp_path) as srv, \
            aiohttp.ClientSession() as http:
        ports = {t.url.split("/")[2] for t in srv.targets()}
        kubelet = {t.url.split("/")[2] for t in srv.targets() if t.kind.startswith("kubelet")}
        assert len(kubelet) == 1  # one kubelet process serves its three paths
        assert len(ports) == len({(t.node, t.kind if not t.kind.startswith("kubelet") else "k")
                                  for t in srv.targets()})
        for t in srv.targets():
            async with http.get(t.url) as resp:
                assert resp.status == 200, t.url
        (ft,) = srv.file_targets()
        data = (ft.sys_root / "class/infiniband/mlx5_0/ports/1/counters/port_xmit_data")
        assert int(data.read_text()) > 0
        assert ft.diskstats.read_text().split()[2] == "nvme0n1"
    assert TrainingSpec().nodes == 2
