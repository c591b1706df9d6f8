"""What every ``gpuslo`` command shares: consoles, common options, config loading, the loop.

Each command is a thin shell: it loads and validates config (every problem at
once, non-zero exit), then hands over to the wiring.  Ctrl-C and SIGTERM set
the command's stop event, so loops end cleanly and flush what is pending,
within the command's grace period: past it (or on a second Ctrl-C) the command
is cancelled, which every part survives as it survives SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from gpuslo.pipeline.aio import StopEvent, StopRequested
from gpuslo.pipeline.config import ConfigError, GpusloConfig, load_config
from gpuslo.pipeline.errors import GpusloError, InputError

console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file (GPUSLO_* variables override it)."),
]
DurationOption = Annotated[
    float | None,
    typer.Option("--duration", help="Stop after this many seconds (default: run until Ctrl-C)."),
]


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


def load_or_exit(path: Path | None) -> GpusloConfig:
    """The config, or exit 2 listing every problem with its path."""
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        err_console.print(f"[red]invalid configuration[/] {escape(str(exc))}", highlight=False,
                          soft_wrap=True)
        raise typer.Exit(2) from exc
    setup_logging(cfg.log_level)
    return cfg


def fail(message: str, exc: BaseException | None = None) -> typer.Exit:
    """Print one red line for ``exc`` and return the exit to raise (2: bad input, else 1)."""
    err_console.print(f"[red]{message}[/] {escape(str(exc)) if exc else ''}".rstrip(),
                      highlight=False, soft_wrap=True)
    return typer.Exit(2 if isinstance(exc, InputError) else 1)


SIGNALLED = ("SIGINT", "SIGTERM")


def finish(code: int, stop_reason: str | None) -> None:
    """End a long-running command with ``code``; at once when a signal stopped it.

    Interpreter teardown frees every object one by one: after the demo's drain
    was done, that took 2 to 3 s more on a loaded machine, which someone who
    pressed Ctrl-C (or a kubelet counting a grace period) waits through for
    nothing (Instagram's ``atexit.register(os._exit, 0)`` skips the same work).
    Called only after the command's own cleanup: Kafka clients, the broker,
    servers and exporters stopped, checkpoints and files closed.  The streams
    and logging are flushed here; other atexit handlers do not run (gpuslo
    registers none; the exporters' SDK is shut down explicitly).  Without a
    signal (``--duration``, a test invoking the command in-process) the command
    returns as usual.
    """
    if stop_reason in SIGNALLED:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    if code:
        raise typer.Exit(code)


def run_async(
    main: Callable[[StopEvent], Coroutine[Any, Any, None]], *, grace_s: float | None = None
) -> str | None:
    """Run an async main until it returns; SIGINT and SIGTERM request its stop.

    Returns why it stopped (``SIGTERM``, ``--duration 5``; None: it returned by itself).

    ``main`` gets a :class:`~gpuslo.pipeline.aio.StopEvent` and must drain and
    return once it is set.  With ``grace_s``, a drain still running that long
    after the stop is cancelled and the command exits 1 naming the limit; a
    second SIGINT/SIGTERM cancels at once (exit 1).  A stop requested before
    Kafka was reached (:class:`~gpuslo.pipeline.aio.StopRequested`) is a clean
    exit.  A :class:`~gpuslo.pipeline.errors.GpusloError` that escapes ends the
    command with one red line (exit 2 for bad input, 1 otherwise), not a
    traceback.
    """
    cut_short: list[str] = []
    stop = StopEvent()

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_signal(sig: signal.Signals) -> None:
            if stop.is_set():
                if not cut_short:
                    cut_short.append(f"second {sig.name}: stopped without finishing the drain")
                    task.cancel()
                return
            stop.request(sig.name)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)

        async def deadline() -> None:
            await stop.wait()
            if grace_s is None:
                return
            await asyncio.sleep(grace_s)
            if not cut_short:
                cut_short.append(f"drain not finished within {grace_s:g}s: stopped without it")
                task.cancel()

        watchdog = asyncio.create_task(deadline(), name="stop-deadline")
        try:
            await main(stop)
        except StopRequested:
            err_console.print(f"stopped ({stop.reason}) before Kafka was reached",
                              highlight=False)
        except asyncio.CancelledError:
            if not cut_short:
                raise
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog

    try:
        asyncio.run(runner())
    except GpusloError as exc:
        raise fail("error:", exc) from exc
    if cut_short:
        err_console.print(f"[red]{escape(cut_short[0])}[/]", highlight=False)
        raise typer.Exit(1)
    return stop.reason


__all__ = [
    "SIGNALLED",
    "ConfigOption",
    "DurationOption",
    "console",
    "err_console",
    "fail",
    "finish",
    "load_or_exit",
    "run_async",
    "setup_logging",
]
