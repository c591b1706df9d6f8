"""How every long-running command stops: signals, the grace period, a stop before Kafka.

``run_async`` in-process, with real signals sent to this process while its
handlers are installed (asyncio removes them when the loop closes).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import typer

from gpuslo.pipeline.aio import StopEvent, StopRequested, retry_until, stop_line
from gpuslo.pipeline.app.cli.common import finish, run_async
from gpuslo.pipeline.errors import GpusloError


def send_soon(*sigs: signal.Signals) -> None:
    loop = asyncio.get_running_loop()
    for i, sig in enumerate(sigs):
        loop.call_later(0.05 + 0.2 * i, os.kill, os.getpid(), sig)


def test_sigterm_sets_the_stop_and_a_clean_drain_exits_0() -> None:
    seen: list[str | None] = []

    async def main(stop: StopEvent) -> None:
        send_soon(signal.SIGTERM)
        await stop.wait()
        seen.append(stop.reason)
        await asyncio.sleep(0.1)  # a short drain
        seen.append(stop_line(stop, ["everything"]))

    assert run_async(main, grace_s=5) == "SIGTERM"
    assert seen[0] == "SIGTERM"
    assert seen[1] is not None and seen[1].startswith("stopped (SIGTERM) in 0.1")


def test_a_drain_past_its_grace_period_is_cut_short_and_exits_1() -> None:
    cleaned: list[bool] = []

    async def main(stop: StopEvent) -> None:
        send_soon(signal.SIGTERM)
        await stop.wait()
        try:
            await asyncio.sleep(60)  # a drain that would never end
        finally:
            cleaned.append(True)  # cancellation still runs the cleanup (broker stop)

    started = time.monotonic()
    with pytest.raises(typer.Exit) as exc:
        run_async(main, grace_s=0.5)
    assert exc.value.exit_code == 1
    assert time.monotonic() - started < 3 and cleaned == [True]


def test_a_second_ctrl_c_stops_at_once() -> None:
    async def main(stop: StopEvent) -> None:
        send_soon(signal.SIGINT, signal.SIGINT)
        await stop.wait()
        await asyncio.sleep(60)

    started = time.monotonic()
    with pytest.raises(typer.Exit) as exc:
        run_async(main, grace_s=30)
    assert exc.value.exit_code == 1 and time.monotonic() - started < 3


def test_a_stop_while_kafka_is_still_unreachable_is_a_clean_exit() -> None:
    attempts = 0

    async def unreachable() -> None:
        nonlocal attempts
        attempts += 1
        raise GpusloError("no broker", retriable=True)

    async def main(stop: StopEvent) -> None:
        send_soon(signal.SIGTERM)
        await retry_until(stop, unreachable, initial_s=0.02)

    run_async(main, grace_s=5)  # no exception: exit 0
    assert attempts >= 2


async def test_retry_until_raises_at_once_on_an_error_that_retrying_cannot_fix() -> None:
    calls = 0

    async def rejected() -> None:
        nonlocal calls
        calls += 1
        raise GpusloError("bad credentials", retriable=False)

    with pytest.raises(GpusloError, match="bad credentials"):
        await retry_until(asyncio.Event(), rejected)
    assert calls == 1
    stop = asyncio.Event()
    stop.set()
    with pytest.raises(StopRequested):
        await retry_until(stop, rejected)
    assert calls == 1


def test_finish_returns_normally_unless_a_signal_stopped_the_command() -> None:
    # After a signal it ends the process at once (os._exit, covered by the process tests);
    # otherwise (--duration, a command invoked in-process) it behaves like any command.
    assert finish(0, "--duration 5") is None  # type: ignore[func-returns-value]
    with pytest.raises(typer.Exit) as exc:
        finish(1, None)
    assert exc.value.exit_code == 1
