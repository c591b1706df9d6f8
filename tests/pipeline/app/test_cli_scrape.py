"""`gpuslo scrape`: one payload through the parser and a source's mapping, printed."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpuslo.pipeline.app.cli.main import app

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"

DCGM = """\
# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-aaaa",modelName="NVIDIA H100",Hostname="n1"} 41
# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).
# TYPE DCGM_FI_DEV_FB_USED gauge
DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-aaaa",modelName="NVIDIA H100",Hostname="n1"} 1024
"""

VLLM = """\
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="llama"} 0.25
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama"} 3.0
"""


def scrape(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["scrape", *args], env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def json_rows(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_file_with_dcgm_mapping_as_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "dcgm.prom"
    path.write_text(DCGM)
    code, out, err = scrape(str(path), "--source", "dcgm", "--json", "--node", "n1")
    assert code == 0, err
    rows = {(r["metric"], r["entity"]): r for r in json_rows(out)}
    util = rows[("gpuslo_gpu_utilization_ratio", "GPU-aaaa")]
    assert util["value"] == pytest.approx(0.41) and util["normalised"] is True
    assert util["node"] == "n1" and util["source"] == "dcgm"
    assert rows[("gpuslo_gpu_memory_used_bytes", "GPU-aaaa")]["value"] == 1024 * 1024 * 1024
    upstream = rows[("DCGM_FI_DEV_GPU_UTIL", "GPU-aaaa")]
    assert upstream["normalised"] is False and upstream["labels"] == {
        "Hostname": "n1", "UUID": "GPU-aaaa", "gpu": "0", "modelName": "NVIDIA H100"}


def test_malformed_payload_names_the_line_and_exits_non_zero(tmp_path: Path) -> None:
    path = tmp_path / "bad.prom"
    path.write_text('# TYPE a gauge\na{x="1"} 1\na{x="2" 2\n')
    code, _, err = scrape(str(path))
    assert code == 1
    assert "line 3" in err and 'a{x="2" 2' in err


def test_missing_file_and_directory_misuse_fail_cleanly(tmp_path: Path) -> None:
    code, _, err = scrape(str(tmp_path / "nope.prom"))
    assert code == 1 and "cannot read" in err
    code, _, err = scrape(str(tmp_path), "--source", "dcgm")
    assert code == 1 and "only --source rdma" in err


def test_rdma_sysfs_root_storage_diskstats_and_kubelet_summary() -> None:
    code, out, err = scrape(str(FIXTURES / "procfs" / "sys"), "--source", "rdma", "--json")
    assert code == 0, err
    metrics = {r["metric"] for r in json_rows(out)}
    assert "gpuslo_rdma_port_xmit_bytes_total" in metrics
    code, out, err = scrape(str(FIXTURES / "node_exporter" / "proc-diskstats"), "--source",
                            "storage", "--json")
    assert code == 0, err
    rows = json_rows(out)
    assert any(r["metric"] == "diskstats_reads_completed" and r["entity"] == "sda" for r in rows)
    assert any(str(r["metric"]).startswith("gpuslo_disk_") for r in rows)
    summary = FIXTURES / "kubelet" / "stats_summary.metrics-server-types_test.json"
    code, out, err = scrape(str(summary), "--source", "kubelet", "--json")
    assert code == 0, err
    assert any(str(r["metric"]).startswith("kubelet_summary_") for r in json_rows(out))


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/metrics":
            body = VLLM.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_url_with_kvcache_mapping_as_tables(http_server: str) -> None:
    code, out, err = scrape(f"{http_server}/metrics", "--source", "kvcache")
    assert code == 0, err
    assert "2 upstream samples (kvcache)" in out
    assert "normalised signals" in out and "gpuslo_kv_cache_usage_ratio" in out
    assert "engine: vllm" in err


def test_http_error_exits_non_zero(http_server: str) -> None:
    code, _, err = scrape(f"{http_server}/broken")
    assert code == 1 and "HTTP 500" in err
