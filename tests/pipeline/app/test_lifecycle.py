"""Probes, SIGTERM and Ctrl-C of the long-running commands, as real processes.

``gpuslo collect`` against a Kafka that is not there yet (not ready, then
ready), and SIGTERM in the middle of a run (exit 0 within the grace period,
every record it produced readable by an independent librdkafka client);
``gpuslo demo`` in a pseudo-terminal given Ctrl-C the way a terminal gives it
(to the whole foreground process group); ``gpuslo receiver`` on the address
it is told.  The aggregate's SIGTERM test is beside its SIGKILL test
(``tests/pipeline/stages/test_stages_sigterm.py``).
"""

from __future__ import annotations

import fcntl
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from servers import http_get

from gpuslo.pipeline.config import KafkaConfig
from gpuslo.pipeline.kafka.broker import EmbeddedBroker, free_port
from gpuslo.pipeline.schema import decode

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
PAGE = ROOT / "tests/fixtures/node_exporter/e2e-output.node_infiniband.excerpt.prom"
COLLECT_GRACE_S = 25.0  # shutdown.collect_scrape_wait_s + collect_flush_s, the defaults


# ---- helpers -----------------------------------------------------------------------------


@pytest.fixture
def pages() -> Iterator[str]:
    """A node_exporter page (a real one, see PROVENANCE.md) at any path of a local server."""
    body = PAGE.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def listen_host() -> str:
    """127.0.0.2 where it is a usable loopback address (Linux), so a test can tell the
    configured address from any other; else 127.0.0.1."""
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
    except OSError:
        return "127.0.0.1"
    return "127.0.0.2"


def gpuslo(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUSLO_")}
    env["COLUMNS"] = "200"
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "gpuslo.pipeline.app.cli.main", *args],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)



