"""Running every ``gpuslo`` command with secrets set, capturing all it shows (shared helpers).

Used by ``tests/pipeline/app/test_cli_secrets_*.py``.  Secrets are set the
ways an operator sets them: in the config file (Alertmanager bearer token,
OTLP header), in ``GPUSLO_*`` variables (Kafka SASL password, receiver
token) and in files (a kubelet token file, a SASL password file).  Each run
captures stdout and stderr (where the log goes, at DEBUG) and every
``/metrics`` page served while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import polars as pl
import typer
import yaml

from gpuslo.pipeline.app.cli.main import app
from gpuslo.pipeline.kafka.broker import free_port
from gpuslo.pipeline.schema import frame_from_rows

GPUSLO = Path(sys.executable).with_name("gpuslo")
REPO = Path(__file__).resolve().parents[1]
SECRETS = {name: f"Sx{name}x{uuid.uuid4().hex[:10]}" for name in (
    "kafka_password", "kafka_password_file", "am_token", "otlp_header", "receiver_token",
    "kubelet_token")}


@dataclass
class Run:
    """One command line, what it should print to prove it ran, and what it printed."""

    name: str
    argv: list[str]
    expect: str  # a text the output must contain
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 60.0
    interrupt: bool = False  # SIGINT once ``expect`` shows (a server without --duration)
    metrics_port: int | None = None  # scrape /metrics while it runs
    output: str = ""
    pages: list[str] = field(default_factory=list)


def closed_port() -> int:
    return free_port()  # free a moment ago, and nobody listens on it


def write(path: Path, tree: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


# An SLO that the samples below burn at 500x its budget, so `aggregate` pages at once
# and has to talk to the (unreachable) Alertmanager.
BURNING_SLO = """
apiVersion: openslo/v1
kind: SLO
metadata: {name: secret-test}
spec:
  service: svc
  indicator:
    metadata: {name: secret-test-sli}
    spec:
      ratioMetric:
        counter: true
        good: {metricSource: {type: gpuslo, spec: {metric: req_good_total}}}
        total: {metricSource: {type: gpuslo, spec: {metric: req_total}}}
  timeWindow: [{duration: 30d, isRolling: true}]
  budgetingMethod: Occurrences
  objectives: [{target: 0.999}]
"""


def burning_samples(minutes: int = 70) -> pl.DataFrame:
    """Counters for the last ``minutes``: half of all requests fail."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    rows = []
    for i in range(minutes + 1):
        ts = now - timedelta(minutes=minutes - i)
        rows += [(ts, "n1", "test", "req_total", "counter", 100.0 * i, "", {}),
                 (ts, "n1", "test", "req_good_total", "counter", 50.0 * i, "", {})]
    return frame_from_rows(rows)


@dataclass
class Setup:
    """Files and addresses shared by the runs of one test."""

    tmp: Path
    env: dict[str, str]  # every secret variable
    env_no_kafka: dict[str, str]  # without the Kafka password (configs that use none)
    working: Path  # plaintext Kafka that works; Alertmanager, OTLP and kubelet unreachable
    aggregating: Path  # working, serving HTTP on metrics_port (the others take any free port)
    unreachable: Path  # SASL_SSL to a closed port, password from GPUSLO_KAFKA__SASL_PASSWORD
    refused: Path  # SCRAM against a broker that knows no users, password from a file
    broken: Path  # not YAML; the secret on the line PyYAML complains about
    invalid: Path  # YAML with a bad value and every secret
    spec: Path
    kubelet_token: Path
    am_url: str
    kubelet_url: str
    metrics_port: int


