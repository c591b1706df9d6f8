"""One payload, as a collector would see it: what ``gpuslo scrape`` shows.

Like ``promtool check metrics``, for a user asking "what would gpuslo make of
this exporter?": a page fetched (with a collector's limits, token and TLS) or a
file read, parsed and mapped by the source's own mapping, with notes on what
the mapping skipped.  It never touches Kafka.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import aiohttp
import polars as pl

from gpuslo.collectors.exposition import detect_openmetrics, parse_exposition
from gpuslo.collectors.mappings import dcgm, kubelet, kvcache, rdma, storage
from gpuslo.collectors.scrape.files import read_sysfs
from gpuslo.collectors.scrape.http import fetch_page
from gpuslo.pipeline.auth import BearerAuth, BearerTokenFile, tls_context
from gpuslo.pipeline.errors import GpusloError

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


class InspectError(GpusloError):
    """The payload could not be read; the message is for the user."""


def map_payload(
    body: str, *, source: Source, node: str, scrape_ts_ms: int, location: str = "",
    content_type: str | None = None,
) -> Mapped:
    """Parse ``body`` as ``source`` would and apply that source's mapping.

    Raises:
        ValueError: the payload is malformed (exposition errors name the line).
    """
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
        if storage.looks_like_diskstats(body):
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
    result = read_sysfs(path, node=node, scrape_ts_ms=scrape_ts_ms)
    notes = [f"{p.path}: {p.reason} {p.detail}".rstrip() for p in result.errors]
    if result.unavailable:
        notes.append(f"{result.unavailable} counter(s) read 'N/A (no PMA)'")
    return Mapped(rdma.map_sysfs(result), notes)


async def fetch(url: str, *, timeout_s: float, max_bytes: int, token_file: Path | None,
                ca_file: Path | None, insecure: bool) -> tuple[str, str | None]:
    """GET one page: its text and Content-Type (bearer token file and TLS as a collector's).

    Raises:
        ScrapeFailed: the reasons and messages a collector would report.
    """
    auth = BearerAuth(BearerTokenFile(token_file)) if token_file is not None else None
    ctx = None
    if url.startswith("https") and (ca_file is not None or insecure):
        ctx = tls_context(ca_file=ca_file, insecure=insecure)
    async with aiohttp.ClientSession() as session:
        return await fetch_page(session, url, timeout_s=timeout_s, max_body_bytes=max_bytes,
                                header_source=auth.headers if auth else None, ssl_context=ctx,
                                redact=auth.redact if auth else (lambda s: s))


__all__ = ["NORMALISED_PREFIX", "InspectError", "Mapped", "Source", "fetch", "map_payload",
           "read_sysfs_path"]
