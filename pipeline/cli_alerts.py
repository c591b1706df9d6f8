"""CLI commands registered onto the main `gpuslo` app (see pipeline/cli.py).

``gpuslo receiver`` runs the Alertmanager webhook receiver on its own; the demo and
the aggregate runtime can embed :class:`alerts.receiver.WebhookReceiver` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Annotated

import typer

# Module-level (not imported from pipeline.cli): typer evaluates these annotations in this
# module's namespace, and pipeline.cli imports this module while it is being defined.
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file (GPUSLO_* variables override it)."),
]
DurationOption = Annotated[
    float | None,
    typer.Option("--duration", help="Stop after this many seconds (default: run until Ctrl-C)."),
]


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    from gpuslo.pipeline.cli import _load, _run, console, err_console

    @app.command()
    def receiver(config: ConfigOption = None, duration: DurationOption = None) -> None:
        """Receive Alertmanager webhooks (bearer token required) and keep the recent ones."""
        from gpuslo.alerts.receiver import WebhookReceiver

        cfg = _load(config)
        if cfg.alerts.receiver.token is None:
            err_console.print("[red]alerts.receiver.token is required[/] "
                              "(or GPUSLO_ALERTS__RECEIVER__TOKEN)")
            raise typer.Exit(2)

        async def main(stop: asyncio.Event) -> None:
            async with WebhookReceiver(cfg.alerts.receiver) as r:
                console.print(f"receiving Alertmanager webhooks on {r.url}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=duration)
                console.print(f"{len(r.notifications)} notification(s) kept, "
                              f"{sum(r.rejected.values())} request(s) refused")

        _run(main)
