"""What every ``gpuslo`` command shares: consoles, common options, config loading, the loop.

Each command is a thin shell: it loads and validates config (every problem at
once, non-zero exit), then hands over to the wiring.  Ctrl-C and SIGTERM set
the command's stop event, so loops end cleanly and flush what is pending.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

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


def run_async(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run an async main with SIGINT/SIGTERM setting its stop event.

    A :class:`~gpuslo.pipeline.errors.GpusloError` that escapes ends the command
    with one red line (exit 2 for bad input, 1 otherwise), not a traceback.
    """

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    try:
        asyncio.run(runner())
    except GpusloError as exc:
        raise fail("error:", exc) from exc


__all__ = [
    "ConfigOption",
    "DurationOption",
    "console",
    "err_console",
    "fail",
    "load_or_exit",
    "run_async",
    "setup_logging",
]