def wait_for(cond: Callable[[], Any], proc: subprocess.Popen[bytes], log: Path,
             timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"gpuslo exited ({proc.returncode}) waiting for {what}:\n"
                        f"{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n"
                        f"{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The one sample ``name`` whose labels include ``labels`` (None when absent)."""
    hits = [s.value for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name == name and labels.items() <= s.labels.items()]
    assert len(hits) <= 1, (name, labels, hits)
    return hits[0] if hits else None


def stop_and_wait(proc: subprocess.Popen[bytes], sig: signal.Signals,
                  limit_s: float) -> tuple[int, float]:
    """Signal ``proc``; its exit status and how long it took (fails past ``limit_s``)."""
    started = time.monotonic()
    proc.send_signal(sig)
    try:
        rc = proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        pytest.fail(f"not stopped within {limit_s}s of {sig.name}")
    return rc, time.monotonic() - started


def collect_config(tmp_path: Path, kafka: dict[str, Any], page_urls: list[str], *,
                   host: str, port: int, interval_s: float) -> Path:
    cfg = {
        "node": "node-a",
        "log_level": "WARNING",
        "kafka": {"linger_ms": 5, **kafka},
        "collectors": [{
            "type": "prometheus", "name": "fabric", "source": "node",
            "interval_s": interval_s, "timeout_s": min(interval_s, 2.0),
            "targets": [{"url": u} for u in page_urls],
        }],
        "exporters": {"prometheus": {"host": host, "port": port}},
    }
    path = tmp_path / "collect.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


# ---- gpuslo collect ----------------------------------------------------------------------


def test_collect_is_alive_at_once_and_ready_only_once_kafka_answers(
    tmp_path: Path, pages: str
) -> None:
    broker_port, http_port, host = free_port(), free_port(), listen_host()
    suffix = os.urandom(4).hex()
    config = collect_config(
        tmp_path,
        {"bootstrap_servers": f"127.0.0.1:{broker_port}", "partitions": 1,
         "topics": {"samples": f"life.samples.{suffix}", "dlq": f"life.dlq.{suffix}"}},
        [f"{pages}/node-a/metrics"], host=host, port=http_port, interval_s=0.5)
    log = tmp_path / "collect.log"
    base = f"http://{host}:{http_port}"
    proc = gpuslo(["collect", "--config", str(config)], log)
    broker: EmbeddedBroker | None = None
    try:
        healthz = wait_for(lambda: http_get(f"{base}/healthz"), proc, log, 30, "/healthz")
        assert healthz == (200, "ok\n")
        # No Kafka yet: alive, not ready, and /readyz says why.
        status, body = wait_for(lambda: http_get(f"{base}/readyz"), proc, log, 5, "/readyz")
        assert status == 503
        kafka = json.loads(body)["checks"]["kafka"]
        assert kafka["ok"] is False and f"127.0.0.1:{broker_port}" in kafka["reason"]
        time.sleep(1.5)  # and it stays so, retrying, instead of exiting
        again = http_get(f"{base}/readyz")
        assert again is not None and again[0] == 503 and proc.poll() is None

        broker = EmbeddedBroker(port=broker_port).start()
        status, body = wait_for(lambda: (r := http_get(f"{base}/readyz")) and r[0] == 200 and r,
                                proc, log, 30, "ready once the broker is up")
        checks = json.loads(body)["checks"]
        assert {n for n, c in checks.items() if c["ok"]} == {"lifecycle", "kafka", "targets"}

        # Its own health on /metrics, per target with collector, source and node.
        target = f"{pages}/node-a/metrics"
        text = wait_for(
            lambda: (r := http_get(f"{base}/metrics")) and (sample(
                r[1], "gpuslo_records_produced_total") or 0) > 0 and r[1],
            proc, log, 30, "records produced on /metrics")
        assert sample(text, "gpuslo_scrape_up", collector="fabric", source="node",
                      node="node-a", target=target) == 1.0
        assert (sample(text, "gpuslo_scrape_samples", collector="fabric", target=target)
                or 0) > 0
        assert sample(text, "gpuslo_dropped_total", reason="retry_buffer_full") == 0.0
        assert sample(text, "gpuslo_scrapes_total", collector="fabric") is not None
        if host != "127.0.0.1":  # bound to the configured address, not every address
            assert http_get(f"http://127.0.0.1:{http_port}/healthz") is None

        rc, _ = stop_and_wait(proc, signal.SIGTERM, COLLECT_GRACE_S)
        assert rc == 0, log.read_text(errors="replace")[-3000:]
        assert "stopped (SIGTERM)" in log.read_text()
    finally:
        kill(proc)
        if broker is not None:
            broker.stop()


def test_sigterm_mid_run_exits_0_in_the_grace_period_and_loses_nothing(
    tmp_path: Path, pages: str, kafka_cfg: KafkaConfig
) -> None:
    t = kafka_cfg.topics
    http_port = free_port()
    config = collect_config(
        tmp_path,
        # Batches linger half a second before a record per node goes out: SIGTERM must
        # flush the ones lingering then too.
        {"bootstrap_servers": kafka_cfg.bootstrap_servers, "partitions": 2,
         "topics": {"samples": t.samples, "dlq": t.dlq}, "record_linger_ms": 500},
        [f"{pages}/node-{i}/metrics" for i in range(3)], host="127.0.0.1", port=http_port,
        interval_s=0.2)
    log = tmp_path / "collect.log"
    base = f"http://127.0.0.1:{http_port}"
    proc = gpuslo(["collect", "--config", str(config)], log)
    try:
        wait_for(lambda: (r := http_get(f"{base}/readyz")) and r[0] == 200, proc, log, 40, "ready")

        def produced() -> float:
            r = http_get(f"{base}/metrics")
            return (sample(r[1], "gpuslo_records_produced_total") or 0) if r else 0

        before = wait_for(lambda: (n := produced()) >= 10 and n, proc, log, 30,
                          "10 records produced")
        rc, took = stop_and_wait(proc, signal.SIGTERM, COLLECT_GRACE_S)
    finally:
        kill(proc)
    out = log.read_text(errors="replace")
    assert rc == 0, out[-3000:]
    assert took < COLLECT_GRACE_S
    m = re.search(r"produced (\d+) samples in (\d+) records;.* undelivered: (\d+)", out)
    assert m, out[-3000:]
    samples, records, undelivered = map(int, m.groups())
    assert undelivered == 0 and records >= before
    assert "stopped (SIGTERM)" in out and "producer flushed (0 samples undelivered)" in out

    # An independent client (librdkafka) finds every record and every sample it reported.
    consumer = Consumer({"bootstrap.servers": kafka_cfg.bootstrap_servers,
                         "group.id": f"check-{t.samples}", "enable.auto.commit": False})
    try:
        parts = [TopicPartition(t.samples, p) for p in range(2)]
        ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
        assert sum(ends) == records
        consumer.assign([TopicPartition(t.samples, p, 0) for p in range(2)])
        rows = read = 0
        deadline = time.monotonic() + 30
        while read < records and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            read += 1
            rows += decode(msg.value()).height
    finally:
        consumer.close()
    assert (read, rows) == (records, samples)


# ---- gpuslo demo under a terminal --------------------------------------------------------


def _broker_processes(listener: str) -> list[int]:
    """Processes whose command line holds the broker's listener URL."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if listener.encode() in cmdline and state != "Z":
            out.append(int(entry.name))
    return out


def plain(screen: bytearray) -> str:
    """What the terminal shows, without colour and cursor escapes."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", bytes(screen).decode(errors="replace"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and a Linux pty")
def test_ctrl_c_in_a_terminal_ends_the_demo_within_5s_and_leaves_no_broker() -> None:
    master, slave = os.openpty()

    def controlling_terminal() -> None:  # in the child, after setsid: the pty is its terminal
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUSLO_")}
    env.update(COLUMNS="180", LINES="50", TERM="xterm-256color")
    metrics = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpuslo.pipeline.app.cli.main", "demo", "--port", "0",
         "--metrics-port", str(metrics)],
        cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        preexec_fn=controlling_terminal)
    os.close(slave)
    screen = bytearray()

    def read() -> None:  # keep the terminal drained, as a terminal emulator would
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            screen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    listener = ""
    try:
        deadline = time.monotonic() + 60
        while b"SLO engine" not in screen:
            assert proc.poll() is None, bytes(screen).decode(errors="replace")[-3000:]
            assert time.monotonic() < deadline, bytes(screen).decode(errors="replace")[-3000:]
            time.sleep(0.1)
        m = re.search(r"broker on (127\.0\.0\.1:\d+)", plain(screen))
        assert m, plain(screen)[-2000:]
        listener = m.group(1)
        assert len(_broker_processes(listener)) == 1
        # Running: every check of its /readyz ok (Kafka, targets, both stages' groups).
        while (http_get(f"http://127.0.0.1:{metrics}/readyz") or (0,))[0] != 200:
            assert proc.poll() is None and time.monotonic() < deadline, plain(screen)[-3000:]
            time.sleep(0.2)
        time.sleep(1.0)  # collectors, stages and the live view all at work
        started = time.monotonic()
        os.write(master, b"\x03")  # Ctrl-C: the line discipline signals the foreground group
        try:
            rc = proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pytest.fail("the demo did not end within 5 s of Ctrl-C:\n"
                        + bytes(screen).decode(errors="replace")[-3000:])
        took = time.monotonic() - started
    finally:
        kill(proc)
        reader.join(timeout=2)
        os.close(master)
    text = plain(screen)
    assert rc in (0, 130), text[-3000:]
    assert took < 5.0
    assert "stopped (SIGINT)" in text and f"embedded broker {listener}" in text
    assert "Unable connect" not in text and "Traceback" not in text, text[-4000:]
    assert _broker_processes(listener) == []
    host, port = listener.split(":")
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=1):
        pass


# ---- gpuslo receiver ---------------------------------------------------------------------


def test_receiver_serves_its_probes_on_the_configured_address(tmp_path: Path) -> None:
    host, port = listen_host(), free_port()
    config = tmp_path / "receiver.yaml"
    config.write_text(yaml.safe_dump({"alerts": {"receiver": {
        "host": host, "port": port, "token": "s3cret-token"}}}))
    log = tmp_path / "receiver.log"
    proc = gpuslo(["receiver", "--config", str(config)], log)
    try:
        base = f"http://{host}:{port}"
        healthz = wait_for(lambda: http_get(f"{base}/healthz"), proc, log, 30, "/healthz")
        assert healthz == (200, "ok\n")
        status, body = http_get(f"{base}/readyz") or (0, "")
        assert status == 200 and json.loads(body)["ready"] is True
        assert (http_get(f"{base}/alertmanager/webhook") or (0, ""))[0] == 401  # still guarded
        if host != "127.0.0.1":
            assert http_get(f"http://127.0.0.1:{port}/healthz") is None
        rc, _ = stop_and_wait(proc, signal.SIGTERM, 10)
        assert rc == 0
        assert "stopped (SIGTERM)" in log.read_text()
    finally:
        kill(proc)
