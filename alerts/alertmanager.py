"""SLO alerts to Alertmanager: a pure payload builder and an async sender.

Contract (Alertmanager ``docs/alerts_api.md`` and Prometheus' own notifier):

* ``POST /api/v2/alerts`` takes a JSON array of ``{labels, annotations, startsAt,
  endsAt, generatorURL}``; labels identify (deduplicate) an alert.
* A client re-sends firing alerts at a regular interval with ``endsAt`` in the
  future: Prometheus uses ``now + 4 × resend interval`` ("allow for two
  evaluation or Alertmanager send failures"), so a gpuslo that dies leaves
  alerts that resolve themselves instead of paging forever.
* A resolved alert is sent with ``endsAt`` = the time it resolved and re-sent
  for at least 5 minutes (Prometheus keeps 15), so a replica that missed the
  first one still resolves it.
* Every Alertmanager replica gets every alert: HA pairs deduplicate
  notifications by gossip, and a load balancer would split alerts between them.

:func:`build_alert` is pure (report + spec + explicit ``now`` in, dict out);
:class:`AlertmanagerClient` owns the timers, queues, retries and HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any, Literal
from urllib.parse import quote

import aiohttp

from gpuslo.exporters.base import DeliveryStats, ExportResult, Snapshot
from gpuslo.pipeline.auth import (
    BasicAuth,
    BearerAuth,
    TokenError,
    redact,
    secret_source,
    tls_context_from,
)
from gpuslo.pipeline.config import AlertmanagerConfig
from gpuslo.pipeline.errors import GpusloError
from gpuslo.slo import conventions as cv
from gpuslo.slo.alerting import AlertReport, AlertStatus
from gpuslo.slo.budget import SloReport
from gpuslo.slo.spec import SloSpec

log = logging.getLogger(__name__)

API_PATH = "/api/v2/alerts"
RESEND_FACTOR = 4
LabelKey = tuple[tuple[str, str], ...]


def utc_now() -> datetime:
    """The default clock (tests inject their own)."""
    return datetime.now(UTC)


def rfc3339(dt: datetime) -> str:
    """``2026-03-02T12:00:00.000Z``: the form Alertmanager's Go parser and UI expect."""
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def label_key(labels: Mapping[str, str]) -> LabelKey:
    """Alertmanager identifies an alert by its label set; so do the client's queues."""
    return tuple(sorted(labels.items()))


# ------------------------------------------------------------------------------------------
# Pure payload builder
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PayloadOptions:
    """What the builder needs besides the reports (from :class:`AlertmanagerConfig`)."""

    resend_interval: timedelta = timedelta(seconds=60)
    external_url: str | None = None
    runbook_url: str | None = None
    dashboard_url: str | None = None

    @classmethod
    def from_config(cls, cfg: AlertmanagerConfig) -> PayloadOptions:
        return cls(
            resend_interval=timedelta(seconds=cfg.resend_interval_s),
            external_url=cfg.external_url,
            runbook_url=cfg.runbook_url,
            dashboard_url=cfg.dashboard_url,
        )


def _pct(x: float) -> str:
    return f"{x * 100:.4g} %"


def _rate(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}x"


def _duration(d: timedelta) -> str:
    s = int(d.total_seconds())
    if s >= 86400:
        return f"{s // 86400}d {s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 60}m {s % 60}s"


def describe(alert: AlertReport, report: SloReport | None) -> str:
    """Human text with the burn rates that tripped the alert and the budget left.

    Burn rates per tier come from the alert (they are what the tier compared); the
    budget and time to exhaustion from the report of the same evaluation.
    """
    lines: list[str] = []
    tiers = [t for t in alert.tiers if t.breaching] or list(alert.tiers)
    for t in tiers:
        short, long = t.tier.split("-")[1:3] if t.tier.count("-") >= 2 else ("short", "long")
        verb = "burns" if t.breaching else "burned"
        lines.append(
            f"{t.tier}: error budget {verb} {_rate(t.long_burn_rate)} over {long} and "
            f"{_rate(t.short_burn_rate)} over {short} (threshold {t.factor:g}x)"
            + (" (no data)" if t.no_data else "")
        )
    if report is not None:
        period = cv.duration_label(report.period.window)
        if report.budget_remaining is not None:
            lines.append(f"Error budget left: {_pct(report.budget_remaining)} of the {period} "
                         f"period (objective {_pct(report.objective)}).")
        else:
            lines.append(f"Error budget left: unknown, no data for the {period} period.")
        if report.time_to_exhaustion is not None:
            lines.append(f"Exhausted in {_duration(report.time_to_exhaustion)} at the last "
                         f"hour's burn rate.")
    if alert.status is AlertStatus.RESOLVED and alert.resolved_at is not None:
        lines.append(f"Resolved at {rfc3339(alert.resolved_at)}.")
    return "\n".join(lines)