def setup(tmp: Path, plain: str, sasl: str) -> Setup:
    kubelet_token = tmp / "kubelet-token"
    kubelet_token.write_text(SECRETS["kubelet_token"] + "\n")
    kafka_password_file = tmp / "kafka-password"
    kafka_password_file.write_text(SECRETS["kafka_password_file"] + "\n")
    spec = tmp / "slo.yaml"
    spec.write_text(BURNING_SLO)
    am = f"http://127.0.0.1:{closed_port()}"
    otlp = f"http://127.0.0.1:{closed_port()}"
    kubelet = f"https://127.0.0.1:{closed_port()}"
    metrics = free_port()
    base: dict[str, Any] = {
        "node": "secret-test", "log_level": "DEBUG",
        "alerts": {"alertmanager": {"urls": [am], "bearer_token": SECRETS["am_token"],
                                    "timeout_s": 1, "backoff_max_s": 1,
                                    # No cause is ranked within a run: post at once, so
                                    # the token goes out.
                                    "rca_wait_s": 0}},
        # Commands run three at a time and each serves HTTP: any free port, except the
        # aggregate run whose pages are read (aggregating).
        "exporters": {"prometheus": {"enabled": True, "host": "127.0.0.1", "port": 0},
                      "otlp": {"enabled": True, "endpoint": otlp, "interval_s": 1, "timeout_s": 1,
                               "headers": {"x-api-key": SECRETS["otlp_header"]}}},
        "slo": {"specs": [str(spec)], "checkpoint_dir": str(tmp / "state"),
                "tick_interval_s": 1, "checkpoint_interval_s": 1},
        "consumer": {"poll_timeout_ms": 300, "session_timeout_ms": 6000},
        "collectors": [{"type": "kubelet", "url": kubelet, "token_file": str(kubelet_token),
                        "insecure_skip_verify": True, "interval_s": 1, "timeout_s": 1}],
    }
    broken = tmp / "broken.yaml"
    broken.write_text(f'kafka:\n  sasl_password: "{SECRETS["kafka_password"]}\n  partitions: 2\n')
    return Setup(
        tmp=tmp,
        env={"GPUSLO_KAFKA__SASL_PASSWORD": SECRETS["kafka_password"],
             "GPUSLO_ALERTS__RECEIVER__TOKEN": SECRETS["receiver_token"]},
        env_no_kafka={"GPUSLO_ALERTS__RECEIVER__TOKEN": SECRETS["receiver_token"]},
        working=write(tmp / "working.yaml", {**base, "kafka": {"bootstrap_servers": plain}}),
        aggregating=write(tmp / "aggregating.yaml", {
            **base, "kafka": {"bootstrap_servers": plain},
            "exporters": {**base["exporters"], "prometheus": {
                "enabled": True, "host": "127.0.0.1", "port": metrics}}}),
        unreachable=write(tmp / "unreachable-kafka.yaml", {**base, "kafka": {
            "bootstrap_servers": f"127.0.0.1:{closed_port()}", "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "gpuslo",
            "ssl_insecure_skip_verify": True, "request_timeout_ms": 2000}}),
        refused=write(tmp / "refused-scram.yaml", {**base, "kafka": {
            "bootstrap_servers": sasl, "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "gpuslo",
            "sasl_password_file": str(kafka_password_file), "request_timeout_ms": 2000}}),
        broken=broken,
        invalid=write(tmp / "invalid.yaml", {**base, "kafka": {
            "partitions": 0, "sasl_password": SECRETS["kafka_password"]}}),
        spec=spec, kubelet_token=kubelet_token, am_url=am, kubelet_url=kubelet,
        metrics_port=metrics,
    )


