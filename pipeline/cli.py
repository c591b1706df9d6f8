"""The ``gpuslo`` command line.

Each command is a thin shell: it loads and validates config (every problem at
once, non-zero exit), then hands over to the runtime.  Ctrl-C and SIGTERM stop
loops cleanly, flushing what is pending.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live

from gpuslo.pipeline.broker import BrokerError, EmbeddedBroker
from gpuslo.pipeline.config import ConfigError, GpusloConfig, load_config
from gpuslo.pipeline.kafka import SampleProducer, TransportError
from gpuslo.pipeline.schema import SCHEMA_VERSION

app = typer.Typer(
    name="gpuslo",
    help="Observability pipeline and SLO engine for GPU / AI clusters.",
    no_args_is_help=True,
    add_completion=False,
)
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


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


def _load(path: Path | None) -> GpusloConfig:
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        err_console.print(f"[red]invalid configuration[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc
    _setup_logging(cfg.log_level)
    return cfg


def _run(coro_fn: object) -> None:
    """Run an async main with SIGINT/SIGTERM setting its stop event."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await coro_fn(stop)  # type: ignore[operator]

    try:
        asyncio.run(main())
    except (BrokerError, TransportError) as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from exc


@app.command()
def version() -> None:
    """Print gpuslo's version and the sample schema version."""
    try:
        v = dist_version("gpuslo")
    except PackageNotFoundError:
        v = "unknown"
    console.print(f"gpuslo {v} (sample schema v{SCHEMA_VERSION})")


@app.command()
def validate(config: Annotated[Path, typer.Argument(help="Config file to check.")]) -> None:
    """Check a config file; list every problem with its path and exit non-zero if any."""
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        err_console.print(f"[red]invalid[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from exc
    console.print(
        f"{config}: ok ({len(cfg.collectors)} collector(s), "
        f"kafka {cfg.kafka.bootstrap_servers or 'embedded'})"
    )


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 9092,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Run the embedded Kafka-compatible broker in the foreground (memory only)."""

    async def main(stop: asyncio.Event) -> None:
        async with EmbeddedBroker(host=host, port=port or None) as b:
            console.print(
                f"embedded broker listening on {b.bootstrap_servers} "
                "(memory only, no idempotent producer); Ctrl-C stops it"
            )
            await stop.wait()

    _run(main)


@app.command()
def collect(config: ConfigOption = None, duration: DurationOption = None) -> None:
    """Run the configured collectors and produce their batches to Kafka."""
    from gpuslo.collectors.registry import build_collectors
    from gpuslo.pipeline.runtime import CollectRunner, kafka_servers, run_until

    cfg = _load(config)
    if not cfg.collectors:
        err_console.print("[red]no collectors configured[/]: add a `collectors:` list")
        raise typer.Exit(2)

    async def main(stop: asyncio.Event) -> None:
        topics = [cfg.kafka.topics.samples, cfg.kafka.topics.dlq]
        async with (
            kafka_servers(cfg.kafka, topics) as servers,
            SampleProducer(cfg.kafka, bootstrap_servers=servers) as producer,
        ):
            collectors = build_collectors(cfg)
            runner = CollectRunner(collectors, producer, cfg.kafka.topics.samples)
            console.print(f"collecting from {len(collectors)} collector(s) into {servers}")
            await run_until(stop, duration, runner.run(stop))
            s = runner.stats
            console.print(
                f"produced {s.samples_produced} samples in {s.records_produced} "
                f"records; scrape errors: {sum(s.errors.values())}; "
                f"dropped: {sum(s.dropped.values())}"
            )

    _run(main)


@app.command()
def tail(
    config: ConfigOption = None,
    duration: DurationOption = None,
    bootstrap_servers: Annotated[
        str | None,
        typer.Option("--bootstrap-servers", "-b", help="Override kafka.bootstrap_servers."),
    ] = None,
    group: Annotated[str, typer.Option(help="Consumer group.")] = "gpuslo-tail",
) -> None:
    """Consume gpuslo.samples and show a live table per source and node."""
    from gpuslo.pipeline.demo import tail_samples
    from gpuslo.pipeline.tail import SampleTail

    cfg = _load(config)
    servers = bootstrap_servers or cfg.kafka.bootstrap_servers
    if not servers:
        err_console.print(
            "[red]no Kafka to tail[/]: set kafka.bootstrap_servers or --bootstrap-servers"
        )
        raise typer.Exit(2)

    async def main(stop: asyncio.Event) -> None:
        from gpuslo.pipeline.runtime import run_until

        with Live(SampleTail().table(), console=console, refresh_per_second=4) as live:

            async def consume() -> None:
                result = await tail_samples(
                    cfg.kafka,
                    cfg.consumer,
                    stop,
                    lambda t: live.update(t.table()),
                    bootstrap_servers=servers,
                    group_id=group,
                )
                live.update(result.table())

            await run_until(stop, duration, consume())

    _run(main)


@app.command()
def demo(
    duration: DurationOption = None,
    interval: Annotated[float, typer.Option(help="Scrape interval in seconds.")] = 1.0,
    nodes: Annotated[
        int | None, typer.Option(help="Simulated nodes (default: the scenario's).", min=1)
    ] = None,
    scenario: Annotated[
        Path | None, typer.Option("--scenario", "-s", help="Scenario YAML (default: built in).")
    ] = None,
    inject: Annotated[
        list[str] | None,
        typer.Option(help="Inject a fault: KIND:TARGET[@SECONDS after start]; repeatable."),
    ] = None,
    speed: Annotated[
        float | None, typer.Option(help="Simulated seconds per real second (default: 60).")
    ] = None,
    ground_truth: Annotated[
        Path | None, typer.Option(help="Write the faults (ground truth) here as JSON lines.")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Simulator port (default: 9800 if free).")
    ] = None,
    specs: Annotated[
        list[Path] | None, typer.Option(help="SLO spec files or folders (default: catalog).")
    ] = None,
    alertmanager: Annotated[
        list[str] | None, typer.Option(help="Alertmanager URL to send alerts to; repeatable.")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus /metrics on this port.")
    ] = None,
) -> None:
    """Simulated fleet + embedded broker + collectors + SLO engine + live view."""
    from gpuslo.pipeline.demo import run_demo
    from gpuslo.simulator.faults import FaultError
    from gpuslo.simulator.scenario import ScenarioError
    from gpuslo.slo.spec import SpecError

    _setup_logging("WARNING")
    seen = 0

    async def main(stop: asyncio.Event) -> None:
        nonlocal seen
        tail = await run_demo(
            duration,
            interval,
            nodes,
            console,
            scenario=scenario,
            inject=inject or (),
            speed=speed,
            sim_port=port,
            ground_truth=ground_truth,
            stop=stop,
            specs=specs,
            alertmanager=alertmanager or (),
            metrics_port=metrics_port,
        )
        seen = tail.samples

    try:
        _run(main)
    except (FaultError, ScenarioError, SpecError) as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc
    if seen == 0:
        err_console.print("[red]no samples reached the live view[/]")
        raise typer.Exit(1)


def _register_command_groups() -> None:
    """Commands of other areas live beside their area, each with a ``register(app)``."""
    from gpuslo.pipeline import cli_alerts, cli_collect, cli_sim, cli_slo

    for module in (cli_collect, cli_slo, cli_sim, cli_alerts):
        module.register(app)


_register_command_groups()

if __name__ == "__main__":  # pragma: no cover
    app()
