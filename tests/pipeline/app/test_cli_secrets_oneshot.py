"""No secret reaches a printed config, an error or a log when a command fails (see
tests/secret_runs.py).

The commands that answer and exit, and the runs that fail at start: a config
that is not YAML with the password on the offending line, a config with a
bad value, Kafka unreachable over SASL_SSL, a SCRAM login the broker
refuses (password from a file), a kubelet scraped with a token file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from secret_runs import assert_no_secret_and_every_run_took_its_path, oneshot_runs, run_all, setup

from gpuslo.pipeline.kafka.broker import EmbeddedBroker


@pytest.fixture(scope="module")
def sasl_broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(authentication=True) as b:
        yield b


@pytest.mark.integration
async def test_no_command_prints_a_secret_when_it_fails(
    sasl_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    s = setup(tmp_path, "127.0.0.1:1", sasl_broker.bootstrap_servers)
    todo = oneshot_runs(s)
    await run_all(todo)
    assert_no_secret_and_every_run_took_its_path(todo)
