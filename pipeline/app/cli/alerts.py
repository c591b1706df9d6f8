"""``gpuslo receiver``: the Alertmanager webhook receiver on its own.

The demo and the aggregate process can embed
:class:`~gpuslo.alerts.receiver.WebhookReceiver` instead.  Its one port
(``alerts.receiver.host:port``) also answers ``/healthz`` and ``/readyz``
(no token: they say nothing but whether it runs).
"""

from __future__ import annotations

import typer

from gpuslo.alerts.receiver import WebhookReceiver
from gpuslo.pipeline.aio import StopEvent, sleep_or_stop, stop_line
from gpuslo.pipeline.app.cli.common import (
    ConfigOption,
    DurationOption,
    console,
    err_console,
    load_or_exit,
    run_async,
)
from gpuslo.pipeline.app.wiring import health_routes
from gpuslo.pipeline.errors import GpusloError
from gpuslo.pipeline.readiness import READY_LIFECYCLE, Readiness


def receiver(config: ConfigOption = None, duration: DurationOption = None) -> None:
    """Receive Alertmanager webhooks (bearer token required) and keep the recent ones."""
    cfg = load_or_exit(config)
    if cfg.alerts.receiver.token is None and cfg.alerts.receiver.token_file is None:
        err_console.print("[red]alerts.receiver.token or alerts.receiver.token_file is "
                          "required[/] (or GPUSLO_ALERTS__RECEIVER__TOKEN[_FILE])")
        raise typer.Exit(2)

    async def main(stop: StopEvent) -> None:
        readiness = Readiness()
        readiness.expect(READY_LIFECYCLE, "starting")
        r = WebhookReceiver(cfg.alerts.receiver)
        health_routes(readiness)(r.app)  # before start: aiohttp freezes the router then
        try:
            await r.start()
        except OSError as exc:
            await r.stop()
            c = cfg.alerts.receiver
            raise GpusloError(f"cannot listen on {c.host}:{c.port} (alerts.receiver.host, "
                              f".port): {exc.strerror or exc}") from exc
        try:
            readiness.ok(READY_LIFECYCLE, f"listening on {r.cfg.host}:{r.port}")
            console.print(f"receiving Alertmanager webhooks on {r.url}; /healthz, /readyz "
                          f"on port {r.port}", highlight=False)
            await sleep_or_stop(stop, duration)
            if not stop.is_set():
                stop.request(f"--duration {duration:g}")
            readiness.fail(READY_LIFECYCLE, "draining: stopping")
        finally:
            await r.stop()
        console.print(stop_line(stop, [
            f"receiver {r.cfg.host}:{r.port} ({len(r.notifications)} notification(s) kept, "
            f"{sum(r.rejected.values())} request(s) refused)"]), highlight=False, soft_wrap=True)

    run_async(main, grace_s=10.0)
