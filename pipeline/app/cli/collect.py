"""Collection commands: ``gpuslo collect``, ``gpuslo tail`` and ``gpuslo scrape``.

``gpuslo collect`` is the DaemonSet / sidecar job; ``gpuslo tail`` shows what
reaches ``gpuslo.samples``.  ``gpuslo scrape URL|FILE`` is the user's debugging
tool (see :mod:`gpuslo.collectors.inspect`), printed as samples and normalised
signals.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Annotated

import polars as pl
import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from gpuslo.collectors.inspect import (
    NORMALISED_PREFIX,
    InspectError,
    Source,
    fetch,
    map_payload,
    read_sysfs_path,
)
from gpuslo.collectors.scrape.http import ScrapeFailed
from gpuslo.pipeline.aio import StopEvent, run_until, stop_line
from gpuslo.pipeline.app.cli.common import (
    ConfigOption,
    DurationOption,
    console,
    err_console,
    finish,
    load_or_exit,
    run_async,
)
from gpuslo.pipeline.app.views.stream import SampleTail
from gpuslo.pipeline.app.wiring import collection, connect_kafka, http_address, serving
from gpuslo.pipeline.readiness import Readiness
from gpuslo.pipeline.stages.publish import health_snapshot, publish_health
from gpuslo.pipeline.stages.tail import tail_samples

# After its drain limits (shutdown.collect_*), closing the producer and the HTTP server
# get this long before the command is cut short (deploy/: the pod's grace is 30 s).
HARD_STOP_MARGIN_S = 2.0


def _value_json(v: float) -> float | str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return v


def _rows(frame: pl.DataFrame) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for r in frame.iter_rows(named=True):
        out.append({
            "ts": r["ts"].isoformat(timespec="milliseconds"),
            "node": r["node"],
            "source": r["source"],
            "metric": r["metric"],
            "kind": r["kind"],
            "value": _value_json(float(r["value"])),
            "entity": r["entity"],
            "labels": {lab["name"]: lab["value"] for lab in r["labels"]},
            "normalised": str(r["metric"]).startswith(NORMALISED_PREFIX),
        })
    return out


def _table(title: str, rows: list[dict[str, object]], limit: int) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("metric", "kind", "entity", "labels", "value", "ts"):
        table.add_column(col, overflow="fold", justify="right" if col == "value" else "left")
    for r in rows[:limit] if limit > 0 else rows:
        labels = r["labels"]
        assert isinstance(labels, dict)
        table.add_row(str(r["metric"]), str(r["kind"]), str(r["entity"]),
                      ",".join(f"{k}={v}" for k, v in labels.items()), f"{r['value']}",
                      str(r["ts"]))
    return table


def scrape(
    target: Annotated[str, typer.Argument(
        help="URL of a metrics page, or a file (exposition, /proc/diskstats, "
             "/stats/summary JSON), or for rdma a sysfs root directory.")],
    source: Annotated[Source, typer.Option(
        "--source", "-s", help="Which collector's mapping to apply.")] = Source.prometheus,
    as_json: Annotated[bool, typer.Option(
        "--json", help="JSON lines (one sample per line) instead of tables.")] = False,
    node: Annotated[str, typer.Option(help="Value of the samples' node column.")] = "local",
    timeout: Annotated[float, typer.Option(help="Request timeout in seconds.")] = 10.0,
    max_bytes: Annotated[int, typer.Option(help="Largest accepted body.")] = 64 << 20,
    limit: Annotated[int, typer.Option(
        help="Rows per table (0: all); --json always prints all.")] = 200,
    token_file: Annotated[Path | None, typer.Option(
        help="Bearer token file (kubelet).")] = None,
    ca_file: Annotated[Path | None, typer.Option(help="CA bundle for https.")] = None,
    insecure: Annotated[bool, typer.Option(
        help="Do not verify TLS (self-signed kubelet).")] = False,
) -> None:
    """Fetch or read one payload, parse and map it, print samples and normalised signals."""
    ts_ms = int(time.time() * 1000)
    try:
        if target.startswith(("http://", "https://")):
            body, ctype = asyncio.run(fetch(target, timeout_s=timeout, max_bytes=max_bytes,
                                            token_file=token_file, ca_file=ca_file,
                                            insecure=insecure))
            mapped = map_payload(body, source=source, node=node, scrape_ts_ms=ts_ms,
                                 location=target, content_type=ctype)
        else:
            path = Path(target)
            if path.is_dir():
                if source is not Source.rdma:
                    raise InspectError(f"{target} is a directory; only --source rdma reads "
                                      "a sysfs root")
                mapped = read_sysfs_path(path, node=node, scrape_ts_ms=ts_ms)
            else:
                try:
                    body = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    raise InspectError(f"cannot read {target}: {exc}") from None
                mapped = map_payload(body, source=source, node=node, scrape_ts_ms=ts_ms,
                                     location=target)
    except (InspectError, ScrapeFailed) as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None
    except ValueError as exc:  # ExpositionError names the line
        err_console.print(f"[red]parse error:[/] {escape(f'{target}: {exc}')}",
                          highlight=False)
        raise typer.Exit(1) from None
    rows = _rows(mapped.frame)
    if as_json:
        for r in rows:
            typer.echo(json.dumps(r, sort_keys=True))
    else:
        upstream = [r for r in rows if not r["normalised"]]
        normal = [r for r in rows if r["normalised"]]
        console.print(_table(f"{len(upstream)} upstream samples ({source.value})",
                             upstream, limit))
        console.print(_table(f"{len(normal)} normalised signals", normal, limit))
    for note in mapped.notes:
        err_console.print(f"note: {note}", highlight=False, markup=False)


def collect(config: ConfigOption = None, duration: DurationOption = None) -> None:
    """Run the configured collectors and produce their batches to Kafka.

    Serves its own health on exporters.prometheus (/metrics, /healthz, /readyz).
    SIGTERM or Ctrl-C drains: no new scrape, the scrapes in hand finish, the
    producer delivers what is pending (limits: shutdown.collect_*), exit 0.
    """
    cfg = load_or_exit(config)
    if not cfg.collectors:
        err_console.print("[red]no collectors configured[/]: add a `collectors:` list")
        raise typer.Exit(2)
    undelivered = 0

    async def main(stop: StopEvent) -> None:
        nonlocal undelivered
        topics = [cfg.kafka.topics.samples, cfg.kafka.topics.dlq]
        readiness = Readiness()
        stopped = [f"{len(cfg.collectors)} collector(s)"]
        async with serving(cfg, stop, readiness, only=("prometheus", "otlp")) as hub:
            address = http_address(hub)
            if address is not None:
                console.print(f"health on {address}: /metrics, /healthz, /readyz",
                              highlight=False)
            async with connect_kafka(cfg, topics, stop, readiness) as servers:
                async with collection(cfg, servers, readiness=readiness, stop=stop) as runner:
                    console.print(f"collecting from {len(cfg.collectors)} collector(s) "
                                  f"into {servers}", highlight=False)
                    await run_until(stop, duration, runner.run(stop), publish_health(
                        hub, stop, lambda: health_snapshot(runner.stats)))
                    s = runner.stats
                    undelivered = s.pending_samples
                    console.print(
                        f"produced {s.samples_produced} samples in {s.records_produced} "
                        f"records; scrape errors: {sum(s.errors.values())}; "
                        f"dropped: {sum(s.dropped.values())}; "
                        f"undelivered: {s.pending_samples}", highlight=False, soft_wrap=True)
                    stopped.append(f"producer flushed ({s.pending_samples} samples "
                                   "undelivered)")
                if not cfg.kafka.bootstrap_servers:
                    stopped.append(f"embedded broker {servers}")
        if address is not None:
            stopped.append(f"HTTP server {address}")
        console.print(stop_line(stop, stopped), highlight=False, soft_wrap=True)

    why = run_async(main, grace_s=cfg.shutdown.collect_grace_s + HARD_STOP_MARGIN_S)
    finish(1 if undelivered else 0, why)


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
    cfg = load_or_exit(config)
    servers = bootstrap_servers or cfg.kafka.bootstrap_servers
    if not servers:
        err_console.print(
            "[red]no Kafka to tail[/]: set kafka.bootstrap_servers or --bootstrap-servers"
        )
        raise typer.Exit(2)

    async def main(stop: asyncio.Event) -> None:
        view = SampleTail()
        with Live(view.table(), console=console, refresh_per_second=4) as live:
            await run_until(stop, duration, tail_samples(
                cfg.kafka, cfg.consumer, stop, view, lambda: live.update(view.table()),
                bootstrap_servers=servers, group_id=group,
            ))
            live.update(view.table())

    run_async(main)
