"""The whole pipeline as separate processes, each SIGKILLed at random points and restarted.

``gpuslo collect``, ``gpuslo aggregate --stage 1`` (which also runs the
anomaly scoring stage) and ``--stage 2`` (which also ranks causes) run as
three processes over a simulated fleet whose GPU overheats (its thermal SLO
pages), with a real Alertmanager paging a webhook.  Each process is killed
twice at seeded random moments (no drain, no checkpoint, no commit) and
started again.  Then, on the samples that really reached ``gpuslo.samples``:

* the final reports equal the pure engine's verdict over every sample once
  (what an uninterrupted run gives): nothing lost, no sample counted twice
  (a duplicated partial or a re-applied record would change a count);
* every alert the verdict says is firing is active in Alertmanager (none
  missed);
* Alertmanager was never sent an alert that the verdict does not fire, never
  resolved one that is still firing, and paged each with one start time (a
  restarted stage 2 restores its alert states: it does not page anew);
* the scoring stage, killed with stage 1, resumed from its checkpoints and
  scored every record of the samples topic (its checkpoints reach the log end
  of each partition).  Digests need a closed minute, which this run need not
  reach: scoring restored from a checkpoint is compared with the pure scorer
  in tests/pipeline/stages/test_anomaly_stage.py.

What a killed collector had scraped but not produced is lost: the verdict is
over what reached Kafka (README "Guarantees").
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime
from pathlib import Path

import pytest
from pipeline_processes import (
    Proc,
    Webhook,
    alertmanager_config,
    canonical,
    log_ends,
    pipeline_procs,
    read_json,
    read_samples,
    start_simulator,
    verdict,
    wait_until,
    write_config,
)
from servers import start_alertmanager

from gpuslo.pipeline.config import KafkaConfig
from gpuslo.pipeline.kafka.client import ensure_topics
from gpuslo.pipeline.stages.checkpoint import CheckpointStore
from gpuslo.slo.catalog import CATALOG_DIR
from gpuslo.slo.spec import load_specs

pytestmark = pytest.mark.integration

SEED = 17
PARTITIONS = 2
SPEC_FILES = [CATALOG_DIR / "request-success.yaml", CATALOG_DIR / "gpu-thermal-headroom.yaml"]
RUN_S = 16.0  # of faults; then the collector drains and the stages catch up
KILLS_EACH = 2


def kill_plan(rng: random.Random, names: list[str]) -> list[tuple[float, str]]:
    """(seconds after start, process) for each kill, in time order."""
    plan = [(round(rng.uniform(2.0, RUN_S - 2.0), 2), n) for n in names
            for _ in range(KILLS_EACH)]
    return sorted(plan)


async def test_each_process_killed_twice_gives_the_uninterrupted_verdict_and_pages_once(
    kafka_cfg: KafkaConfig, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    specs = load_specs(SPEC_FILES)
    t = kafka_cfg.topics
    await ensure_topics(kafka_cfg, [t.samples, t.sli, t.dlq, t.digests], partitions=PARTITIONS)
    hook = Webhook().start()
    am = start_alertmanager(alertmanager_config(hook.url), tmp_path / "am")
    sim, collectors = start_simulator(tmp_path, 0.5, ("dcgm", "kvcache"))
    report = tmp_path / "report.json"
    config = write_config(tmp_path, kafka_cfg, collectors, am.url)
    procs = pipeline_procs(tmp_path, config, SPEC_FILES, report)
    everyone: list[Proc] = [sim, *procs.values()]
    plan = kill_plan(rng, list(procs))
    started = time.monotonic()
    try:
        for p in procs.values():
            p.start()
        wait_until(lambda: (d := read_json(report)) and d["reports"], everyone, 30,
                   "the first reports")
        t0 = time.monotonic()
        for at, name in plan:
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            p = procs[name]
            p.kill()
            await asyncio.sleep(rng.uniform(0.0, 1.0))
            p.start()
        await asyncio.sleep(max(0.0, t0 + RUN_S - time.monotonic()))
        # A drain needs the signal handlers of a started process.
        wait_until(lambda: "collecting from" in procs["collect"].since_start(), everyone, 20,
                   "the last collector to run")
        assert procs["collect"].terminate() == 0, procs["collect"].tail()

        samples = (await read_samples(kafka_cfg)).unique()
        assert samples.height > 0

        def caught_up() -> tuple[dict[str, object], list[dict[str, str]]] | None:
            doc = read_json(report)
            if doc is None or doc["evaluated_at"] is None:
                return None
            at = datetime.fromisoformat(doc["evaluated_at"])
            expected, firing = verdict(specs, samples, at)
            return (doc, firing) if canonical(doc["reports"]) == expected else None

        doc, firing = wait_until(caught_up, [sim, procs["stage1"], procs["stage2"]],
                                 30, "stage 2 to report the verdict over every sample")
        assert any(r["slo"] == "gpu-thermal-headroom" for r in doc["reports"])
        assert firing, "the overheating GPU's SLO must page"

        def key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
            return tuple(sorted((k, labels[k]) for k in ("alertname", "slo", "severity",
                                                         *sorted(labels))
                                if k in labels))

        want = {key(a) for a in firing}

        def all_paged() -> bool:
            active = {key({k: v for k, v in a["labels"].items() if k in f})
                      for a in am.get_json("/api/v2/alerts?active=true")
                      for f in firing}
            return want <= active and bool(hook.alerts())

        wait_until(all_paged, [procs["stage2"]], 15, "Alertmanager to hold every firing alert")
        received = hook.alerts()
        # Never an alert that is not firing, never a resolution of one that still fires,
        # one start time each (a restart does not page anew).
        firing_labels = [dict(a) for a in firing]
        for a in received:
            match = [f for f in firing_labels if all(a["labels"].get(k) == v
                                                     for k, v in f.items())]
            assert match, f"Alertmanager paged an alert that is not firing: {a['labels']}"
            assert a["status"] == "firing", f"resolved while still firing: {a['labels']}"
        starts: dict[tuple[tuple[str, str], ...], set[str]] = {}
        for a in received:
            starts.setdefault(tuple(sorted(a["labels"].items())), set()).add(a["startsAt"])
        assert all(len(s) == 1 for s in starts.values()), starts
        assert [p.kills for p in procs.values()] == [KILLS_EACH] * 3

        # The scoring stage lived and died with stage 1: it resumed each time and has
        # scored the whole samples topic (its checkpoint interval is 0: each applied
        # poll is checkpointed).
        ends = await log_ends(kafka_cfg, t.samples, range(PARTITIONS))
        store = CheckpointStore(tmp_path / "state")
        scope = f"anomaly.{kafka_cfg.client_id}.anomaly.{t.samples}"

        def scored() -> dict[int, int]:
            got = {p: (c.next_offset if (c := store.read(scope, p)) else 0)
                   for p in range(PARTITIONS)}
            return got if got == ends else {}

        wait_until(scored, [procs["stage1"]], 15,
                   f"the scoring stage to score every sample record (log ends {ends})")
        print(f"{samples.height} samples, {len(received)} alert notifications, "
              f"{len(plan)} kills, {time.monotonic() - started:.1f}s")
    finally:
        for p in everyone:
            p.cleanup()
        am.stop()
        hook.stop()
