"""The whole pipeline as separate real processes, for the fault tests.

``gpuslo simulate`` serves a small simulated fleet with a fault scenario;
``gpuslo collect``, ``gpuslo aggregate --stage 1`` (with the anomaly scoring
stage) and ``--stage 2`` (with the ranking of causes) run as their own
processes on one Kafka, as three Deployments would.  A
:class:`Proc` can be SIGKILLed and started again with the same command line.
What reached ``gpuslo.samples`` is read back whole (:func:`read_samples`), so
a test can compute the uninterrupted verdict with the pure engine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from kafka_target import kafka_settings

from gpuslo.pipeline.config import ConsumerConfig, KafkaConfig
from gpuslo.pipeline.kafka.client import SampleConsumer
from gpuslo.slo.alerting import AlertEvaluator, AlertStatus
from gpuslo.slo.budget import Stage2State
from gpuslo.slo.sli import Stage1State
from gpuslo.slo.spec import SloSpec

ROOT = Path(__file__).resolve().parents[3]

WARMUP = timedelta(minutes=2)

# Firing alerts are re-sent every RESEND_S with endsAt 4 x RESEND_S ahead: Alertmanager
# keeps an alert through an outage of stage 2 shorter than that (here 40 s, longer than
# any outage of the tests; by default 4 minutes), and resolves it after a longer one.
RESEND_S = 10.0


def scenario() -> dict[str, Any]:
    """Two nodes of two GPUs, one vLLM model, in real time from now (the samples carry the
    simulator's timestamps, and the SLO stages evaluate on the real clock); node-0's GPU 0
    overheats from the first second of serving to long past the test's end (above 85 C
    within seconds), so its thermal SLO fires and never resolves."""
    return {
        "name": "faults",
        "seed": 17,
        "speed": 1,
        "warmup": f"{WARMUP.total_seconds():g}s",
        "fleet": {
            "start": (datetime.now(UTC) - WARMUP).isoformat(),
            "nodes": 2,
            "gpus_per_node": 2,
            "services": [{"name": "llama", "engine": "vllm", "replicas": 2, "tp": 1, "rps": 20}],
            "training": None,
        },
        "faults": [{"kind": "thermal_throttle", "target": "node-0/gpu0", "at": "0s",
                    "duration": "10h", "intensity": 1.0}],
    }


@dataclass
class Proc:
    """One gpuslo command that a test can kill and start again."""

    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    kills: int = 0

    def start(self) -> Proc:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPUSLO_")}
        with self.log.open("ab") as out:
            out.write(f"\n--- start {self.name}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gpuslo.pipeline.app.cli.main", *self.argv],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no drain, no checkpoint, no commit, no goodbye to the group."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        assert self.proc.returncode == -signal.SIGKILL, self.tail()
        self.kills += 1

    def terminate(self, timeout_s: float = 20.0) -> int:
        """SIGTERM and wait for the drain; the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            pytest.fail(f"{self.name} did not drain within {timeout_s}s:\n{self.tail()}")

    def cleanup(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=10)

    def since_start(self) -> str:
        """What the current run has printed so far."""
        text = self.log.read_text(errors="replace")
        return text[text.rfind(f"--- start {self.name}"):]

    def tail(self, n: int = 3000) -> str:
        try:
            return f"--- {self.name}\n" + self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def start_simulator(tmp_path: Path, interval_s: float, sources: Sequence[str]) -> tuple[
        Proc, list[dict[str, Any]]]:
    """``gpuslo simulate`` of :data:`SCENARIO`; its collector configs for ``sources``."""
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario()))
    out = tmp_path / "collectors.yaml"
    sim = Proc("simulate", ["simulate", "-s", str(path), "--port", "0", "--print-config",
                            "--interval", str(interval_s), "--ground-truth",
                            str(tmp_path / "truth.jsonl")], tmp_path / "simulate.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUSLO_")}
    with out.open("wb") as stdout, sim.log.open("ab") as err:
        sim.proc = subprocess.Popen(
            [sys.executable, "-m", "gpuslo.pipeline.app.cli.main", *sim.argv], cwd=ROOT,
            env=env, stdout=stdout, stderr=err, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            doc = yaml.safe_load(out.read_text()) or {}
        except yaml.YAMLError:
            doc = {}
        if doc.get("collectors") and sim.log.read_text().count("Ctrl-C stops"):
            return sim, [c for c in doc["collectors"] if c["source"] in sources]
        if not sim.alive:
            break
        time.sleep(0.1)
    sim.cleanup()
    pytest.fail(f"simulator did not serve:\n{sim.tail()}")


def write_config(tmp_path: Path, kafka_cfg: KafkaConfig, collectors: list[dict[str, Any]],
                 alertmanager: str | None, *, extra_kafka: dict[str, Any] | None = None,
                 consumer: dict[str, Any] | None = None) -> Path:
    """One config for every process: each runs its part of it."""
    cfg = {
        "log_level": "INFO",
        "kafka": {**kafka_settings(kafka_cfg), "partitions": 2, "linger_ms": 5,
                  "record_linger_ms": 200, "request_timeout_ms": 3000,
                  **(extra_kafka or {})},
        "consumer": {"max_records": 4, "poll_timeout_ms": 200, "session_timeout_ms": 6000,
                     **(consumer or {})},
        "slo": {"checkpoint_dir": str(tmp_path / "state"), "checkpoint_interval_s": 0,
                "tick_interval_s": 0.3,
                "stage1_group_id": f"{kafka_cfg.client_id}.sli",
                "stage2_group_id": f"{kafka_cfg.client_id}.slo"},
        # The scoring stage runs in the stage-1 process, the ranking in stage 2's.
        "anomaly": {"group_id": f"{kafka_cfg.client_id}.anomaly", "checkpoint_interval_s": 0},
        "collectors": collectors,
        # Each process its own HTTP port.
        "exporters": {"prometheus": {"enabled": True, "host": "127.0.0.1", "port": 0}},
        # Causes are rarely ranked in a run this short: a new alert waits 2 s for them
        # (the same hold as the default minute, kills included, within the test's time).
        "alerts": {"alertmanager": {"urls": [alertmanager] if alertmanager else [],
                                    "resend_interval_s": RESEND_S, "rca_wait_s": 2.0}},
        "shutdown": {"collect_scrape_wait_s": 1.0, "collect_flush_s": 5.0,
                     "aggregate_grace_s": 10.0},
    }
    path = tmp_path / "gpuslo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def pipeline_procs(tmp_path: Path, config: Path, spec_files: Sequence[Path],
                   report: Path) -> dict[str, Proc]:
    specs = [a for s in spec_files for a in ("--specs", str(s))]
    return {
            "collect": Proc("collect", ["collect", "--config", str(config)],
                            tmp_path / "collect.log"),
            "stage1": Proc("stage1", ["aggregate", "--stage", "1", "--config", str(config), *specs],
                           tmp_path / "stage1.log"),
            "stage2": Proc("stage2", ["aggregate", "--stage", "2", "--config", str(config),
                                      "--report-json", str(report), *specs],
                           tmp_path / "stage2.log"),
    }


