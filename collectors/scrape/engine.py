"""The scrape engine shared by every HTTP collector.

Why one engine: timing, isolation and accounting are the hard part of
scraping, and they are the same whatever the exporter.  A collector is this
engine composed with what differs per source: a
:class:`~gpuslo.collectors.base.SourceMapping` (how a payload becomes samples
and how samples become upstream + normalised rows; pure) and, for sources read
from files, a :data:`~gpuslo.collectors.base.FileReader`.  The registry
(:mod:`gpuslo.collectors.registry`) does the composing.

Why a per-target scheduler: the collect stage
(:class:`~gpuslo.pipeline.stages.collect.CollectRunner`) can drive any
:class:`~gpuslo.collectors.base.Collector` through ``collect(now)``, which scrapes
every target and returns when the *slowest* one is done, so one hanging
target would hold every other target's batch back until its timeout.  The
engine therefore also offers :meth:`ScrapeEngine.run`: one task per target on
that target's own interval (with a stable per-node phase: a node's targets fire
together, the nodes apart), each result handed to the runner the moment it exists.  The
runner uses ``run`` when a collector has it and ``collect`` otherwise;
``collect`` stays for one-shot use (tests, ``gpuslo scrape``).

Guarantees per target, independent of the others:

* the fetch's limits (:func:`~gpuslo.collectors.scrape.http.fetch_page`):
  ``timeout_s`` for the whole request, ``max_body_bytes`` for the body;
* a payload with more than ``max_series`` samples is refused before parsing;
* at most ``concurrency`` requests are in flight per engine;
* samples that carry their own timestamp keep it; the others get the scrape
  time;
* a 503 (Ceph mgr warming up, an engine still loading its model) is reason
  ``not_ready`` and retried after ``not_ready_retry_s`` rather than a full
  interval; every other failure has a reason (``timeout``, ``connect``,
  ``http_<code>``, ``too_large``, ``too_many_series``, ``parse``) and never
  raises out of the engine.

Local files are targets too: a ``file://<path>`` target (a sysfs root, a
``/proc/diskstats``) is handed to the collector's file reader in a worker
thread (sysfs reads block, and a hung NFS-backed ``/proc`` must not stall the
event loop), on the same per-target schedule and with the same health rows,
so an unreadable file is ``up == 0`` with reason ``missing``/``unreadable``
rather than a crash.  A parse or read step that got *some* series and not
others returns :class:`Partial`; the target stays up and the per-series
problems are counted in ``gpuslo_scrape_series_errors_total{reason}``.

Each target's loop keeps its own parser
:class:`~gpuslo.collectors.exposition.ShapeCache`, so a repeated scrape of that
target only re-reads the numbers, however many targets the engine has.

Health is kept per target (:class:`TargetHealth`) and emitted with every scrape
as self-metric rows (``gpuslo_scrape_up``, ``gpuslo_scrape_duration_seconds``,
``gpuslo_scrape_samples``, ``gpuslo_scrape_errors_total{reason}``; source
``gpuslo``, entity = target URL), so a dead target is visible downstream as
``up == 0`` rather than as silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import aiohttp
import numpy as np
import polars as pl
from yarl import URL

from gpuslo.collectors.base import (
    FileReader,
    Partial,
    ScrapeTarget,
    SourceMapping,
    TargetResult,
    target_path,
)
from gpuslo.collectors.exposition import ShapeCache, detect_openmetrics, ts_column
from gpuslo.collectors.scrape.http import HeaderSource, ScrapeFailed, fetch_page
from gpuslo.pipeline.aio import Clock, sleep_or_stop, utc_now
from gpuslo.pipeline.config import ScrapeCollectorConfig
from gpuslo.pipeline.errors import InputError
from gpuslo.pipeline.schema import Kind, frame_from_rows

log = logging.getLogger(__name__)

HEALTH_SOURCE = "gpuslo"
UP = "gpuslo_scrape_up"
DURATION = "gpuslo_scrape_duration_seconds"
SAMPLES = "gpuslo_scrape_samples"
ERRORS = "gpuslo_scrape_errors_total"
SERIES_ERRORS = "gpuslo_scrape_series_errors_total"

# Payloads above this are parsed in a worker thread so the event loop keeps
# serving the other targets' timers (Polars releases the GIL for most of it).
_THREAD_PARSE_BYTES = 512 * 1024
_SAMPLE_LINE = re.compile(r"^[ \t]*[^#\s]", re.MULTILINE)


@dataclass(frozen=True)
class ScrapeSettings:
    """Limits and timing of one engine (one collector's targets)."""

    interval_s: float = 15.0
    timeout_s: float = 10.0
    jitter: float = 0.5  # share of the interval over which nodes' phases are spread
    bursts: int = 4  # groups of nodes that fire together in each interval (see phase)
    max_body_bytes: int = 64 * 1024 * 1024
    max_series: int = 200_000
    concurrency: int = 32
    not_ready_retry_s: float = 5.0
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class TargetHealth:
    """What is known about one target's scrapes (the engine's self-metrics)."""

    up: bool = False
    duration_s: float = 0.0
    samples: int = 0
    scrapes: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    # Series that could not be read in scrapes that otherwise worked (cumulative).
    series_errors: Counter[str] = field(default_factory=Counter)
    last_error: str | None = None
    last_reason: str | None = None
    last_problem: str | None = None
    # The health rows' frame, ts and values to be replaced, and its key (health_frame).
    rows: tuple[tuple[str, str, str, tuple[str, ...], tuple[str, ...]], pl.DataFrame] | None = (
        field(default=None, repr=False, compare=False))


Submit = Callable[[list[TargetResult]], Awaitable[object]]


class TargetSource(Protocol):
    """Where the engine gets its targets (see :mod:`~gpuslo.collectors.scrape.discovery`)."""

    refresh_s: float

    async def targets(self) -> list[ScrapeTarget]:
        """The current targets; on a failed lookup, the last known ones."""
        ...


def settings_from_config(cfg: ScrapeCollectorConfig) -> ScrapeSettings:
    """The engine settings of a collector's config section."""
    return ScrapeSettings(interval_s=cfg.interval_s, timeout_s=cfg.timeout_s, jitter=cfg.jitter,
                          bursts=cfg.bursts, max_body_bytes=cfg.max_body_bytes,
                          max_series=cfg.max_series, concurrency=cfg.concurrency)


def count_sample_lines(text: str) -> int:
    """Sample lines in an exposition payload (non-blank, not a comment); cheap, C-speed."""
    return sum(1 for _ in _SAMPLE_LINE.finditer(text))


def phase(key: str, interval_s: float, jitter: float, bursts: int | None = None) -> float:
    """A stable offset in ``[0, interval_s * jitter)`` for ``key``; with ``bursts``,
    rounded down to one of that many evenly spaced offsets.

    Stable (a hash, not a random draw) so a restart keeps each target's place in
    the interval.  The engine keys it by the target's *node*: the targets of one
    node fire together, so the collect stage can send their results as one
    record (one encoding, one Kafka request) instead of one per target, and their
    pages are parsed one after another with the code still in the CPU caches, while
    the nodes of a fleet, and so its agents, spread their load over the interval.

    ``bursts``: one process scraping many nodes fires them in that many groups.
    A node's scrape after a pause of even 20 ms finds the parser's, Polars' and
    aiohttp's code and data out of the CPU caches: timed in one process over the
    simulated fleet, 921-943 µs a page against 543 for nodes back to back, so
    nodes spread one by one paid that on every node (a third of the collector's
    CPU at 64 nodes, ``benchmarks/bench_collect.py``).  An agent on one node is
    one group whatever ``bursts`` is; the fleet's agents still spread.
    """
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
    width = interval_s * max(0.0, min(jitter, 1.0))
    if bursts is None or bursts < 1:
        return (h / 2**64) * width
    return (h * bursts >> 64) * (width / bursts)


def health_frame(
    health: TargetHealth, target: ScrapeTarget, *, collector: str, ts_ms: int
) -> pl.DataFrame:
    """Self-metric rows for one target after a scrape.

    Built column-wise: the rows' names, labels and entity depend only on the target
    and on which error reasons it has seen, so a frame of them is built once and
    kept on ``health``; a scrape only replaces its timestamp and value columns.
    """
    errors = sorted(health.errors.items())
    series_errors = sorted(health.series_errors.items())
    key = (collector, target.url, target.node, tuple(r for r, _ in errors),
           tuple(r for r, _ in series_errors))
    if health.rows is None or health.rows[0] != key:
        health.rows = (key, _health_rows(key))
    values = [1.0 if health.up else 0.0, health.duration_s, float(health.samples),
              *(float(n) for _, n in errors), *(float(n) for _, n in series_errors)]
    out = health.rows[1].clone()
    # From numpy, not from Python lists with a dtype: a tenth of the cost.
    out.replace_column(0, ts_column(ts_ms, len(values)))
    out.replace_column(5, pl.Series("value", np.array(values, dtype=np.float64)))
    return out


def _health_rows(key: tuple[str, str, str, tuple[str, ...], tuple[str, ...]]) -> pl.DataFrame:
    """A target's health rows with ``ts`` and ``value`` still to be filled in."""
    collector, url, node, reasons, series_reasons = key
    base = {"collector": collector, "target": url}
    rows: list[tuple[object, ...]] = [
        (0, node, HEALTH_SOURCE, UP, Kind.GAUGE, 0.0, url, base),
        (0, node, HEALTH_SOURCE, DURATION, Kind.GAUGE, 0.0, url, base),
        (0, node, HEALTH_SOURCE, SAMPLES, Kind.GAUGE, 0.0, url, base),
    ]
    rows += [(0, node, HEALTH_SOURCE, ERRORS, Kind.COUNTER, 0.0, url, {**base, "reason": r})
             for r in reasons]
    rows += [(0, node, HEALTH_SOURCE, SERIES_ERRORS, Kind.COUNTER, 0.0, url,
              {**base, "reason": r}) for r in series_reasons]
    return frame_from_rows(rows)


class ScrapeEngine:
    """Scrape a source's targets on their intervals, isolated from each other.

    Args:
        name: collector name (logs, self-metrics' ``collector`` label).
        settings: timing and limits.
        targets: a static list, or a :class:`TargetSource` (discovery).
        mapping: what the source does with a payload (parse, then transform).
        reader: reads a ``file://`` target (in a worker thread); without it such
            targets fail with reason ``internal``.
        ssl_context: TLS settings for ``https`` targets (``None``: system defaults).
        header_source: extra headers read before every request (rotating tokens).
        redact: applied to every error message (keeps secrets out of logs).
        clock: wall clock for scrape timestamps.
    """

    def __init__(
        self,
        name: str,
        settings: ScrapeSettings,
        targets: Sequence[ScrapeTarget] | TargetSource,
        mapping: SourceMapping,
        *,
        reader: FileReader | None = None,
        ssl_context: ssl.SSLContext | None = None,
        header_source: HeaderSource | None = None,
        redact: Callable[[str], str] | None = None,
        clock: Clock = utc_now,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.mapping = mapping
        self.source = mapping.source
        if isinstance(targets, Sequence):
            self._static: list[ScrapeTarget] | None = list(targets)
            self._discovery: TargetSource | None = None
        else:
            self._static = None
            self._discovery = targets
        self._reader = reader
        self._ssl = ssl_context
        self._header_source = header_source
        self._redact = redact or (lambda s: s)
        self._clock = clock
        self._session = session
        self._owns_session = session is None
        self._sem = asyncio.Semaphore(settings.concurrency)
        self.health: dict[str, TargetHealth] = {}
        self._urls: dict[str, URL] = {}  # each target's URL, parsed once
        # Each running target loop's parser cache, by URL (for its hit figures).
        self.shape_caches: dict[str, ShapeCache] = {}
        # The target loops' waits for their next scrape, ended early when stopping.
        self._naps: set[asyncio.Future[None]] = set()

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
            self._owns_session = True

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> ScrapeEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def current_targets(self) -> list[ScrapeTarget]:
        """The static list, or what discovery says now."""
        if self._static is not None:
            return list(self._static)
        assert self._discovery is not None
        return await self._discovery.targets()

    # ---- one scrape ---------------------------------------------------------------------

    async def collect(self, now: datetime) -> list[TargetResult]:
        """Scrape every target once, concurrently (the :class:`Collector` contract)."""
        await self.start()
        targets = await self.current_targets()
        return list(await asyncio.gather(*(self.scrape(t, now) for t in targets)))

    async def scrape(self, target: ScrapeTarget, now: datetime | None = None,
                     shape_cache: ShapeCache | None = None) -> TargetResult:
        """Scrape one target once; never raises for anything the target does.

        ``shape_cache`` is the target's own parser cache (its loop's); ``None``
        parses from scratch.
        """
        await self.start()
        now = now or self._clock()
        ts_ms = int(now.timestamp() * 1000)
        started = time.perf_counter()
        health = self.health.setdefault(target.url, TargetHealth())
        frame: pl.DataFrame | None = None
        error: str | None = None
        reason: str | None = None
        samples = 0
        problems: Mapping[str, int] = {}
        if shape_cache is not None:
            shape_cache.last = None  # a parse that uses the cache names its shape
        try:
            path = target_path(target)
            if path is not None:
                got = await self._run_read(target, path, ts_ms)
            else:
                async with self._sem:
                    text, content_type = await self._fetch(target)
                got = await self._run_parse(text, content_type, target, ts_ms, shape_cache)
            if isinstance(got, Partial):
                upstream, problems = got.frame, got.problems
                if problems and got.detail:
                    health.last_problem = self._redact(got.detail)
                    log.debug("%s: %s: %s", self.name, target.url, health.last_problem)
            else:
                upstream = got
            samples = upstream.height
            frame = self.mapping.transform(upstream, target, shape_cache)
        except ScrapeFailed as exc:
            error, reason = self._redact(str(exc)), exc.reason
        except Exception as exc:  # a mapping bug must not take the other targets down
            log.exception("%s: processing %s failed", self.name, target.url)
            error, reason = self._redact(f"{target.url}: {type(exc).__name__}: {exc}"), "internal"
        duration = time.perf_counter() - started
        health.scrapes += 1
        health.up = error is None
        health.duration_s = duration
        health.samples = samples
        health.last_error, health.last_reason = error, reason
        if reason is not None:
            health.errors[reason] += 1
        for problem, n in problems.items():
            if n:
                health.series_errors[problem] += n
        hf = health_frame(health, target, collector=self.name, ts_ms=ts_ms)
        assert health.rows is not None  # health_frame keeps them
        return TargetResult(target.url, target.node, frame, duration, error=error,
                            error_reason=reason, extra={"samples": float(samples)},
                            series_key=self._series_key(target, frame, shape_cache),
                            health=hf, health_key=(target.url, None, health.rows[0]))

    def _series_key(self, target: ScrapeTarget, frame: pl.DataFrame | None,
                    shapes: ShapeCache | None) -> Hashable | None:
        """What makes this scrape's series equal to another's (see ``TargetResult``).

        The parse's shape (from the target's own cache) and the mapping's promise
        that its transform depends on nothing else; or ``None`` when either is
        unknown (a file, a JSON page, a general-path parse).  The health rows have
        their own key (their columns' key, see ``health_frame``).
        """
        if frame is None or shapes is None or shapes.last is None or not self.mapping.structural:
            return None
        return (target.url, shapes.last, frame.height)

    async def _run_read(self, target: ScrapeTarget, path: str, ts_ms: int) -> (
            pl.DataFrame | Partial):
        if self._reader is None:
            raise ScrapeFailed("internal", f"{target.url}: this collector reads no files")
        timeout = self.settings.timeout_s
        try:
            # The thread cannot be cancelled; the timeout only stops waiting for it, so a
            # hung mount shows as ``timeout`` instead of freezing this target's schedule.
            return await asyncio.wait_for(asyncio.to_thread(self._reader, target, ts_ms), timeout)
        except TimeoutError:
            raise ScrapeFailed("timeout", f"{target.url}: not read within {timeout}s") from None
        except FileNotFoundError:
            raise ScrapeFailed("missing", f"{target.url}: {path} does not exist") from None
        except PermissionError as exc:
            raise ScrapeFailed("unreadable", f"{target.url}: {path}: {exc.strerror}") from None
        except OSError as exc:
            raise ScrapeFailed("unreadable", f"{target.url}: {path}: "
                               f"{exc.strerror or type(exc).__name__}") from None
        except ValueError as exc:
            raise ScrapeFailed("parse", f"{target.url}: malformed: {exc}") from None

    async def _run_parse(
        self, text: str, content_type: str | None, target: ScrapeTarget, ts_ms: int,
        shape_cache: ShapeCache | None,
    ) -> pl.DataFrame | Partial:
        # Lines bound sample lines from above: only a payload with more lines than the
        # limit needs counting (a regex pass costs as much as parsing a small page).
        if text.count("\n") >= self.settings.max_series and (
                (n := count_sample_lines(text)) > self.settings.max_series):
            raise ScrapeFailed("too_many_series", f"{target.url}: {n} samples exceed "
                               f"max_series {self.settings.max_series}")
        openmetrics = detect_openmetrics(text, content_type)
        parse = self.mapping.parse
        try:
            if len(text) > _THREAD_PARSE_BYTES:
                # One parse per target at a time (its loop waits), so the target's
                # shape cache is never used by two threads at once.
                return await asyncio.to_thread(parse, text, openmetrics, target, ts_ms,
                                               shape_cache)
            return parse(text, openmetrics, target, ts_ms, shape_cache)
        except (InputError, ValueError) as exc:
            raise ScrapeFailed("parse", f"{target.url}: malformed payload: {exc}") from None

    async def _fetch(self, target: ScrapeTarget) -> tuple[str, str | None]:
        assert self._session is not None
        s = self.settings
        parsed = self._urls.get(target.url)
        if parsed is None:
            parsed = self._urls[target.url] = URL(target.url)
        return await fetch_page(
            self._session, target.url, timeout_s=s.timeout_s, max_body_bytes=s.max_body_bytes,
            headers=s.headers, header_source=self._header_source, ssl_context=self._ssl,
            redact=self._redact, parsed=parsed,
        )

    # ---- the per-target scheduler -------------------------------------------------------

    async def run(self, submit: Submit, stop: asyncio.Event,
                  clock: Clock | None = None) -> None:
        """Scrape each target on its own interval until ``stop``; hand results to ``submit``.

        ``clock`` stamps the scrapes (default: the engine's own).

        Targets from discovery are re-read every ``refresh_s``: new ones get a
        task, vanished ones lose theirs.  Closes the engine's session on exit.
        """
        await self.start()
        tasks: dict[ScrapeTarget, asyncio.Task[None]] = {}
        try:
            while not stop.is_set():
                try:
                    wanted = set(await self.current_targets())
                except Exception:  # discovery must not stop the targets already known
                    log.exception("%s: target discovery failed", self.name)
                    wanted = set(tasks)
                for t in list(tasks):
                    if t not in wanted:
                        tasks.pop(t).cancel()
                        self.health.pop(t.url, None)
                        self.shape_caches.pop(t.url, None)
                        self._urls.pop(t.url, None)
                for t in wanted - set(tasks):
                    tasks[t] = asyncio.create_task(self._target_loop(t, submit, stop, clock),
                                                   name=f"scrape:{self.name}:{t.url}")
                refresh = self._discovery.refresh_s if self._discovery else None
                await sleep_or_stop(stop, refresh)
            for nap in self._naps:  # stopping: no target waits out its interval
                if not nap.done():
                    nap.set_result(None)
            if tasks:  # stopping: let scrapes in hand finish and be handed over
                await asyncio.wait(tasks.values(), timeout=self.settings.timeout_s + 1.0)
        finally:
            for task in tasks.values():
                task.cancel()
            for task in tasks.values():
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.aclose()

    async def _nap(self, loop: asyncio.AbstractEventLoop, delay_s: float) -> None:
        """Wait ``delay_s`` or until :meth:`run` sees the stop.

        Not ``sleep_or_stop``: its ``wait_for`` starts a task for the event's wait and,
        on the timeout every wait ends with, cancels it and waits for that, which
        costs a target loop more than a small page's parse.  One future and one
        timer here; ``run`` ends every pending nap once ``stop`` is set.
        """
        nap: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(delay_s, _wake, nap)
        self._naps.add(nap)
        try:
            await nap
        finally:
            timer.cancel()
            self._naps.discard(nap)

    async def _target_loop(self, target: ScrapeTarget, submit: Submit,
                           stop: asyncio.Event, clock: Clock | None) -> None:
        loop = asyncio.get_running_loop()
        interval = target.interval_s or self.settings.interval_s
        # The node's place in the interval: a node's targets fire in one burst (one
        # record), and their pages are fetched together and parsed one after another.
        # Spread over a tenth of the interval instead, each scrape ran alone with the
        # parser's, Polars' and aiohttp's code and data out of the CPU caches, and
        # cost about 40% more CPU (bench_collect.py, 8 and 64 simulated nodes).
        next_at = loop.time() + phase(target.node, interval, self.settings.jitter,
                                      self.settings.bursts)
        shapes = self.shape_caches[target.url] = ShapeCache()  # this target's alone
        while not stop.is_set():
            await self._nap(loop, max(0.0, next_at - loop.time()))
            if stop.is_set():
                return
            result = await self.scrape(target, clock() if clock is not None else None, shapes)
            try:
                await submit([result])
            except Exception:
                log.exception("%s: handing over the batch of %s failed", self.name, target.url)
            if result.error_reason == "not_ready":
                next_at = loop.time() + min(interval, self.settings.not_ready_retry_s)
                continue
            # Fixed grid: an overrun skips the missed slots instead of bunching up.
            next_at += interval
            now = loop.time()
            if next_at < now:
                next_at += ((now - next_at) // interval + 1) * interval


def _wake(nap: asyncio.Future[None]) -> None:
    if not nap.done():
        nap.set_result(None)


__all__ = [
    "DURATION",
    "ERRORS",
    "HEALTH_SOURCE",
    "SAMPLES",
    "SERIES_ERRORS",
    "UP",
    "ScrapeEngine",
    "ScrapeFailed",
    "ScrapeSettings",
    "TargetHealth",
    "TargetSource",
    "count_sample_lines",
    "health_frame",
    "phase",
    "settings_from_config",
]
