"""gpuslo's Alertmanager webhook receiver.

Alertmanager POSTs a JSON body (webhook payload version "4",
``notify/webhook/webhook.go``) to every ``webhook_configs`` URL.  The receiver:

* requires ``Authorization: Bearer <token>`` (Alertmanager's
  ``http_config.authorization``), checked before the body is read, so an
  unauthenticated client cannot make it buffer anything;
* refuses bodies over ``max_body_bytes`` with 413, a body that has not
  arrived within ``body_timeout_s`` with 408 (a stalled or malformed chunked
  upload would otherwise hold its connection forever), malformed JSON or a
  payload that is not version 4 with 400, and stores nothing in those cases;
* keeps the last ``keep`` notifications in memory, readable with ``GET`` (same
  token);
* runs an ``on_alert`` hook for firing alerts that came from gpuslo's generated
  Prometheus rules (they carry ``sloth_id``) and have no ``rca`` annotation yet,
  so alerts evaluated by Prometheus get the same explanation as alerts gpuslo
  pushes itself.  A failing hook is logged and counted; Alertmanager still gets
  200, since a retry would not make the hook succeed.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpuslo.pipeline.auth import secret_source
from gpuslo.pipeline.config import ReceiverConfig
from gpuslo.slo import conventions as cv

log = logging.getLogger(__name__)


class WebhookAlert(BaseModel):
    """One alert of a notification (Alertmanager ``template.Alert``)."""

    # Newer Alertmanager releases add fields; accept them rather than break on upgrade.
    model_config = ConfigDict(extra="allow", frozen=True)

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime
    endsAt: datetime  # 0001-01-01T00:00:00Z when the client gave none
    generatorURL: str = ""
    fingerprint: str = ""


class WebhookMessage(BaseModel):
    """A whole notification (``webhook.Message``: ``template.Data`` + version, groupKey)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    version: Literal["4"]
    groupKey: str
    status: Literal["firing", "resolved"]
    receiver: str
    alerts: list[WebhookAlert]
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    truncatedAlerts: int = Field(0, ge=0)


@dataclass(frozen=True)
class Notification:
    """A stored notification, with the RCA texts the hook produced (by alert fingerprint)."""

    received_at: datetime
    message: WebhookMessage
    rca: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "received_at": self.received_at.isoformat(),
            "message": self.message.model_dump(mode="json"),
            "rca": dict(self.rca),
        }


OnAlert = Callable[[WebhookAlert], "str | Awaitable[str | None] | None"]


def from_generated_rules(alert: WebhookAlert) -> bool:
    """Did Prometheus evaluate this alert from gpuslo's generated rules (not gpuslo itself)?"""
    return cv.LABEL_ID in alert.labels and cv.ALERT_LABEL_SERVICE not in alert.labels


class WebhookReceiver:
    """The aiohttp app and its in-memory store.

    Args:
        cfg: listen address, path, token, body cap, how many notifications to keep.
        on_alert: called per firing alert from generated rules; returns RCA text or None.
        clock: source of ``received_at``.
    """

    def __init__(
        self,
        cfg: ReceiverConfig,
        *,
        on_alert: OnAlert | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        token = secret_source(cfg.token, cfg.token_file, what="receiver token")
        if token is None or not token.get().reveal():
            raise ValueError("alerts.receiver.token or alerts.receiver.token_file is required: "
                             "the receiver never runs open")
        self.cfg = cfg
        self.on_alert = on_alert
        self._clock = clock
        # Read per request: a token file is re-read when its Secret rotates (one stat).
        self._token = token
        self.notifications: deque[Notification] = deque(maxlen=cfg.keep)
        self.rejected: Counter[int] = Counter()  # by HTTP status
        self.hook_errors = 0
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.app = self._make_app()

    def _make_app(self) -> web.Application:
        # client_max_size makes aiohttp itself refuse larger bodies with 413 while reading.
        app = web.Application(client_max_size=self.cfg.max_body_bytes)
        app.router.add_post(self.cfg.path, self._post)
        app.router.add_get(self.cfg.path, self._get)
        return app

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> WebhookReceiver:
        """Listen on ``cfg.host:cfg.port`` (port 0 picks a free one; see :attr:`port`)."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.cfg.host, self.cfg.port).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> WebhookReceiver:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """The webhook URL to put in Alertmanager's config."""
        return f"http://{self.cfg.host}:{self.port}{self.cfg.path}"

    # -- handlers ---------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        # aiohttp decodes header bytes as UTF-8 with surrogateescape: encoding the same
        # way gives the bytes the client sent, whatever they were (a plain encode()
        # raised on a non-UTF-8 token, which answered 500).
        sent = token.strip().encode("utf-8", "surrogateescape")
        expected = self._token.get().reveal().encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(sent, expected)

    def _refuse(self, status: int, message: str) -> web.Response:
        self.rejected[status] += 1
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return web.json_response({"error": message}, status=status, headers=headers)

    async def _post(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._refuse(401, "missing or wrong bearer token")
        if request.content_length is not None and request.content_length > self.cfg.max_body_bytes:
            return self._refuse(413, f"body over {self.cfg.max_body_bytes} bytes")
        try:
            body = await asyncio.wait_for(request.read(), self.cfg.body_timeout_s)
        except TimeoutError:
            return self._refuse(408, f"body not received within {self.cfg.body_timeout_s:g} s")
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(413, f"body over {self.cfg.max_body_bytes} bytes")
        except ConnectionResetError:  # the client went away mid-body: nothing to answer
            return self._refuse(400, "connection lost before the whole body arrived")
        try:
            message = WebhookMessage.model_validate(json.loads(body))
        except (ValueError, ValidationError) as exc:  # JSONDecodeError is a ValueError
            return self._refuse(400, f"not an Alertmanager webhook v4 payload: {exc}"[:2000])
        except RecursionError:  # JSON nested deeper than the interpreter's stack
            return self._refuse(400, "not an Alertmanager webhook v4 payload: nested too deep")
        rca = await self._run_hook(message)
        self.notifications.append(Notification(self._clock(), message, rca))
        return web.json_response({"status": "ok", "alerts": len(message.alerts)})

    async def _get(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._refuse(401, "missing or wrong bearer token")
        return web.json_response([n.to_dict() for n in self.notifications])

    async def _run_hook(self, message: WebhookMessage) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.on_alert is None:
            return out
        for alert in message.alerts:
            if alert.status != "firing" or not from_generated_rules(alert):
                continue
            if cv.ANNOTATION_RCA in alert.annotations:
                continue
            try:
                result = self.on_alert(alert)
                if inspect.isawaitable(result):
                    result = await asyncio.wait_for(result, timeout=10)
            except Exception:
                self.hook_errors += 1
                log.exception("on_alert hook failed for %s", alert.labels)
                continue
            if isinstance(result, str) and result:
                out[alert.fingerprint or json.dumps(alert.labels, sort_keys=True)] = result
        return out
