"""``gpuslo version``, ``gpuslo validate`` and ``gpuslo broker``."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from gpuslo.pipeline.aio import StopEvent, stop_line
from gpuslo.pipeline.app.cli.common import console, err_console, run_async
from gpuslo.pipeline.config import ConfigError, load_config
from gpuslo.pipeline.kafka.broker import EmbeddedBroker
from gpuslo.pipeline.schema import SCHEMA_VERSION


def version() -> None:
    """Print gpuslo's version and the sample schema version."""
    try:
        v = dist_version("gpuslo")
    except PackageNotFoundError:
        v = "unknown"
    console.print(f"gpuslo {v} (sample schema v{SCHEMA_VERSION})")


def validate(config: Annotated[Path, typer.Argument(help="Config file to check.")]) -> None:
    """Check a config file; list every problem with its path and exit non-zero if any."""
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        err_console.print(f"[red]invalid[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from exc
    console.print(
        f"{config}: ok ({len(cfg.collectors)} collector(s), "
        f"kafka {cfg.kafka.bootstrap_servers or 'embedded'})"
    )


def broker(
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 9092,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Run the embedded Kafka-compatible broker in the foreground (memory only)."""

    async def main(stop: StopEvent) -> None:
        async with EmbeddedBroker(host=host, port=port or None) as b:
            console.print(
                f"embedded broker listening on {b.bootstrap_servers} "
                "(memory only, no idempotent producer); Ctrl-C stops it"
            )
            await stop.wait()
        console.print(stop_line(stop, [f"embedded broker {b.bootstrap_servers}"]),
                      highlight=False, soft_wrap=True)

    run_async(main, grace_s=10.0)
