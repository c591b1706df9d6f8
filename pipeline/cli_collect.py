"""CLI commands of the collection area, registered onto the main ``gpuslo`` app.

``gpuslo scrape URL|FILE`` is the user's debugging tool (like ``promtool check
metrics``): one payload through the same parser and source mapping the
collectors use, printed as samples and normalised signals.  It never touches
Kafka, so it answers "what would gpuslo make of this exporter?" on a laptop.
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import aiohttp
import polars as pl
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err_console = Console(stderr=True)

NORMALISED_PREFIX = "gpuslo_"


class Source(StrEnum):
    dcgm = "dcgm"
    kvcache = "kvcache"
    prometheus = "prometheus"
    rdma = "rdma"
    kubelet = "kubelet"
    storage = "storage"


@dataclass
class Mapped:
    """One payload after parse + mapping, and what the user should know about it."""

    frame: pl.DataFrame
    notes: list[str] = field(default_factory=list)


class ScrapeError(Exception):
    """The payload could not be fetched or read; the message is for the user."""


def _is_diskstats(text: str) -> bool:
    for line in text.splitlines():
        parts = line.split()
        if parts:
            return len(parts) >= 14 and parts[0].isdigit() and parts[1].isdigit()
    return False


def map_payload(
    body: str, *, source: Source, node: str, scrape_ts_ms: int, location: str = "",
    content_type: str | None = None,
) -> Mapped:
    """Parse ``body`` as ``source`` would and apply that source's mapping.

    Raises:
        ValueError: the payload is malformed (exposition errors name the line).
    """
    from gpuslo.collectors import dcgm, kubelet, kvcache, rdma, storage
    from gpuslo.collectors.exposition import detect_openmetrics, parse_exposition

    # A file has no Content-Type: read it as text format, as Prometheus's own tools do.
    openmetrics = detect_openmetrics("", content_type) if content_type is not None else False

    def parse(text: str) -> pl.DataFrame:
        return parse_exposition(text, node=node, source=source.value, scrape_ts_ms=scrape_ts_ms,
                                openmetrics=openmetrics)

    if source is Source.dcgm:
        result = dcgm.map_frame(parse(body))
        notes = [f"{result.blank_samples} DCGM blank sentinel(s) not normalised"] \
            if result.blank_samples else []
        return Mapped(result.frame, notes)
    if source is Source.kvcache:
        frame = parse(body)
        engine = kvcache.detect_engine(frame)
        return Mapped(kvcache.map_frame(frame), [f"engine: {engine or 'unknown'}"])
    if source is Source.rdma:
        return Mapped(rdma.map_node_exporter(parse(body)))
    if source is Source.storage:
        if _is_diskstats(body):
            ds = storage.parse_diskstats(body, node=node, scrape_ts_ms=scrape_ts_ms)
            notes = list(ds.errors)
            if ds.excluded:
                notes.append(f"{ds.excluded} partition/virtual device(s) excluded")
            return Mapped(storage.map_frame(ds.frame), notes)
        return Mapped(storage.map_frame(parse(storage.strip_insta_header(body))))
    if source is Source.kubelet:
        if body.lstrip().startswith("{"):
            summary = kubelet.summary_to_frame(body, node=node, scrape_ts_ms=scrape_ts_ms)
            return Mapped(kubelet.map_summary(summary), list(summary.errors))
        frame = parse(body)
        if "cadvisor" in location or frame["metric"].str.starts_with("container_fs_").any():
            mapped, dropped = kubelet.map_cadvisor(frame)
            return Mapped(mapped, [f"{dropped} pod/QoS/sandbox aggregate row(s) dropped"])
        return Mapped(kubelet.map_resource(frame))
    return Mapped(parse(body))


def read_sysfs_path(path: Path, *, node: str, scrape_ts_ms: int) -> Mapped:
    """An RDMA sysfs root (``/sys`` or a copy) read and mapped."""
    from gpuslo.collectors import rdma

    result = rdma.read_sysfs(path, node=node, scrape_ts_ms=scrape_ts_ms)
    notes = [f"{p.path}: {p.reason} {p.detail}".rstrip() for p in result.errors]
    if result.unavailable:
        notes.append(f"{result.unavailable} counter(s) read 'N/A (no PMA)'")
    return Mapped(rdma.map_sysfs(result), notes)


async def fetch(url: str, *, timeout_s: float, max_bytes: int, token_file: Path | None,
                ca_file: Path | None, insecure: bool) -> tuple[str, str | None]:
    """GET one page: its text and Content-Type (kubelet-style bearer token and TLS options)."""
    from gpuslo.collectors.kubelet import BearerTokenFile, TokenError, make_ssl_context, redact

    headers: dict[str, str] = {}
    secrets: list[str] = []
    if token_file is not None:
        try:
            token = BearerTokenFile(token_file).get().reveal()
        except TokenError as exc:
            raise ScrapeError(str(exc)) from None
        headers["Authorization"] = "Bearer " + token
        secrets.append(token)
    ctx: ssl.SSLContext | bool = True
    if url.startswith("https") and (ca_file is not None or insecure):
        ctx = make_ssl_context(ca_file, insecure=insecure)
    try:
        async with aiohttp.ClientSession() as session, session.get(
            url, headers=headers, ssl=ctx, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            if resp.status != 200:
                raise ScrapeError(f"{url}: HTTP {resp.status}")
            buf = bytearray()
            async for chunk in resp.content.iter_chunked(256 * 1024):
                buf += chunk
                if len(buf) > max_bytes:
                    raise ScrapeError(f"{url}: body exceeds {max_bytes} bytes")
            content_type = resp.headers.get("Content-Type")
    except TimeoutError:
        raise ScrapeError(f"{url}: no answer within {timeout_s}s") from None
    except aiohttp.ClientError as exc:
        raise ScrapeError(redact(f"{url}: {type(exc).__name__}: {exc}", secrets)) from None
    try:
        return buf.decode("utf-8"), content_type
    except UnicodeDecodeError as exc:
        raise ScrapeError(f"{url}: payload is not UTF-8 ({exc})") from None


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


def register(app: typer.Typer) -> None:
    """Add this module's commands to app."""

    @app.command()
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
                        raise ScrapeError(f"{target} is a directory; only --source rdma reads "
                                          "a sysfs root")
                    mapped = read_sysfs_path(path, node=node, scrape_ts_ms=ts_ms)
                else:
                    try:
                        body = path.read_text(encoding="utf-8")
                    except (OSError, UnicodeDecodeError) as exc:
                        raise ScrapeError(f"cannot read {target}: {exc}") from None
                    mapped = map_payload(body, source=source, node=node, scrape_ts_ms=ts_ms,
                                         location=target)
        except ScrapeError as exc:
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
