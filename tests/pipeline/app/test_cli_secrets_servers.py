"""No secret reaches a log, an error or /metrics while gpuslo serves (see tests/secret_runs.py).

The long-running commands with every secret set: an aggregator that pages at
once and keeps failing to reach Alertmanager and an OTLP collector (its
``/metrics`` scraped meanwhile), a collector whose kubelet is unreachable, a
live view, the receiver, the demo and the embedded broker.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from secret_runs import (
    assert_no_secret_and_every_run_took_its_path,
    burning_samples,
    every_command,
    oneshot_runs,
    run_all,
    server_runs,
    setup,
)

from gpuslo.pipeline.config import KafkaConfig
from gpuslo.pipeline.kafka.broker import EmbeddedBroker
from gpuslo.pipeline.kafka.client import SampleProducer, ensure_topics


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


def test_the_two_files_run_every_command(tmp_path: Path) -> None:
    s = setup(tmp_path, "127.0.0.1:1", "127.0.0.1:1")
    ran = {r.argv[0] for r in server_runs(s) + oneshot_runs(s)}
    assert every_command() <= ran, f"not run: {every_command() - ran}"


@pytest.mark.integration
async def test_no_server_prints_or_exports_a_secret(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    s = setup(tmp_path, broker.bootstrap_servers, "127.0.0.1:1")
    kafka = KafkaConfig(bootstrap_servers=broker.bootstrap_servers)
    await ensure_topics(kafka, [kafka.topics.samples, kafka.topics.sli, kafka.topics.dlq])
    async with SampleProducer(kafka) as producer:
        await producer.send_frame(kafka.topics.samples, "n1", burning_samples())
    todo = server_runs(s)
    await run_all(todo)
    assert_no_secret_and_every_run_took_its_path(todo)
    aggregate = next(r for r in todo if r.name == "aggregate")
    assert any("gpuslo_slo" in page for page in aggregate.pages), "no /metrics page with SLOs"