def _fill(template: str, slo_id: str, service: str) -> str:
    return template.replace("{slo}", quote(slo_id, safe="")).replace(
        "{service}", quote(service, safe=""))


def build_alert(
    alert: AlertReport,
    *,
    now: datetime,
    report: SloReport | None = None,
    spec: SloSpec | None = None,
    rca: str | None = None,
    options: PayloadOptions | None = None,
) -> dict[str, Any] | None:
    """One ``postableAlert`` for ``alert``, or None when there is nothing to send (pending).

    Labels: the SLO's metadata labels (made Prometheus-safe), then the scope labels,
    then ``alertname``, ``slo``, ``service`` and ``severity``, which always win so routes
    keyed on them cannot be hijacked by a scope label of the same name.

    ``endsAt`` is ``now + 4 × resend interval`` while firing and the resolution time
    once resolved.
    """
    if alert.status not in (AlertStatus.FIRING, AlertStatus.RESOLVED):
        return None
    opts = options or PayloadOptions()
    service = spec.service if spec is not None else alert.slo_id
    labels: dict[str, str] = {}
    if spec is not None:
        labels.update({cv.prometheus_label_name(k): v for k, v in spec.labels.items()})
    labels.update({cv.prometheus_label_name(k): v for k, v in alert.scope.items()})
    labels.update(alert.labels())
    labels[cv.ALERT_LABEL_SERVICE] = service

    name = spec.display_name or spec.name if spec is not None else alert.slo_id
    scope_txt = ", ".join(f"{k}={v}" for k, v in sorted(alert.scope.items()))
    annotations: dict[str, str] = {
        cv.ANNOTATION_SUMMARY: (
            f"[{alert.severity.value}] {service} {name} SLO"
            + (f" ({scope_txt})" if scope_txt else "")
            + (" is burning its error budget too fast" if alert.status is AlertStatus.FIRING
               else " error budget burn is back to normal")
        ),
        cv.ANNOTATION_DESCRIPTION: describe(alert, report),
    }
    spec_ann = dict(spec.annotations) if spec is not None else {}
    runbook = spec_ann.get(cv.ANNOTATION_RUNBOOK_URL) or (
        _fill(opts.runbook_url, alert.slo_id, service) if opts.runbook_url else None)
    dashboard = spec_ann.get(cv.ANNOTATION_DASHBOARD_URL) or (
        _fill(opts.dashboard_url, alert.slo_id, service) if opts.dashboard_url else None)
    if runbook:
        annotations[cv.ANNOTATION_RUNBOOK_URL] = runbook
    if dashboard:
        annotations[cv.ANNOTATION_DASHBOARD_URL] = dashboard
    if rca:
        annotations[cv.ANNOTATION_RCA] = rca

    starts = alert.fired_at or alert.active_since or alert.evaluated_at
    if alert.status is AlertStatus.FIRING:
        ends = now + RESEND_FACTOR * opts.resend_interval
    else:
        ends = alert.resolved_at or now
    out: dict[str, Any] = {
        "labels": labels,
        "annotations": annotations,
        "startsAt": rfc3339(starts),
        "endsAt": rfc3339(ends),
    }
    if opts.external_url:
        out["generatorURL"] = f"{opts.external_url.rstrip('/')}/slo/{quote(alert.slo_id, safe='')}"
    return out


def build_alerts(
    alerts: Iterable[AlertReport],
    *,
    now: datetime,
    reports: Iterable[SloReport] = (),
    specs: Mapping[str, SloSpec] | None = None,
    rca: Mapping[tuple[str, str], str] | None = None,
    options: PayloadOptions | None = None,
) -> list[dict[str, Any]]:
    """:func:`build_alert` for many; reports and RCA texts are matched by (SLO id, scope key)."""
    by_scope = {(r.slo_id, r.scope_key): r for r in reports}
    specs = specs or {}
    rca = rca or {}
    out = []
    for a in alerts:
        key = (a.slo_id, cv.scope_key(dict(a.scope)))
        payload = build_alert(a, now=now, report=by_scope.get(key), spec=specs.get(a.slo_id),
                              rca=rca.get(key), options=options)
        if payload is not None:
            out.append(payload)
    return out


