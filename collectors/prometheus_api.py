"""A Prometheus as a source of recorded samples: its HTTP API, read in chunks of time.

``gpuslo replay SPEC… --prometheus URL --start T --end T`` backtests against the
Prometheus a team already runs, with no export step.  This module fetches the
raw samples of exactly the series the specs select and returns them as sample
frames, the same frames :mod:`collectors.history` reads from an export of the
same data, so a replay over either gives the same report.

**What is fetched.**  For each selector of each spec (good, bad, total, the
gauge and the counter it is divided by; :func:`slo.rules.series_selectors`): the metric
and its label matchers as a PromQL series selector (the histogram bucket bound
as the ``le`` regex the rules use, so ``0.5`` and ``0.5`` spelled otherwise
both match).  Matchers on ``node``, ``source`` and ``entity`` are left out of
the query: those are columns gpuslo infers (the ``node`` label, else the host
of ``instance``), applied after the samples are read.  A counter name ending in
``_total`` also fetches the name without it (dcgm-exporter's counters are
stored so; read, they are named as the collectors name them).  A spec that
selects a normalised ``gpuslo_*`` signal fetches the upstream series it is
derived from.

**How.**  Raw samples come from instant queries of range selectors,
``selector[chunk]`` at the end of each chunk of ``[start, end]``, with samples
at the chunk's first instant dropped (Prometheus 2 ranges include it, 3's do
not), so every sample is read once.  Chunks are fetched in time order, up to
``concurrency`` queries at once; each frame holds one chunk.  Types come from
``/api/v1/metadata`` (kinds as the file reader gives them).  A failed request
(connection, timeout, 429, 5xx) is retried with exponential backoff; a
rejected one (4xx: a bad selector, "too many samples") is an error naming the
query.  Bearer token (a file re-read when it rotates) or basic auth, and TLS
verified against the system store or ``ca_file`` (a client certificate for
mutual TLS), unless ``insecure_skip_verify`` is asked for: all through
:mod:`gpuslo.pipeline.auth`, so a credential never reaches an error message.

The async client (:class:`PrometheusReader`) is the I/O; turning an API answer
into a frame (:func:`matrix_frame`) is pure.  :func:`iter_prometheus_frames`
runs the client on its own event loop in a thread behind a small queue, for a
synchronous consumer such as :func:`slo.backtest.replay` (memory stays a few
chunks whatever the span).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import ssl
import threading
from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import polars as pl

from gpuslo.collectors.exposition import sample_kind
from gpuslo.collectors.history import (
    OpenMetricsInputError,
    check_sample_times,
    infer_origin,
    replay_metrics,
)
from gpuslo.pipeline.auth import BasicAuth, BearerAuth, Secret, SecretSource, tls_context
from gpuslo.pipeline.schema import SAMPLE_SCHEMA, validate

DEFAULT_CHUNK = timedelta(hours=2)
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


class PrometheusSourceError(OpenMetricsInputError):
    """The Prometheus could not be read; names the URL and, when known, the query.

    A kind of :class:`~collectors.history.OpenMetricsInputError`, so a replay
    reports a bad source the same way whatever it reads.
    """

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


@dataclass(frozen=True)
class PrometheusSourceConfig:
    """Where and how to read.

    Attributes:
        url: the Prometheus base URL (``https://prom.example:9090``, a path prefix kept).
        bearer_token: sent as ``Authorization: Bearer`` (a string, or a
            :class:`~gpuslo.pipeline.auth.SecretSource` such as a token file re-read
            when it rotates); exclusive with basic auth.
        basic_auth: (user, password or its source).
        ca_file: CA bundle to verify the server's certificate against.
        cert_file, key_file: a client certificate (mutual TLS).
        insecure_skip_verify: do not verify TLS at all (asked for explicitly).
        timeout_s: per request.
        retries: attempts after the first for a failed request.
        chunk: time per query (a month of a fleet's series in one query exceeds
            Prometheus' ``--query.max-samples``).
        concurrency: queries in flight at once.
    """

    url: str
    bearer_token: str | SecretSource | None = None
    basic_auth: tuple[str, str | SecretSource] | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False
    timeout_s: float = 60.0
    retries: int = 4
    chunk: timedelta = DEFAULT_CHUNK
    concurrency: int = 4
    backoff_s: float = 0.5

    def problems(self) -> list[str]:
        """Every mistake in the settings, as ``field: message`` lines (empty when fine)."""
        out = []
        if not re.match(r"^https?://[^/]", self.url):
            out.append(f"url: must start with http:// or https://, got {self.url!r}")
        if self.bearer_token is not None and self.basic_auth is not None:
            out.append("bearer_token, basic_auth: give one of them")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not os.path.exists(path):
                out.append(f"{name}: {path} does not exist")
        if (self.cert_file is None) != (self.key_file is None):
            out.append("cert_file, key_file: give both for a client certificate")
        if self.insecure_skip_verify and self.ca_file is not None:
            out.append("ca_file, insecure_skip_verify: give one of them")
        if self.timeout_s <= 0:
            out.append("timeout_s: must be > 0")
        if self.retries < 0:
            out.append("retries: must be >= 0")
        if self.chunk < timedelta(minutes=1):
            out.append("chunk: must be at least a minute")
        if self.concurrency < 1:
            out.append("concurrency: must be >= 1")
        return out

    def auth(self) -> BearerAuth | BasicAuth | None:
        """The request authentication, credentials held as secrets (never printed)."""
        if self.bearer_token is not None:
            return BearerAuth(_source(self.bearer_token))
        if self.basic_auth is not None:
            user, password = self.basic_auth
            return BasicAuth(user, _source(password))
        return None


def _source(value: str | SecretSource) -> SecretSource:
    return Secret(value) if isinstance(value, str) else value


def make_ssl_context(cfg: PrometheusSourceConfig) -> ssl.SSLContext:
    """Verify against ``ca_file`` (or the system store); ``insecure_skip_verify`` turns
    checks off; ``cert_file``/``key_file`` add a client certificate."""
    return tls_context(ca_file=cfg.ca_file, cert_file=cfg.cert_file, key_file=cfg.key_file,
                       insecure=cfg.insecure_skip_verify)


# --------------------------------------------------------------------------------------------
# What to fetch (pure): selectors come from slo.rules.series_selectors
# --------------------------------------------------------------------------------------------


def expand_normalised(selectors: Sequence[str]) -> list[str]:
    """``selectors`` with each one naming a normalised ``gpuslo_*`` signal replaced by the
    upstream metrics it is derived from (a Prometheus holds those, not the signal)."""
    out: set[str] = set()
    for sel in selectors:
        m = re.fullmatch(r'\{__name__="(gpuslo_[a-zA-Z0-9_:]*)"[^{}]*\}', sel.strip())
        if m is None:
            out.add(sel)
            continue
        for name in sorted(replay_metrics([m.group(1)]) - {m.group(1)}):
            out.add(f'{{__name__="{name}"}}')
    return sorted(out)


# --------------------------------------------------------------------------------------------
# API answers to sample frames (pure)
# --------------------------------------------------------------------------------------------

_RESULT_SCHEMA = pl.Schema({"ts": pl.Int64(), "value": pl.String(), "metric": pl.String(),
                            "kind": pl.String(), "labels": SAMPLE_SCHEMA["labels"]})


def _family_of(name: str, types: dict[str, str]) -> tuple[str, str]:
    """(family, type) of a sample name from the metadata's family types."""
    if name in types:
        return name, types[name]
    for suffix in ("_total", "_created", "_bucket", "_count", "_sum", "_gcount", "_gsum",
                   "_info"):
        base = name.removesuffix(suffix)
        if base != name and base in types:
            return base, types[base]
    return name, "unknown"


def _type_by_suffix(metric: str) -> tuple[str, str]:
    """A family type from the name alone, where Prometheus has no metadata (backfilled
    data has none): ``_total`` a counter, ``_bucket``/``_count``/``_sum`` a histogram."""
    if metric.endswith("_total"):
        return "counter", metric
    for suffix in ("_bucket", "_count", "_sum"):
        if metric.endswith(suffix):
            return "histogram", metric.removesuffix(suffix)
    return "unknown", metric


def matrix_frame(result: Iterable[dict[str, Any]], types: dict[str, str],
                 after_ms: int, metrics: Collection[str] | None = None) -> pl.DataFrame:
    """A ``matrix`` result as a sample frame (before :func:`~collectors.history.infer_origin`).

    Samples at or before ``after_ms`` are dropped (a chunk is ``(after, end]``).  A
    counter sample without ``_total`` gets it, as the file reader names it; only
    ``metrics`` are kept when given.  ``types`` maps family names to their type.
    """
    ts: list[int] = []
    values: list[str] = []
    metric_col: list[str] = []
    kinds: list[str] = []
    labels_col: list[list[dict[str, str]]] = []
    for series in result:
        labels = dict(series["metric"])
        name = labels.pop("__name__", "")
        family, typ = _family_of(name, types)
        bare = not name.endswith(("_total", "_created"))
        asked = metrics is not None and name not in metrics and name + "_total" in metrics
        metric = name + "_total" if bare and (typ == "counter" or asked) else name
        if typ == "unknown":
            typ, family = _type_by_suffix(metric)
        if metrics is not None and metric not in metrics:
            continue
        kind_type = typ if typ not in ("untyped", "unknown") else "unknown"
        base = family.removesuffix("_total") if typ == "counter" else family
        kind = sample_kind(kind_type, base, metric).value
        lab = [{"name": k, "value": labels[k]} for k in sorted(labels)]
        for t, v in series.get("values", []):
            ms = round(float(t) * 1000)
            if ms <= after_ms:
                continue
            ts.append(ms)
            values.append(v)
            metric_col.append(metric)
            kinds.append(kind)
            labels_col.append(lab)
    frame = pl.DataFrame({"ts": ts, "value": values, "metric": metric_col, "kind": kinds,
                          "labels": labels_col},
                         schema=_RESULT_SCHEMA)
    return frame.select(
        pl.col("ts").cast(pl.Datetime("ms")).dt.replace_time_zone("UTC"),
        pl.lit("").alias("node"), pl.lit("").alias("source"), "metric",
        pl.col("kind").cast(SAMPLE_SCHEMA["kind"]),
        pl.col("value").cast(pl.Float64), pl.lit("").alias("entity"), "labels",
    )


# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------


@dataclass
class PrometheusReader:
    """Reads raw samples from one Prometheus: ``async with PrometheusReader(cfg) as r``."""

    cfg: PrometheusSourceConfig
    requests: int = 0
    retried: int = 0
    _session: aiohttp.ClientSession | None = field(default=None, repr=False)
    _auth: BearerAuth | BasicAuth | None = field(default=None, repr=False)

    async def __aenter__(self) -> PrometheusReader:
        problems = self.cfg.problems()
        if problems:
            raise PrometheusSourceError(f"{self.cfg.url}: " + "; ".join(problems))
        self._auth = self.cfg.auth()
        self._session = aiohttp.ClientSession(
            headers={"Accept": "application/json"},
            connector=aiohttp.TCPConnector(ssl=make_ssl_context(self.cfg)),
            timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _get(self, path: str, params: dict[str, str]) -> Any:
        """GET an API path, retrying what may pass; the ``data`` of a success.

        Every error message is redacted of the credentials sent (an answer may echo them).
        """
        try:
            return await self._get_once_retried(path, params)
        except PrometheusSourceError as exc:
            if self._auth is None:
                raise
            raise PrometheusSourceError(self._auth.redact(str(exc)),
                                        retriable=exc.retriable) from None

    async def _get_once_retried(self, path: str, params: dict[str, str]) -> Any:
        assert self._session is not None, "use PrometheusReader in 'async with'"
        url = self.cfg.url.rstrip("/") + path
        what = f"{url} {params.get('query', '')}".strip()
        delay = self.cfg.backoff_s
        for attempt in range(self.cfg.retries + 1):
            self.requests += 1
            try:
                headers = self._auth.headers() if self._auth is not None else None
                async with self._session.get(url, params=params, headers=headers) as resp:
                    body = await resp.text()
                    if resp.status == 200:
                        doc = _json(body, what)
                        if doc.get("status") != "success":
                            raise PrometheusSourceError(f"{what}: {doc.get('error', body[:300])}")
                        return doc.get("data")
                    reason = _error_of(body) or resp.reason or ""
                    if resp.status in (401, 403):
                        raise PrometheusSourceError(
                            f"{url}: HTTP {resp.status} {reason}: check the bearer token or "
                            "basic auth")
                    if resp.status not in _RETRY_STATUS:
                        raise PrometheusSourceError(f"{what}: HTTP {resp.status}: {reason}")
                    failure = f"HTTP {resp.status}: {reason}"
            except aiohttp.ClientConnectorCertificateError as exc:
                raise PrometheusSourceError(
                    f"{url}: TLS certificate not trusted ({exc.certificate_error}); give "
                    "ca_file, or insecure_skip_verify to skip the check") from exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if attempt < self.cfg.retries:
                self.retried += 1
                await asyncio.sleep(delay)
                delay *= 2
        raise PrometheusSourceError(
            f"{what}: failed {self.cfg.retries + 1} times, last: {failure}", retriable=True)

    async def types(self, metrics: Collection[str]) -> dict[str, str]:
        """Family types from ``/api/v1/metadata``, asked per family these names may belong to
        (a Prometheus holds metadata of what it scrapes; backfilled data has none)."""
        wanted = sorted(set(metrics) | {m.removesuffix(s) for m in metrics
                                        for s in ("_total", "_bucket", "_count", "_sum")})
        gate = asyncio.Semaphore(self.cfg.concurrency)

        async def one(name: str) -> tuple[str, Any]:
            async with gate:
                return name, await self._get("/api/v1/metadata", {"metric": name})

        out: dict[str, str] = {}
        for _, data in await asyncio.gather(*(one(n) for n in wanted)):
            for family, entries in (data or {}).items():
                if entries:
                    out[family] = str(entries[0].get("type", "unknown"))
        return out

    async def _chunk(self, selectors: Sequence[str], end: datetime, length: timedelta,
                     types: dict[str, str], metrics: Collection[str] | None,
                     gate: asyncio.Semaphore) -> pl.DataFrame:
        after_ms = int((end - length).timestamp() * 1000)
        window = f"{int(length.total_seconds() * 1000)}ms"

        async def one(sel: str) -> pl.DataFrame:
            async with gate:
                data = await self._get("/api/v1/query", {
                    "query": f"{sel}[{window}]", "time": f"{end.timestamp():.3f}"})
            if data is None or data.get("resultType") != "matrix":
                raise PrometheusSourceError(f"{self.cfg.url}: {sel}: expected a matrix result")
            return matrix_frame(data.get("result", []), types, after_ms, metrics)

        parts = await asyncio.gather(*(one(s) for s in selectors))
        return pl.concat([pl.DataFrame(schema=SAMPLE_SCHEMA), *parts])

    async def frames(
        self,
        selectors: Sequence[str],
        start: datetime,
        end: datetime,
        *,
        metrics: Collection[str] | None = None,
        now: datetime | None = None,
    ) -> AsyncIterator[pl.DataFrame]:
        """Sample frames of ``selectors`` over ``[start, end]``, one per chunk in time order.

        Raises:
            PrometheusSourceError: unreachable, refused, or a query rejected.
        """
        if end < start:
            raise PrometheusSourceError(f"{self.cfg.url}: end is before start")
        names = metrics if metrics is not None else []
        types = await self.types(names)
        gate = asyncio.Semaphore(self.cfg.concurrency)
        # The first chunk starts a millisecond early: its range excludes its first instant.
        lo = start.astimezone(UTC) - timedelta(milliseconds=1)
        while lo < end:
            hi = min(lo + self.cfg.chunk, end.astimezone(UTC))
            frame = await self._chunk(selectors, hi, hi - lo, types, metrics, gate)
            if frame.height:
                frame = infer_origin(frame)
                if metrics is not None:
                    frame = frame.filter(pl.col("metric").is_in(list(metrics)))
                frame = validate(frame)
                check_sample_times(frame, self.cfg.url, now)
                yield frame
            lo = hi


def _json(body: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise PrometheusSourceError(f"{what}: not a Prometheus API answer: {body[:200]!r}") \
            from exc
    if not isinstance(doc, dict):
        raise PrometheusSourceError(f"{what}: not a Prometheus API answer: {body[:200]!r}")
    return doc


def _error_of(body: str) -> str | None:
    m = re.search(r'"error"\s*:\s*"((?:[^"\\]|\\.)*)"', body)
    return m.group(1) if m else (body.strip()[:200] or None)


def iter_prometheus_frames(
    cfg: PrometheusSourceConfig,
    selectors: Sequence[str],
    metrics: Collection[str] | None,
    start: datetime,
    end: datetime,
    *,
    now: datetime | None = None,
    max_ahead: int = 4,
) -> Iterator[pl.DataFrame]:
    """Sample frames of ``selectors`` over ``[start, end]``, for a synchronous consumer.

    ``selectors``: PromQL series selectors (``slo.rules.series_selectors(specs)``);
    ``metrics``: the sample names to keep (``replay_metrics(input_metrics(specs))``).
    The client runs on its own event loop in a thread; at most ``max_ahead`` chunks
    wait in the queue, so memory stays a few chunks whatever the span.

    Raises:
        PrometheusSourceError: as :meth:`PrometheusReader.frames`.
    """
    selectors = expand_normalised(selectors)
    box: queue.Queue[pl.DataFrame | BaseException | None] = queue.Queue(maxsize=max_ahead)
    stop = threading.Event()

    async def produce() -> None:
        async with PrometheusReader(cfg) as reader:
            async for frame in reader.frames(selectors, start, end, metrics=metrics, now=now):
                while not stop.is_set():
                    try:
                        box.put(frame, timeout=0.1)
                        break
                    except queue.Full:
                        await asyncio.sleep(0)
                if stop.is_set():
                    return

    def run() -> None:
        try:
            asyncio.run(produce())
            box.put(None)
        except BaseException as exc:  # handed to the consumer, raised there
            box.put(exc)

    worker = threading.Thread(target=run, name="prometheus-source", daemon=True)
    worker.start()
    try:
        while True:
            item = box.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            try:
                box.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.1)


__all__ = [
    "DEFAULT_CHUNK",
    "PrometheusReader",
    "PrometheusSourceConfig",
    "PrometheusSourceError",
    "expand_normalised",
    "iter_prometheus_frames",
    "make_ssl_context",
    "matrix_frame",
]
