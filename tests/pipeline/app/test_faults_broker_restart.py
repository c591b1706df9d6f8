"""The embedded broker killed and started again on its port while the pipeline runs.

The broker keeps its logs in memory, so it comes back empty: topics, records and
committed offsets are gone.  That loss is the one allowed, and it must be seen:
each stage finds its partitions' logs replaced (a log end below what it has
applied, or another record at its position), counts a ``log_reset`` in
``gpuslo_consumer_recoveries_total`` and reads the new log from its start.  The
collector keeps the batches the dead broker did not acknowledge and sends them
again; topics come back; the stages resume.

So that the only records lost with the broker are none (and the result can be
exact), the collector is paused (SIGSTOP) until stage 2 has reported every
sample so far, the broker is killed, the collector resumed (its sends now
fail and are kept), and the broker restarted on the same port.  The final
reports must then equal the pure engine's verdict over the samples read back
before the kill plus those of the new log.

Without the progress watchdog this test should hang (not yet checked by a run
with ``StageRunner._watch`` returning at once): stage 1 would skip the new log's
records as "already applied" (their offsets restart at 0, below its
checkpointed position), stage 2 would never see another partial, and
``wait_until`` would time out on "stage 2 to report every sample after the
restart".  With it, the runs log one ``log_reset`` per partition in both
stages within seconds of the restart.

What made this test fail about one run in three (found from a failing run's logs
and checkpoints): the ``request-success`` partials all go to one ``sli``
partition, and stage 1 emits one only when a counter moved, so before the kill
stage 2 had applied just 2 to 5 records there (the thermal SLO's partition: 30
or so).  Its consumer, recreated while the broker was down, took 12 s to rejoin
the group on the new broker; by then stage 1 had written more partials to that
partition of the new log than the old position, so its log end was not below
what stage 2 had applied, no reset was seen, the new log's first records were
skipped as "already applied" and its later ones applied: stage 2 reported 308
requests where the verdict had 632.  (The runs that ended a thermal minute short
were presumably the same on the thermal SLO's partition; not seen again.)  Now a
stage resumes an assigned partition at the record it applied last and checks, by
a fingerprint of that record kept in the checkpoint, that the log still holds it
there; a different record (or a position that goes back) is a log reset, counted
and read from the start.  ``tests/pipeline/stages/test_stages_log_reset.py``
proves that case alone (checked to fail without the check); here, whichever of
the two ways finds the reset first, the final reports must equal the verdict
exactly.

Also found on the way: the embedded broker (Tansu 0.6.0) cannot serve what an
aiokafka producer that lived through its restart writes afterwards (reproduced
with aiokafka alone), so a producer is replaced after a failed send and, in a
stage, after a log reset; the outage here outlasts the producer's send limit
so that the collector's sends fail.
"""

from __future__ import annotations

import asyncio
import re
import signal
import urllib.request
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest
from kafka_target import new_suffix, per_test_config
from pipeline_processes import (
    canonical,
    pipeline_procs,
    read_json,
    read_samples,
    start_simulator,
    verdict,
    wait_until,
    write_config,
)

from gpuslo.pipeline.config import KafkaConfig
from gpuslo.pipeline.kafka.broker import EmbeddedBroker
from gpuslo.pipeline.kafka.client import ensure_topics
from gpuslo.slo.catalog import CATALOG_DIR
from gpuslo.slo.spec import load_specs

pytestmark = pytest.mark.integration

SPEC_FILES = [CATALOG_DIR / "request-success.yaml", CATALOG_DIR / "gpu-thermal-headroom.yaml"]
# What Tansu gives a topic it creates on first use (a client asking for a missing
# topic): the test's topics have it from the start, so a key keeps its partition.
PARTITIONS = 4
REQUEST_TIMEOUT_MS = 1000  # a send fails after twice this
DOWN_S = 3.0  # the collector scrapes on and fails to send this long
AFTER_S = 6.0  # of collection after the restart


def recoveries(log: str, reason: str) -> float:
    """``gpuslo_consumer_recoveries_total{reason}`` summed, from a process's /metrics."""
    found = re.findall(r"/metrics, /healthz, /readyz on\s+(http://[\d.:]+)", log)
    assert found, log
    with urllib.request.urlopen(found[-1] + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(v) for v in re.findall(
        rf'^gpuslo_consumer_recoveries_total{{[^}}]*reason="{reason}"[^}}]*}} (\S+)$',
        text, re.M))


async def test_broker_restart_loses_only_its_memory_and_every_stage_resumes(
    external_cluster: KafkaConfig | None, tmp_path: Path
) -> None:
    if external_cluster is not None:
        pytest.skip("kills the embedded broker (a real cluster is configured)")
    specs = load_specs(SPEC_FILES)
    broker = EmbeddedBroker().start()
    sim = None
    procs = {}
    try:
        kafka_cfg = per_test_config(
            KafkaConfig(bootstrap_servers=broker.bootstrap_servers), new_suffix(),
            partitions=PARTITIONS, linger_ms=5)
        t = kafka_cfg.topics
        await ensure_topics(kafka_cfg, [t.samples, t.sli, t.dlq])
        sim, collectors = start_simulator(tmp_path, 0.5, ("dcgm", "kvcache"))
        report = tmp_path / "report.json"
        config = write_config(tmp_path, kafka_cfg, collectors, None,
                              extra_kafka={"partitions": PARTITIONS,
                                           "request_timeout_ms": REQUEST_TIMEOUT_MS},
                              consumer={"stall_timeout_s": 3.0})
        procs = pipeline_procs(tmp_path, config, SPEC_FILES, report)
        everyone = [sim, *procs.values()]
        for p in procs.values():
            p.start()
        wait_until(lambda: (d := read_json(report)) and d["reports"], everyone, 30,
                   "the first reports")
        await asyncio.sleep(2.0)

        # Pause the collector and let the stages report everything so far.
        collect = procs["collect"]
        assert collect.proc is not None
        collect.proc.send_signal(signal.SIGSTOP)
        before = (await read_samples(kafka_cfg)).unique()

        last: dict[str, object] = {}

        def reports_all(samples: pl.DataFrame) -> bool:
            doc = read_json(report)
            if doc is None or doc["evaluated_at"] is None:
                return False
            at = datetime.fromisoformat(doc["evaluated_at"])
            got, want = canonical(doc["reports"]), verdict(specs, samples, at)[0]
            last["diff"] = [(g, w) for g, w in zip(got, want, strict=False) if g != w][:2]
            return got == want

        wait_until(lambda: reports_all(before), everyone, 30,
                   "stage 2 to report every sample before the restart")

        broker.stop()
        collect.proc.send_signal(signal.SIGCONT)
        await asyncio.sleep(DOWN_S)
        broker.start()  # same port, empty
        await asyncio.sleep(AFTER_S)
        assert collect.terminate() == 0, collect.tail()
        out = collect.since_start()
        assert re.search(r"undelivered: 0\b", out), out

        after = (await read_samples(kafka_cfg)).unique()
        assert after.height > 0
        everything = pl.concat([before, after]).unique()
        try:
            wait_until(lambda: reports_all(everything), [sim, procs["stage1"], procs["stage2"]],
                       30, "stage 2 to report every sample after the restart")
        except pytest.fail.Exception:
            print("last difference (reported, verdict):", last)
            raise
        for name in ("stage1", "stage2"):
            assert recoveries(procs[name].since_start(), "log_reset") >= 1, procs[name].tail()
    finally:
        for p in [*procs.values(), *([sim] if sim else [])]:
            p.cleanup()
        broker.stop()
