"""A Prometheus as a replay source: the same report as replaying its export.

The recorded fleet of :mod:`history_fleet` is written as OpenMetrics,
backfilled with ``promtool tsdb create-blocks-from openmetrics`` into a real
Prometheus (Debian package), and replayed twice over the default catalog: from
the file (:mod:`collectors.history`) and from the Prometheus HTTP API
(:mod:`collectors.prometheus_api`, in chunks that split the span).  Every final
report, alert episode and timeline must be equal.

The transport is tested against the same Prometheus: serving TLS with a
self-signed certificate (refused unless trusted or told to skip the check), and
behind a small proxy that asks for a bearer token or basic auth and can fail
requests, to see retries and errors.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import polars as pl
import pytest
from aiohttp import web
from history_fleet import MINUTES, fleet_series, write_openmetrics
from servers import Server, backfill, free_port, require_binary, start_prometheus
from typer.testing import CliRunner, Result

from gpuslo.collectors.history import iter_exposition_frames, replay_metrics
from gpuslo.collectors.prometheus_api import (
    PrometheusReader,
    PrometheusSourceConfig,
    PrometheusSourceError,
    expand_normalised,
    iter_prometheus_frames,
)
from gpuslo.pipeline.app.cli.main import app
from gpuslo.pipeline.schema import label
from gpuslo.slo.backtest import replay
from gpuslo.slo.catalog import CATALOG_DIR
from gpuslo.slo.rules import series_selectors
from gpuslo.slo.spec import SloSpec, input_metrics, load_specs

pytestmark = pytest.mark.integration
cli = CliRunner()


@pytest.fixture(scope="module")
def specs() -> list[SloSpec]:
    return load_specs([CATALOG_DIR])


@pytest.fixture(scope="module")
def t0() -> datetime:
    # Inside Prometheus' retention, and old enough to be in persisted blocks.
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=6)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory, t0: datetime) -> Path:
    path = tmp_path_factory.mktemp("export") / "fleet.om"
    write_openmetrics(fleet_series(t0), path)
    return path


@pytest.fixture(scope="module")
def tsdb(tmp_path_factory: pytest.TempPathFactory, export: Path) -> Path:
    return backfill(export, tmp_path_factory.mktemp("tsdb") / "data")


def _prometheus(tmp_path_factory: pytest.TempPathFactory, tsdb: Path, web_config: str = "",
                ) -> Server:
    require_binary("prometheus", "prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    # Each server gets its own copy of the blocks (a TSDB is locked by its server).
    subprocess.run(["cp", "-r", str(tsdb), str(work / "data")], check=True)
    if web_config:
        (work / "web.yml").write_text(web_config)
        return start_prometheus_with_web(work)
    return start_prometheus("global:\n  evaluation_interval: 1m\n", work)


def start_prometheus_with_web(work: Path) -> Server:
    """Prometheus serving TLS (``web.yml``); ready when its port answers a handshake."""
    binary = require_binary("prometheus", "prometheus")
    (work / "prometheus.yml").write_text("global:\n  evaluation_interval: 1m\n")
    port = free_port()
    server = Server("prometheus-tls", None, port, work / "prometheus.log")
    with server.log.open("ab") as out:
        server.proc = subprocess.Popen([
            binary, f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
            f"--web.config.file={work / 'web.yml'}", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return server


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, tsdb: Path) -> Iterator[Server]:
    server = _prometheus(tmp_path_factory, tsdb)
    try:
        yield server
    finally:
        server.stop()


def test_selectors_are_exactly_the_series_the_specs_read(specs: list[SloSpec]) -> None:
    sels = series_selectors(specs)
    assert '{__name__="vllm:time_to_first_token_seconds_bucket",le=~"0\\\\.5"}' in sels
    # One selector per metric: the error-only series of request-success is in the total's.
    assert [s for s in sels if "request_success" in s] == [
        '{__name__=~"vllm:request_success_total|vllm:request_success"}']
    assert not any("node=" in s or "entity=" in s for s in sels)
    # A normalised signal is fetched as the upstream series it comes from.
    assert expand_normalised(['{__name__="gpuslo_gpu_temperature_celsius"}']) == [
        '{__name__="DCGM_FI_DEV_GPU_TEMP"}', '{__name__="DCGM_FI_DEV_GPU_TEMP_total"}']


def test_replaying_prometheus_gives_the_report_of_replaying_its_export(
    specs: list[SloSpec], export: Path, prometheus: Server, t0: datetime
) -> None:
    end = t0 + timedelta(minutes=MINUTES)
    metrics = replay_metrics(input_metrics(specs))
    from_file = replay(specs, iter_exposition_frames(export, metrics=metrics))
    # 25-minute chunks: samples at chunk edges must be read once, not twice or never.
    cfg = PrometheusSourceConfig(prometheus.url, chunk=timedelta(minutes=25))
    chunks = list(iter_prometheus_frames(cfg, series_selectors(specs), metrics, t0, end))
    assert len(chunks) == 5
    from_prom = replay(specs, chunks)
    # Every sample read once: the file's, less the buckets no SLO reads (the source asks for
    # the SLOs' bounds only).
    read = pl.concat(iter_exposition_frames(export, metrics=metrics)).filter(
        ~pl.col("metric").str.ends_with("_bucket") | (label("le") == "0.5"))
    assert sum(c.height for c in chunks) == read.height
    assert from_prom.to_dict() == from_file.to_dict()
    assert from_file.alerts and {r.slo_id for r in from_file.final} >= {
        "request-success", "ttft", "gpu-thermal-headroom", "rdma-port-health"}


def test_a_promtool_tsdb_dump_replays_like_the_export(
    specs: list[SloSpec], export: Path, tsdb: Path, tmp_path: Path
) -> None:
    """``promtool tsdb dump`` is how a team exports a Prometheus without its API:
    ``{__name__="x", a="b"} value milliseconds`` lines, no metadata."""
    promtool = require_binary("promtool", "prometheus")
    data = tmp_path / "data"
    subprocess.run(["cp", "-r", str(tsdb), str(data)], check=True)
    (data / "wal").mkdir(exist_ok=True)
    dump = tmp_path / "dump.txt"
    with dump.open("w") as out:
        done = subprocess.run([promtool, "tsdb", "dump", str(data)], stdout=out,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert dump.read_text().startswith("{")
    metrics = replay_metrics(input_metrics(specs))
    from_file = replay(specs, iter_exposition_frames(export, metrics=metrics))
    from_dump = replay(specs, iter_exposition_frames(dump, metrics=metrics))
    assert from_dump.to_dict() == from_file.to_dict()


@pytest.fixture(scope="module")
def tls_prometheus(tmp_path_factory: pytest.TempPathFactory, tsdb: Path,
                   tls_files: tuple[Path, Path]) -> Iterator[Server]:
    cert, key = tls_files
    server = _prometheus(tmp_path_factory, tsdb,
                         f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n")
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{server.port}/-/ready",
                                            context=ctx, timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield server
    finally:
        server.stop()


async def _read(cfg: PrometheusSourceConfig, specs: list[SloSpec], t0: datetime) -> int:
    async with PrometheusReader(cfg) as reader:
        rows = 0
        async for frame in reader.frames(series_selectors(specs), t0,
                                         t0 + timedelta(minutes=30),
                                         metrics=replay_metrics(input_metrics(specs))):
            rows += frame.height
        return rows


async def test_tls_is_verified_unless_trusted_or_skipped(
    specs: list[SloSpec], tls_prometheus: Server, tls_files: tuple[Path, Path], t0: datetime
) -> None:
    url = f"https://127.0.0.1:{tls_prometheus.port}"
    with pytest.raises(PrometheusSourceError, match="TLS certificate not trusted"):
        await _read(PrometheusSourceConfig(url, retries=0), specs, t0)
    trusted = await _read(PrometheusSourceConfig(url, ca_file=str(tls_files[0])), specs, t0)
    skipped = await _read(PrometheusSourceConfig(url, insecure_skip_verify=True), specs, t0)
    assert trusted == skipped > 0


class Proxy:
    """In front of the Prometheus: asks for credentials, and fails the first requests."""

    def __init__(self, target: str, *, token: str | None = None,
                 basic: tuple[str, str] | None = None, fail_first: int = 0) -> None:
        self.target, self.token, self.basic, self.fail_first = target, token, basic, fail_first
        self.seen = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen += 1
        auth = request.headers.get("Authorization", "")
        if self.token is not None and auth != f"Bearer {self.token}":
            return web.Response(status=401, text="unauthorized")
        if self.basic is not None:
            want = base64.b64encode(":".join(self.basic).encode()).decode()
            if auth != f"Basic {want}":
                return web.Response(status=401, text="unauthorized")
        if self.seen <= self.fail_first:
            return web.Response(status=503, text="try later")
        async with aiohttp.ClientSession() as s, s.get(
                self.target + request.path_qs) as resp:
            return web.Response(status=resp.status, body=await resp.read(),
                                content_type=resp.content_type)


@pytest.fixture
async def proxy_url(prometheus: Server) -> AsyncIterator[tuple[Proxy, str]]:
    proxy = Proxy(prometheus.url)
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield proxy, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_bearer_token_and_basic_auth_are_sent_and_refusals_named(
    specs: list[SloSpec], proxy_url: tuple[Proxy, str], t0: datetime
) -> None:
    proxy, url = proxy_url
    proxy.token = "s3cret"
    with pytest.raises(PrometheusSourceError, match=r"HTTP 401.*check the bearer token"):
        await _read(PrometheusSourceConfig(url), specs, t0)
    with_token = await _read(PrometheusSourceConfig(url, bearer_token="s3cret"), specs, t0)
    proxy.token, proxy.basic = None, ("gpuslo", "pw")
    with pytest.raises(PrometheusSourceError, match="HTTP 401"):
        await _read(PrometheusSourceConfig(url, basic_auth=("gpuslo", "wrong")), specs, t0)
    with_basic = await _read(PrometheusSourceConfig(url, basic_auth=("gpuslo", "pw")), specs, t0)
    assert with_token == with_basic > 0


async def test_failures_are_retried_and_a_rejected_query_is_named(
    specs: list[SloSpec], proxy_url: tuple[Proxy, str], t0: datetime
) -> None:
    proxy, url = proxy_url
    proxy.fail_first = 3
    cfg = PrometheusSourceConfig(url, retries=4, backoff_s=0.01)
    async with PrometheusReader(cfg) as reader:
        rows = 0
        async for frame in reader.frames(series_selectors(specs), t0,
                                         t0 + timedelta(minutes=10)):
            rows += frame.height
    assert rows > 0 and reader.retried == 3
    proxy.seen, proxy.fail_first = 0, 100
    with pytest.raises(PrometheusSourceError, match="failed 2 times, last: HTTP 503") as err:
        await _read(PrometheusSourceConfig(url, retries=1, backoff_s=0.01), specs, t0)
    assert err.value.retriable
    proxy.fail_first = 0
    async with PrometheusReader(PrometheusSourceConfig(url, retries=3)) as reader:
        with pytest.raises(PrometheusSourceError, match=r"HTTP 400: .*parse error") as bad:
            async for _ in reader.frames(["{__name__=~"], t0, t0 + timedelta(minutes=10)):
                pass
    assert "{__name__=~[" in str(bad.value) and reader.retried == 0
    assert not bad.value.retriable
    await asyncio.sleep(0)


def _cli_json(tmp_path: Path, name: str, *args: str) -> dict[str, object]:
    out = tmp_path / f"{name}.json"
    result = cli.invoke(app, ["replay", str(CATALOG_DIR), *args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    doc: dict[str, object] = json.loads(out.read_text())
    return doc


def test_the_replay_command_reads_a_prometheus_as_it_reads_the_export(
    export: Path, prometheus: Server, t0: datetime, tmp_path: Path
) -> None:
    """``gpuslo replay --prometheus URL --start --end``: the report of replaying the file."""
    span = ["--start", t0.isoformat(), "--end", (t0 + timedelta(minutes=MINUTES)).isoformat()]
    from_prom = _cli_json(tmp_path, "prom", "--prometheus", prometheus.url, "--chunk", "25m",
                          *span)
    from_file = _cli_json(tmp_path, "file", "--samples", str(export), *span)
    assert from_prom == from_file
    assert from_prom["alerts"] and from_prom["timeline"]


async def test_the_replay_command_sends_credentials_from_files_and_never_prints_them(
    proxy_url: tuple[Proxy, str], t0: datetime, tmp_path: Path
) -> None:
    proxy, url = proxy_url
    proxy.token = "s3cret-token"
    token = tmp_path / "token"
    span = ["--start", t0.isoformat(), "--end", (t0 + timedelta(minutes=20)).isoformat()]

    def run(*args: str) -> Result:
        return cli.invoke(app, ["replay", str(CATALOG_DIR), "--prometheus", url, *span,
                                *args])

    token.write_text("wrong\n")
    refused = await asyncio.to_thread(run, "--bearer-token-file", str(token))
    assert refused.exit_code == 2
    assert "HTTP 401" in refused.stderr and "check the bearer token" in refused.stderr
    assert "wrong" not in refused.output.replace(str(token), "")
    token.write_text("s3cret-token\n")
    ok = await asyncio.to_thread(run, "--bearer-token-file", str(token))
    assert ok.exit_code == 0, ok.output
    assert "s3cret" not in ok.output and "request-success" in ok.stdout
    proxy.token, proxy.basic = None, ("gpuslo", "pw-123")
    password = tmp_path / "password"
    password.write_text("pw-123")
    basic = await asyncio.to_thread(run, "--username", "gpuslo", "--password-file",
                                    str(password))
    assert basic.exit_code == 0, basic.output
    assert basic.stdout == ok.stdout
    missing = await asyncio.to_thread(run, "--bearer-token-file", str(tmp_path / "none"))
    assert missing.exit_code != 0 and str(tmp_path / "none") in missing.stderr


def test_the_replay_command_verifies_tls_against_its_ca_file(
    tls_prometheus: Server, tls_files: tuple[Path, Path], t0: datetime
) -> None:
    url = f"https://127.0.0.1:{tls_prometheus.port}"
    span = ["--start", t0.isoformat(), "--end", (t0 + timedelta(minutes=20)).isoformat()]
    base = ["replay", str(CATALOG_DIR), "--prometheus", url, *span]
    refused = cli.invoke(app, base)
    assert refused.exit_code == 2
    assert "TLS certificate not trusted" in refused.stderr
    trusted = cli.invoke(app, [*base, "--ca-file", str(tls_files[0])])
    assert trusted.exit_code == 0, trusted.output
    skipped = cli.invoke(app, [*base, "--insecure-skip-verify"])
    assert skipped.exit_code == 0 and skipped.stdout == trusted.stdout
