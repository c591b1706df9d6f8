"""Simulated-fleet commands: ``gpuslo demo``, ``gpuslo simulate`` and ``gpuslo inject``.

``gpuslo simulate`` serves a scenario's fleet alone, so Prometheus, a gpuslo
collector or a curl can be pointed at it; ``gpuslo inject`` breaks something
in a running simulator (or demo) through its ``POST /faults``; ``gpuslo demo``
runs the whole pipeline over it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.markup import escape
from rich.table import Table

from gpuslo.pipeline.aio import StopEvent
from gpuslo.pipeline.app.cli.common import (
    SIGNALLED,
    DurationOption,
    console,
    err_console,
    finish,
    run_async,
    setup_logging,
)
from gpuslo.pipeline.app.demo import SIM_PORT, DemoSettings, run_demo
from gpuslo.pipeline.app.fleet_targets import prometheus_configs
from gpuslo.simulator.faults import FaultError, lookup
from gpuslo.simulator.scenario import (
    ScenarioError,
    default_ground_truth_path,
    default_scenario,
    load_scenario,
    parse_duration,
    write_ground_truth,
)
from gpuslo.simulator.server import FleetServer, Target

DEFAULT_URL = f"http://127.0.0.1:{SIM_PORT}"

# The demo's drain after Ctrl-C takes a second or two (its broker outlives every
# client); past this, it is cut short.
DEMO_GRACE_S = 15.0


def collector_config_yaml(targets: list[Target], interval_s: float, *, base_url: str,
                          scenario: str) -> str:
    """A gpuslo config (``collectors:``) that scrapes every Prometheus-format target."""
    collectors = [
        {"type": "prometheus", "name": c.name, "source": c.source,
         **c.model_dump(mode="json", exclude_defaults=True, exclude={"type", "name", "source"})}
        for c in prometheus_configs(targets, interval_s)
    ]
    header = (
        f"# gpuslo collectors for the simulated fleet {scenario!r} at {base_url}\n"
        "# (kubelet /stats/summary and /proc/diskstats pages need their dedicated collectors)\n"
    )
    return header + yaml.safe_dump({"collectors": collectors}, sort_keys=False)


def _targets_table(targets: list[Target]) -> Table:
    t = Table(title=f"{len(targets)} endpoints", title_justify="left")
    for col in ("node", "source", "kind", "url"):
        t.add_column(col, overflow="fold")
    for tg in targets:
        t.add_row(tg.node, tg.source, tg.kind, tg.url)
    return t


def simulate(
    scenario: Annotated[Path | None, typer.Option(
        "--scenario", "-s", help="Scenario YAML (default: the built-in 8-node scenario).",
        dir_okay=False)] = None,
    port: Annotated[int, typer.Option(
        help="Port of the fleet's server (0: any free port).")] = SIM_PORT,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    speed: Annotated[float | None, typer.Option(
        help="Simulated seconds per real second (default: the scenario's).", min=0.001)
    ] = None,
    nodes: Annotated[int | None, typer.Option(
        help="Override the scenario's node count.", min=1)] = None,
    ground_truth: Annotated[Path | None, typer.Option(
        "--ground-truth", help="Where to write the faults as JSON lines "
        "(default: <scenario>.truth.jsonl beside the scenario file).")] = None,
    duration: Annotated[float | None, typer.Option(
        help="Stop after this many seconds (default: run until Ctrl-C).")] = None,
    print_config: Annotated[bool, typer.Option(
        "--print-config", help="Print a gpuslo collector config for the fleet on stdout "
        "(everything else goes to stderr).")] = False,
    interval: Annotated[float, typer.Option(
        help="Scrape interval written into --print-config's output.", min=0.01)] = 1.0,
    per_endpoint_ports: Annotated[bool, typer.Option(
        help="Give every exporter process its own port instead of a path prefix.")
    ] = False,
    sysfs_dir: Annotated[Path | None, typer.Option(
        help="Also keep a sysfs-shaped tree and /proc/diskstats per node here.")] = None,
) -> None:
    """Serve a simulated GPU fleet (real exporter formats) and print its endpoints."""
    out = err_console if print_config else console
    try:
        sc = load_scenario(scenario) if scenario is not None else default_scenario()
        fleet, skipped = sc.build(nodes, strict=nodes is None)
    except (ScenarioError, FaultError) as exc:
        err_console.print(f"[red]invalid scenario[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    for line in skipped:
        err_console.print(f"scenario fault skipped: {line}", highlight=False, markup=False)
    scheduled = len(fleet.faults)
    truth = ground_truth or (default_ground_truth_path(scenario) if scenario else None)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        srv = FleetServer(fleet, host=host, port=port, speed=speed or sc.speed,
                          per_endpoint_ports=per_endpoint_ports, sysfs_dir=sysfs_dir)
        try:
            await srv.start()
        except OSError as exc:
            await srv.stop()
            err_console.print(f"[red]cannot listen on {host}:{port}[/]: {exc.strerror or exc}"
                              " (use --port 0 for any free port)", highlight=False)
            raise typer.Exit(1) from None
        try:
            targets = srv.targets()
            if print_config:
                sys.stdout.write(collector_config_yaml(
                    targets, interval, base_url=srv.base_url, scenario=sc.name))
                sys.stdout.flush()
            else:
                out.print(_targets_table(targets))
            for f in srv.file_targets():
                out.print(f"files of {f.node}: {f.sys_root} {f.diskstats}", highlight=False)
            out.print(
                f"simulating {sc.name!r}: {len(fleet.nodes)} nodes at "
                f"{speed or sc.speed:g}x, {len(targets)} endpoints; index {srv.base_url}"
                f"/targets; faults {srv.base_url}/faults"
                + (f"; ground truth {truth}" if truth else "")
                + "; Ctrl-C stops", highlight=False,
            )
            written = -1
            deadline = None if duration is None else loop.time() + duration
            while not stop.is_set():
                if truth is not None and written != len(fleet.faults):
                    write_ground_truth(fleet, truth, scheduled)
                    written = len(fleet.faults)
                wait = 0.5 if deadline is None else min(0.5, deadline - loop.time())
                if wait <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
            if truth is not None:
                write_ground_truth(fleet, truth, scheduled)
        finally:
            await srv.stop()

    asyncio.run(main())

def inject(
    kind: Annotated[str, typer.Argument(help="Fault kind, e.g. thermal_throttle, xid_79.")],
    target: Annotated[str, typer.Argument(
        help="Entity: node-1/gpu2, node-0/mlx5_1, node-3/nvme1n1, node-2, osd.1, "
             "<service>, <service>/<replica>.")],
    duration: Annotated[str, typer.Option(
        help="How long the cause lasts, simulated time (600, 90s, 10m, 1h).")] = "10m",
    intensity: Annotated[float, typer.Option(
        help="Severity in (0, 1].", min=0.0, max=1.0)] = 1.0,
    start_in: Annotated[str, typer.Option(
        "--in", help="Start this much simulated time from now (default: at once).")] = "0",
    url: Annotated[str, typer.Option(
        help="Base URL of the running simulator or demo.")] = DEFAULT_URL,
) -> None:
    """Inject a fault into a running `gpuslo simulate` or `gpuslo demo`."""
    try:
        lookup(kind)
        body = {"kind": kind, "target": target, "duration_s": parse_duration(duration),
                "start_in_s": parse_duration(start_in), "intensity": intensity}
    except (FaultError, ValueError) as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    req = urllib.request.Request(
        url.rstrip("/") + "/faults", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            fault = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read()).get("error", exc.reason)
        except (ValueError, AttributeError):
            reason = exc.reason
        err_console.print(f"[red]rejected:[/] {escape(str(reason))}", highlight=False)
        raise typer.Exit(1) from None
    except (urllib.error.URLError, OSError) as exc:
        err_console.print(f"[red]no simulator at {escape(url)}[/]: {escape(str(exc))}",
                          highlight=False)
        raise typer.Exit(1) from None
    def hms(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")

    console.print(
        f"injected {fault['kind']} on {fault['target']} (intensity {fault['intensity']:g}): "
        f"{hms(fault['start_s'])} to {hms(fault['end_s'])} UTC, simulated time",
        highlight=False,
    )


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
        int | None, typer.Option(help=f"Simulator port (default: {SIM_PORT} if free).")
    ] = None,
    specs: Annotated[
        list[Path] | None, typer.Option(help="SLO spec files or folders (default: catalog).")
    ] = None,
    alertmanager: Annotated[
        list[str] | None, typer.Option(help="Alertmanager URL to send alerts to; repeatable.")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(
            help="Port of Prometheus /metrics and the status page (default: 9464 if free, "
                 "else any free port; 0: any free port).", min=0, max=65535)
    ] = None,
) -> None:
    """Simulated fleet + embedded broker + collectors + SLO engine + live view."""
    setup_logging("WARNING")
    settings = DemoSettings(
        duration_s=duration, interval_s=interval, nodes=nodes, scenario=scenario,
        inject=inject or (), speed=speed, sim_port=port, ground_truth=ground_truth,
        specs=specs, alertmanager=alertmanager or (), metrics_port=metrics_port,
    )
    seen = 0

    async def main(stop: StopEvent) -> None:
        nonlocal seen
        seen = (await run_demo(settings, console, stop=stop)).samples

    why = run_async(main, grace_s=DEMO_GRACE_S)
    if seen == 0 and why not in SIGNALLED:
        err_console.print("[red]no samples reached the live view[/]")
        finish(1, why)
    finish(0, why)
