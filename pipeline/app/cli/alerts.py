"""``gpuslo receiver``: the Alertmanager webhook receiver on its own.

The demo and the aggregate process can embed
:class:`~gpuslo.alerts.receiver.WebhookReceiver` instead.
"""

from __future__ import annotations

import asyncio
import contextlib

import typer

from gpuslo.alerts.receiver import WebhookReceiver
from gpuslo.pipeline.app.cli.common import (
    ConfigOption,
    DurationOption,
    console,
    err_console,
    load_or_exit,
    run_async,
)


def receiver(config: ConfigOption = None, duration: DurationOption = None) -> None:
    """Receive Alertmanager webhooks (bearer token required) and keep the recent ones."""
    cfg = load_or_exit(config)
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

    run_async(main)
