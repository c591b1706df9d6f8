"""Generic Prometheus text-format scrape.

The parse step is a pure function (:func:`parse_text`) so the reference parser
(``prometheus_client``) can be swapped for a faster one without touching the
fetch loop.  The fetch loop is a thin aiohttp shell: one request per target,
each bounded by its own timeout, all targets concurrently, so one dead target
costs the others nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime

import aiohttp
import polars as pl
from prometheus_client.parser import text_string_to_metric_families

from collectors.base import TargetResult
from pipeline.config import PrometheusCollectorConfig
from pipeline.schema import SAMPLE_SCHEMA, Kind, canonical_labels

ParseFn = Callable[..., pl.DataFrame]

_SUFFIX_KIND = {
    "histogram": {
        "_bucket": Kind.HISTOGRAM_BUCKET,
        "_sum": Kind.HISTOGRAM_SUM,
        "_count": Kind.HISTOGRAM_COUNT,
        "_created": Kind.GAUGE,
    },
    "gaugehistogram": {
        "_bucket": Kind.HISTOGRAM_BUCKET,
        "_gsum": Kind.HISTOGRAM_SUM,
        "_gcount": Kind.HISTOGRAM_COUNT,
    },
    "summary": {"_sum": Kind.SUMMARY_SUM, "_count": Kind.SUMMARY_COUNT, "_created": Kind.GAUGE},
    "counter": {"_total": Kind.COUNTER, "_created": Kind.GAUGE},
}
_TYPE_KIND = {
    "counter": Kind.COUNTER,
    "gauge": Kind.GAUGE,
    "summary": Kind.SUMMARY_QUANTILE,
    "histogram": Kind.HISTOGRAM_BUCKET,
    "gaugehistogram": Kind.HISTOGRAM_BUCKET,
}


def sample_kind(family_type: str, family_name: str, sample_name: str) -> Kind:
    """The sample's kind from its family type and the suffix it carries."""
    suffix = sample_name[len(family_name) :] if sample_name.startswith(family_name) else ""
    by_suffix = _SUFFIX_KIND.get(family_type, {})
    if suffix in by_suffix:
        return by_suffix[suffix]
    return _TYPE_KIND.get(family_type, Kind.UNTYPED)


def _timestamp_ms(ts: object) -> int:
    """prometheus_client gives float seconds (text) or a Timestamp (OpenMetrics)."""
    if isinstance(ts, (int, float)):
        return int(ts * 1000)
    return int(float(ts) * 1000)  # type: ignore[arg-type]


def parse_text(
    text: str,
    *,
    node: str,
    source: str,
    scrape_ts_ms: int,
    entity_label: str | None = None,
) -> pl.DataFrame:
    """Parse Prometheus text exposition 0.0.4 into a sample frame.

    Samples without their own timestamp get ``scrape_ts_ms``.  ``entity`` is
    the value of ``entity_label`` when given and present, else the empty
    string; every upstream label is kept in ``labels`` untouched.

    Raises:
        ValueError: the payload is not valid exposition text (the message
            names the offending line where the parser says so).
    """
    ts: list[int] = []
    metric: list[str] = []
    kind: list[str] = []
    value: list[float] = []
    entity: list[str] = []
    labels: list[list[dict[str, str]]] = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            ts.append(_timestamp_ms(s.timestamp) if s.timestamp is not None else scrape_ts_ms)
            metric.append(s.name)
            kind.append(sample_kind(family.type, family.name, s.name).value)
            value.append(float(s.value))
            entity.append(s.labels.get(entity_label, "") if entity_label else "")
            labels.append(canonical_labels(s.labels))
    n = len(ts)
    return pl.DataFrame(
        {
            "ts": pl.Series(ts, dtype=pl.Int64).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC"),
            "node": [node] * n,
            "source": [source] * n,
            "metric": metric,
            "kind": kind,
            "value": value,
            "entity": entity,
            "labels": labels,
        },
        schema=SAMPLE_SCHEMA,
    )


class PrometheusCollector:
    """Scrape a static list of Prometheus text endpoints."""

    def __init__(
        self,
        config: PrometheusCollectorConfig,
        *,
        default_node: str,
        session: aiohttp.ClientSession | None = None,
        parse: ParseFn = parse_text,
    ) -> None:
        self.config = config
        self.name = config.name
        self._default_node = default_node
        self._session = session
        self._owns_session = session is None
        self._parse = parse

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> PrometheusCollector:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def collect(self, now: datetime) -> list[TargetResult]:
        if self._session is None:
            await self.start()
        scrape_ts_ms = int(now.timestamp() * 1000)
        return list(
            await asyncio.gather(
                *(
                    self._scrape_one(t.url, t.node or self._default_node, scrape_ts_ms)
                    for t in self.config.targets
                )
            )
        )

    async def _scrape_one(self, url: str, node: str, scrape_ts_ms: int) -> TargetResult:
        assert self._session is not None
        started = time.perf_counter()

        def failed(reason: str, message: str) -> TargetResult:
            return TargetResult(
                url, node, None, time.perf_counter() - started, error=message, error_reason=reason
            )

        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        try:
            async with self._session.get(url, timeout=timeout) as resp:
                if resp.status != 200:
                    return failed(f"http_{resp.status}", f"{url}: HTTP {resp.status}")
                body = await resp.content.read(self.config.max_body_bytes + 1)
                if len(body) > self.config.max_body_bytes:
                    return failed(
                        "body_too_large", f"{url}: body exceeds {self.config.max_body_bytes} bytes"
                    )
        except TimeoutError:
            return failed("timeout", f"{url}: no answer within {self.config.timeout_s}s")
        except aiohttp.ClientError as exc:
            return failed("connect", f"{url}: {type(exc).__name__}: {exc}")
        try:
            text = body.decode("utf-8")
            frame = self._parse(
                text, node=node, source=self.config.source, scrape_ts_ms=scrape_ts_ms
            )
        except (UnicodeDecodeError, ValueError) as exc:
            return failed("parse", f"{url}: malformed exposition: {exc}")
        return TargetResult(url, node, frame, time.perf_counter() - started)