async def read_samples(kafka_cfg: KafkaConfig, bootstrap: str | None = None) -> pl.DataFrame:
    """Every sample record on the samples topic, decoded (a fresh group reads from the start)."""
    cfg = ConsumerConfig(max_records=1000, poll_timeout_ms=300, session_timeout_ms=6000,
                         auto_offset_reset="earliest", group_id=f"read-back-{uuid.uuid4().hex}")
    frames: list[pl.DataFrame] = []
    async with SampleConsumer(kafka_cfg, cfg, [kafka_cfg.topics.samples],
                              bootstrap_servers=bootstrap) as consumer:
        deadline = time.monotonic() + 20
        while True:
            assert time.monotonic() < deadline, (
                f"samples topic not read within 20 s: assigned {consumer.assignment()}, "
                f"{await consumer.lag()} records behind")
            got = await consumer.poll()
            frames += [b.frame for b in got if b.frame is not None]
            if not got and consumer.assignment() and await consumer.lag() == 0:
                break
    return pl.concat(frames) if frames else pl.DataFrame()


async def log_ends(kafka_cfg: KafkaConfig, topic: str, partitions: Sequence[int],
                   bootstrap: str | None = None) -> dict[int, int]:
    """The log end offset of each of ``partitions`` of ``topic``."""
    cfg = ConsumerConfig(session_timeout_ms=6000, group_id=f"read-back-{uuid.uuid4().hex}")
    async with SampleConsumer(kafka_cfg, cfg, [topic], bootstrap_servers=bootstrap) as consumer:
        return await consumer.end_offsets(topic, partitions)


def verdict(specs: Sequence[SloSpec], samples: pl.DataFrame,
            at: datetime) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The pure engine over every sample once, at ``at``: canonical reports, firing alerts'
    labels (a fresh evaluator fires a breach at once: ``alertAfter`` is 0)."""
    s1, s2 = Stage1State(specs), Stage2State(specs)
    s2.apply(s1.apply(samples.sort("ts"), partition=0))
    reports = s2.report(at)
    alerts = AlertEvaluator(specs).evaluate(reports, at)
    return (canonical([r.to_dict() for r in reports]),
            [a.labels() for a in alerts if a.status is AlertStatus.FIRING])


def canonical(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(json.dumps(reports))
    return sorted(out, key=lambda r: json.dumps(r, sort_keys=True))


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc


def wait_until(cond: Callable[[], Any], procs: Sequence[Proc], timeout_s: float,
               what: str) -> Any:
    """Poll ``cond``; fail with every log when a process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        dead = [p for p in procs if p.proc is not None and not p.alive]
        if dead or time.monotonic() > deadline:
            why = f"{dead[0].name} exited" if dead else f"timed out after {timeout_s}s"
            pytest.fail(f"{why} waiting for {what}:\n" + "\n".join(p.tail() for p in procs))
        time.sleep(0.1)


@dataclass
class Webhook:
    """An HTTP endpoint recording every Alertmanager notification (the pager)."""

    notifications: list[dict[str, Any]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> Webhook:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.notifications.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert of every notification, in arrival order."""
        return [a for n in list(self.notifications) for a in n.get("alerts", [])]


def alertmanager_config(webhook: str) -> str:
    """One group per alert, notified at once, resolved ones too, never repeated in a run."""
    return yaml.safe_dump({
        "route": {"receiver": "pager", "group_by": ["..."], "group_wait": "0s",
                  "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "pager", "webhook_configs": [
            {"url": webhook, "send_resolved": True}]}],
    })