# ------------------------------------------------------------------------------------------
# Async sender
# ------------------------------------------------------------------------------------------


@dataclass
class _Tracked:
    """An alert the client keeps re-sending: its last payload and when it resolved."""

    payload: dict[str, Any]
    resolved_at: datetime | None = None
    last_sent: datetime | None = None
    # Not sent before this time unless its causes come first (``rca_wait_s``).
    held_until: datetime | None = None

    def held(self, now: datetime) -> bool:
        return (self.held_until is not None and self.last_sent is None
                and self.resolved_at is None and now < self.held_until
                and _rca_of(self.payload) is None)


@dataclass
class _Destination:
    """One Alertmanager: its bounded queue (oldest first) and counters."""

    url: str
    capacity: int
    queue: OrderedDict[LabelKey, dict[str, Any]] = field(default_factory=OrderedDict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0
    errors: int = 0
    dropped: int = 0
    task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.drained.set()

    def put(self, key: LabelKey, payload: dict[str, Any]) -> None:
        # A newer version of an alert replaces the queued one (its endsAt is fresher) and
        # moves to the back; beyond capacity the oldest alert is dropped and counted.
        self.queue.pop(key, None)
        self.queue[key] = payload
        while len(self.queue) > self.capacity:
            self.queue.popitem(last=False)
            self.dropped += 1
        self.drained.clear()
        self.wake.set()


class AlertmanagerError(GpusloError):
    """A POST that failed; ``retriable`` says whether sending it again can help."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message, retriable=retriable)


def _rca_of(payload: Mapping[str, Any]) -> str | None:
    annotations = payload.get("annotations") or {}
    rca = annotations.get(cv.ANNOTATION_RCA)
    return str(rca) if rca is not None else None


class AlertmanagerClient:
    """Pushes SLO alerts to every configured Alertmanager and keeps them fresh.

    Feed it each evaluation's alerts with :meth:`submit` (or, as a push exporter,
    :meth:`export` a :class:`~exporters.base.Snapshot`).  It sends new, changed and
    resolved alerts at once, re-sends the rest every ``resend_interval_s``, and
    retries failed POSTs with exponential backoff per Alertmanager.  With
    ``rca_expected`` (a ranking side runs), a newly firing alert without causes yet
    waits for them up to ``rca_wait_s`` after it fired: Alertmanager notifies an
    alert once (until ``repeat_interval``), so what the pager gets is its first
    version.

    Args:
        cfg: URLs, auth, TLS, timings and limits.
        clock: source of ``now`` for timestamps (tests inject a fake).
        session: an aiohttp session to use instead of the client's own.
        rca_expected: whether causes will be ranked for the alerts (anomaly enabled).
    """

    kind: Literal["push"] = "push"

    def __init__(
        self,
        cfg: AlertmanagerConfig,
        *,
        clock: Callable[[], datetime] = utc_now,
        session: aiohttp.ClientSession | None = None,
        name: str = "alertmanager",
        rca_expected: bool = False,
    ) -> None:
        self.cfg = cfg
        self.name = name
        self.options = PayloadOptions.from_config(cfg)
        self.resend_interval = timedelta(seconds=cfg.resend_interval_s)
        self.rca_wait = timedelta(seconds=cfg.rca_wait_s if rca_expected else 0.0)
        self.resolved_retention = timedelta(seconds=cfg.resolved_retention_s)
        self._clock = clock
        self._session = session
        self._own_session = session is None
        self._tracked: dict[LabelKey, _Tracked] = {}
        self._dests = [_Destination(u.rstrip("/"), cfg.queue_capacity) for u in cfg.urls]
        self._resender: asyncio.Task[None] | None = None
        # Secrets from the config or from files (read now, so a missing file fails at
        # start-up; re-read when they change, so a rotated Secret is picked up).
        self._auth: BasicAuth | BearerAuth | None = None
        if cfg.basic_auth is not None:
            password = secret_source(cfg.basic_auth.password, cfg.basic_auth.password_file,
                                     what="Alertmanager password")
            assert password is not None  # the config requires one of the two
            self._auth = BasicAuth(cfg.basic_auth.username, password)
        token = secret_source(cfg.bearer_token, cfg.bearer_token_file,
                              what="Alertmanager bearer token")
        if token is not None:
            self._auth = BearerAuth(token)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the HTTP session and start one sender per Alertmanager plus the resend timer."""
        if self._resender is not None:
            return
        if self._session is None:
            needs_tls = any(d.url.startswith("https://") for d in self._dests)
            connector = aiohttp.TCPConnector(
                ssl=tls_context_from(self.cfg.tls) if needs_tls else False)
            self._session = aiohttp.ClientSession(connector=connector)
        for d in self._dests:
            d.task = asyncio.create_task(self._sender(d), name=f"alertmanager-sender {d.url}")
        self._resender = asyncio.create_task(self._resend_loop(), name="alertmanager-resend")

    async def shutdown(self, flush_timeout_s: float | None = None) -> None:
        """Try to deliver what is queued (up to ``flush_timeout_s``, default the request
        timeout), then stop; idempotent."""
        if self._resender is None:
            return
        with contextlib.suppress(TimeoutError):
            await self.flush(self.cfg.timeout_s if flush_timeout_s is None else flush_timeout_s)
        tasks = [self._resender, *(d.task for d in self._dests if d.task is not None)]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._resender = None
        for d in self._dests:
            d.task = None
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    stop = shutdown

    async def __aenter__(self) -> AlertmanagerClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    # -- feeding ----------------------------------------------------------------------------

    def submit(
        self,
        alerts: Iterable[AlertReport],
        *,
        reports: Iterable[SloReport] = (),
        specs: Mapping[str, SloSpec] | None = None,
        rca: Mapping[tuple[str, str], str] | None = None,
        now: datetime | None = None,
        complete: bool = True,
    ) -> int:
        """Take one evaluation's alerts; returns how many alerts were queued per Alertmanager.

        ``alerts`` is what :meth:`slo.alerting.AlertEvaluator.evaluate` returned. With
        ``complete`` (the default) it is the whole current set, so a tracked firing alert
        missing from it is resolved now, as Prometheus resolves an alert whose series vanished.
        """
        now = now or self._clock()
        queued = 0
        seen: set[LabelKey] = set()
        by_scope = {(r.slo_id, r.scope_key): r for r in reports}
        specs = specs or {}
        rca = rca or {}
        for a in alerts:
            sk = (a.slo_id, cv.scope_key(dict(a.scope)))
            payload = build_alert(a, now=now, report=by_scope.get(sk), spec=specs.get(a.slo_id),
                                  rca=rca.get(sk), options=self.options)
            if payload is None:
                continue
            key = label_key(payload["labels"])
            seen.add(key)
            old = self._tracked.get(key)
            if a.status is AlertStatus.FIRING:
                # New or re-fired: send now.  Otherwise only the payload is refreshed (burn
                # rates change every evaluation) and goes out on the next re-send, as
                # Prometheus does; sending every evaluation would only load Alertmanager.
                fresh = old is None or old.resolved_at is not None
                # A new ranking of its causes is sent at once too: the first one, made when
                # the alert fires, may lack the digests of the last minutes before it.
                reranked = old is not None and _rca_of(old.payload) != _rca_of(payload)
                last_sent = None if fresh or reranked or old is None else old.last_sent
                # Held for its causes from when it fired (a stage 2 that restarted and
                # restored an alert that fired long ago holds nothing).
                held_until = (a.fired_at + self.rca_wait
                              if fresh and a.fired_at is not None and self.rca_wait
                              else None if fresh or old is None else old.held_until)
                self._tracked[key] = _Tracked(payload, None, last_sent, held_until)
            else:  # RESOLVED
                if old is not None and old.resolved_at is not None:
                    continue  # already resolved and being re-sent
                resolved_at = a.resolved_at or now
                if old is not None:  # keep the firing annotations, as Prometheus does
                    payload = {**old.payload, "endsAt": rfc3339(resolved_at)}
                self._tracked[key] = _Tracked(payload, resolved_at, None)
        if complete:
            for key, t in self._tracked.items():
                if key not in seen and t.resolved_at is None:
                    t.resolved_at = now
                    t.payload = {**t.payload, "endsAt": rfc3339(now)}
                    t.last_sent = None
        queued += self.tick(now)
        return queued

    async def export(self, snapshot: Snapshot) -> ExportResult:
        """Push-exporter entry point: submit the snapshot's alerts (delivery is asynchronous).

        SUCCESS means accepted for delivery; a full queue still returns SUCCESS (the drop is
        counted in :meth:`stats`), because blocking the engine on Alertmanager is worse.
        """
        try:
            self.submit(snapshot.alerts, reports=snapshot.reports, specs=snapshot.specs,
                        rca=snapshot.rca, now=snapshot.taken_at)
        except Exception:
            log.exception("building Alertmanager payloads failed")
            return ExportResult.FAILURE
        return ExportResult.SUCCESS

    def tick(self, now: datetime | None = None) -> int:
        """Queue every alert that is due (never sent, or last sent a resend interval ago);
        forget resolved alerts past the retention.  Returns how many were queued."""
        now = now or self._clock()
        queued = 0
        for key in list(self._tracked):
            t = self._tracked[key]
            if t.resolved_at is not None and now - t.resolved_at > self.resolved_retention:
                del self._tracked[key]
                continue
            if t.last_sent is not None and now - t.last_sent < self.resend_interval:
                continue
            if t.held(now):
                continue
            if t.resolved_at is None:  # a fresh endsAt on every re-send of a firing alert
                t.payload = {**t.payload, "endsAt": rfc3339(
                    now + RESEND_FACTOR * self.resend_interval)}
            t.last_sent = now
            for d in self._dests:
                d.put(key, t.payload)
            queued += 1
        return queued

    # -- introspection ----------------------------------------------------------------------

    def stats(self) -> dict[str, DeliveryStats]:
        """Per Alertmanager URL: sent, failed requests, dropped, queued (for self-metrics)."""
        return {d.url: DeliveryStats(d.sent, d.errors, d.dropped, len(d.queue))
                for d in self._dests}

    def queued(self, url: str) -> list[dict[str, Any]]:
        """The alerts waiting for ``url``, oldest first."""
        for d in self._dests:
            if d.url == url.rstrip("/"):
                return list(d.queue.values())
        raise KeyError(url)

    def tracked(self) -> list[dict[str, Any]]:
        """Every alert being kept fresh (firing, or resolved within the retention)."""
        return [t.payload for t in self._tracked.values()]

    async def flush(self, timeout_s: float) -> None:
        """Wait until every queue is empty; TimeoutError after ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            for d in self._dests:
                await d.drained.wait()

    # -- background -------------------------------------------------------------------------

    async def _resend_loop(self) -> None:
        period = self.resend_interval.total_seconds()
        while True:
            await asyncio.sleep(period)
            try:
                self.tick()
            except Exception:  # never let a bug stop re-sends of firing alerts
                log.exception("Alertmanager resend tick failed")

    async def _sender(self, d: _Destination) -> None:
        backoff = self.cfg.backoff_initial_s
        while True:
            if not d.queue:
                d.wake.clear()
                await d.wake.wait()
                continue
            batch = list(islice(d.queue.items(), self.cfg.max_batch))
            try:
                await self._post(d.url, [p for _, p in batch])
            except AlertmanagerError as exc:
                d.errors += 1
                if not exc.retriable:
                    log.error("Alertmanager %s rejected %d alert(s), dropping them: %s",
                              d.url, len(batch), exc)
                    self._remove(d, batch)
                    d.dropped += len(batch)
                    continue
                log.warning("Alertmanager %s: %s; retrying in %.1fs", d.url, exc, backoff)
                await asyncio.sleep(backoff * (0.8 + 0.4 * random.random()))
                backoff = min(backoff * 2, self.cfg.backoff_max_s)
                continue
            backoff = self.cfg.backoff_initial_s
            d.sent += len(batch)
            self._remove(d, batch)

    @staticmethod
    def _remove(d: _Destination, batch: Sequence[tuple[LabelKey, dict[str, Any]]]) -> None:
        # Only remove what was sent: a newer version queued meanwhile must still go out.
        for key, payload in batch:
            if d.queue.get(key) is payload:
                del d.queue[key]
        if not d.queue:
            d.drained.set()

    async def _post(self, base: str, alerts: list[dict[str, Any]]) -> None:
        assert self._session is not None, "start() the client first"
        url = base + API_PATH
        headers = {"Content-Type": "application/json"}
        try:
            if self._auth is not None:
                headers.update(self._auth.headers())
        except TokenError as exc:  # a secret file gone missing: retried, like a network error
            raise AlertmanagerError(f"POST {url}: {exc}", retriable=True) from exc
        try:
            async with self._session.post(
                url, json=alerts, headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
            ) as resp:
                if resp.status // 100 == 2:
                    return
                body = (await resp.text())[:500]
                retriable = resp.status >= 500 or resp.status in (408, 429)
                raise AlertmanagerError(
                    self._redact(f"POST {url}: HTTP {resp.status}: {body}"), retriable=retriable)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise AlertmanagerError(self._redact(
                f"POST {url} failed within {self.cfg.timeout_s}s: {exc!r}"), retriable=True
            ) from exc

    def _redact(self, text: str) -> str:
        """``text`` with the credentials sent scrubbed (an error may quote the request)."""
        return self._auth.redact(text) if self._auth is not None else redact(text, ())