async def execute(run: Run) -> None:
    """Run the command; SIGINT it once ``expect`` shows when it serves until stopped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUSLO_")}
    env.update({"COLUMNS": "200", "NO_COLOR": "1", **run.env})
    proc = await asyncio.create_subprocess_exec(
        str(GPUSLO), *run.argv, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    scraper = asyncio.create_task(scrape(run)) if run.metrics_port else None
    chunks: list[bytes] = []

    async def read() -> None:
        assert proc.stdout is not None
        while data := await proc.stdout.read(65536):
            chunks.append(data)
            if run.interrupt and run.expect.encode() in b"".join(chunks):
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT)

    try:
        await asyncio.wait_for(asyncio.gather(read(), proc.wait()), run.timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        chunks.append(f"\n<killed after {run.timeout_s}s>\n".encode())
    run.output = b"".join(chunks).decode(errors="replace")
    if scraper is not None:
        scraper.cancel()
        await asyncio.gather(scraper, return_exceptions=True)


async def scrape(run: Run) -> None:
    """GET /metrics, the status page and its JSON every half second while the command runs."""
    base = f"http://127.0.0.1:{run.metrics_port}"
    async with aiohttp.ClientSession() as http:
        while True:
            for path in ("/metrics", "/readyz", "/", "/api/v1/slos"):
                try:
                    async with http.get(base + path,
                                        timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        run.pages.append(await resp.text())
                except (aiohttp.ClientError, TimeoutError):
                    pass
            await asyncio.sleep(0.5)


async def run_all(todo: list[Run], parallel: int = 3) -> None:
    gate = asyncio.Semaphore(parallel)

    async def gated(run: Run) -> None:
        async with gate:
            await execute(run)

    await asyncio.gather(*(gated(r) for r in todo))


def assert_no_secret_and_every_run_took_its_path(todo: list[Run]) -> None:
    leaks = [(r.name, name) for r in todo for name, value in SECRETS.items()
             if value in r.output or any(value in page for page in r.pages)]
    assert not leaks, (leaks, {r.name: r.output[-3000:] for r in todo
                               if r.name in dict(leaks)})
    missing = [r.name for r in todo if r.expect not in r.output]
    assert not missing, {r.name: r.output[-2000:] for r in todo if r.name in missing}


def every_command() -> set[str]:
    """The commands ``gpuslo --help`` lists."""
    group = typer.main.get_command(app)
    return set(group.commands)  # type: ignore[attr-defined]


def server_runs(s: Setup) -> list[Run]:
    """Commands that serve or stream: they run for a while, working or failing."""
    w = str(s.working)
    return [
        Run("broker", ["broker", "--port", "0"], "embedded broker listening", s.env,
            interrupt=True),
        Run("collect working", ["collect", "-c", w, "--duration", "4"], s.kubelet_url,
            s.env_no_kafka),
        Run("tail", ["tail", "-c", w, "--duration", "3"], "", s.env_no_kafka),
        Run("anomaly", ["anomaly", "-c", w, "--duration", "4"], "scoring", s.env_no_kafka),
        # Pages at once (the samples burn the SLO) and keeps failing to reach Alertmanager
        # and the OTLP collector with their secrets; /metrics, /readyz and the status page
        # are read meanwhile.
        # 14 s: it also starts root-cause analysis (scikit-learn's import, a third group)
        # while every other command of this list starts beside it on the same cores.
        Run("aggregate", ["aggregate", "-c", str(s.aggregating), "--specs", str(s.spec),
                          "--duration", "14"],
            s.am_url, s.env_no_kafka, metrics_port=s.metrics_port),
        Run("receiver", ["receiver", "-c", w, "--duration", "3"], "receiving", s.env),
        Run("demo", ["demo", "--duration", "8", "--port", str(free_port()), "--metrics-port",
                     str(free_port()), "--alertmanager", s.am_url, "--nodes", "1"], "", s.env),
    ]


def oneshot_runs(s: Setup) -> list[Run]:
    """Commands that answer and exit, and the runs that fail at start."""
    catalog = str(REPO / "slo" / "catalog")
    return [
        Run("version", ["version"], "gpuslo", s.env),
        Run("validate ok", ["validate", str(s.unreachable)], ": ok", s.env),
        Run("validate not YAML", ["validate", str(s.broken)], "not valid YAML", s.env),
        Run("validate bad value", ["validate", str(s.invalid)], "kafka.partitions: must be > 0",
            s.env),
        Run("collect unreachable kafka", ["collect", "-c", str(s.unreachable), "--duration", "2"],
            "cannot", s.env),
        Run("collect refused SCRAM", ["collect", "-c", str(s.refused), "--duration", "2"],
            "refused the SASL authentication", s.env_no_kafka),
        Run("collect not YAML", ["collect", "-c", str(s.broken), "--duration", "1"],
            "not valid YAML", s.env),
        Run("aggregate unreachable kafka", ["aggregate", "-c", str(s.unreachable),
                                            "--duration", "2"], "cannot", s.env),
        Run("scrape", ["scrape", s.kubelet_url + "/metrics/resource", "--token-file",
                       str(s.kubelet_token), "--insecure"], "connect", s.env),
        Run("simulate", ["simulate", "--print-config", "--duration", "1", "--port",
                         str(free_port()), "--nodes", "1"], "collectors", s.env),
        Run("inject", ["inject", "thermal_throttle", "node-1/gpu2", "--url", s.am_url], "",
            s.env),
        Run("rules", ["rules", catalog], "groups", s.env),
        Run("replay", ["replay", catalog, "--samples", str(s.tmp / "no-such-file.parquet")],
            "no-such-file", s.env),
        Run("validate-specs", ["validate-specs", catalog], "ok", s.env),
        Run("dashboards", ["dashboards", "export", str(s.tmp / "dash")], "", s.env),
    ]
