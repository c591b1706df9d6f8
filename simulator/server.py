"""One aiohttp server for the whole fleet: every node's exporters behind path prefixes
(``/nodes/node-3/dcgm/metrics``) or, optionally, each process on its own port.

The model advances to the clock's "now" before each page is drawn, so a page
is always consistent with itself.  ``GET /targets`` lists every URL (enough to
generate a collector config); ``POST /faults`` injects a fault while running;
``GET /faults`` returns the ground truth so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from aiohttp import web

from gpuslo.simulator.clock import SimClock
from gpuslo.simulator.endpoints import Endpoint, endpoints
from gpuslo.simulator.faults import FaultError, FaultSpec
from gpuslo.simulator.fleet import Fleet
from gpuslo.simulator.formats.sysfs import write_tree

log = logging.getLogger(__name__)


class Clock(Protocol):
    """Anything that says what simulated time it is now (epoch seconds)."""

    def now(self) -> float: ...


@dataclass(frozen=True)
class Target:
    """One scrapeable URL and what it is."""

    url: str
    node: str
    source: str  # the sample frame's ``source`` value a collector should use
    kind: str  # which upstream format (see :class:`simulator.endpoints.Endpoint`)
    entity: str | None = None


@dataclass(frozen=True)
class FileTarget:
    """A node's simulated ``/sys`` root and ``/proc/diskstats`` on disk."""

    node: str
    sys_root: Path
    diskstats: Path


class FleetServer:
    """Serve a :class:`Fleet` over HTTP on loopback (port 0 picks a free port)."""

    def __init__(
        self,
        fleet: Fleet,
        clock: Clock | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float = 60.0,
        per_endpoint_ports: bool = False,
        timestamps: bool = True,
        sysfs_dir: Path | None = None,
        sysfs_interval_s: float = 1.0,
    ) -> None:
        self.fleet = fleet
        self._clock = clock
        self._speed = speed
        self.host = host
        self.port = port
        self.per_endpoint_ports = per_endpoint_ports
        self.timestamps = timestamps
        self.sysfs_dir = sysfs_dir
        self.sysfs_interval_s = sysfs_interval_s
        self._endpoints = endpoints(fleet)
        self._runners: list[web.AppRunner] = []
        self._process_ports: dict[tuple[str, str], int] = {}
        self._main_port = 0
        self._sysfs_task: asyncio.Task[None] | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the sockets; with ``per_endpoint_ports`` one extra port per process."""
        if self._clock is None:
            loop = asyncio.get_running_loop()
            self._clock = SimClock(self.fleet.t, self._speed, real=loop.time)
        main = web.Application()
        main.router.add_get("/targets", self._targets)
        main.router.add_get("/faults", self._faults)
        main.router.add_post("/faults", self._inject)
        main.router.add_get("/healthz", self._healthz)
        if not self.per_endpoint_ports:
            for ep in self._endpoints:
                main.router.add_get(f"/nodes/{ep.node}/{ep.process}{ep.path}", self._page(ep))
        self._main_port = await self._serve(main, self.port)
        if self.per_endpoint_ports:
            by_process: dict[tuple[str, str], list[Endpoint]] = {}
            for ep in self._endpoints:
                by_process.setdefault((ep.node, ep.process), []).append(ep)
            for key, eps in by_process.items():
                app = web.Application()
                for ep in eps:
                    app.router.add_get(ep.path, self._page(ep))
                self._process_ports[key] = await self._serve(app, 0)
        if self.sysfs_dir is not None:
            self._write_sysfs()
            self._sysfs_task = asyncio.create_task(self._sysfs_loop())

    async def stop(self) -> None:
        """Close every site; safe to call twice."""
        if self._sysfs_task is not None:
            self._sysfs_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sysfs_task
            self._sysfs_task = None
        runners, self._runners = self._runners, []
        for r in runners:
            await r.cleanup()

    async def __aenter__(self) -> FleetServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, app: web.Application, port: int) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()  # a busy port must not leak the runner (callers retry)
            raise
        self._runners.append(runner)
        addr = runner.addresses[0]
        return int(addr[1])

    # ---- queries ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the main (index / faults / path-mode) site."""
        return f"http://{self.host}:{self._main_port}"

    def now(self) -> float:
        """Simulated time now (the clock's, not the model's last tick)."""
        assert self._clock is not None, "start() first"
        return self._clock.now()

    def url_of(self, ep: Endpoint) -> str:
        """Where ``ep`` is served in the current mode."""
        if self.per_endpoint_ports:
            return f"http://{self.host}:{self._process_ports[(ep.node, ep.process)]}{ep.path}"
        return f"{self.base_url}/nodes/{ep.node}/{ep.process}{ep.path}"

    def targets(self) -> list[Target]:
        """Every page, with node, sample source and format kind."""
        return [Target(self.url_of(ep), ep.node, ep.source, ep.kind, ep.entity)
                for ep in self._endpoints]

    def file_targets(self) -> list[FileTarget]:
        """Per-node sysfs roots and diskstats files (only with ``sysfs_dir``)."""
        if self.sysfs_dir is None:
            return []
        return [FileTarget(n.name, self.sysfs_dir / n.name / "sys",
                           self.sysfs_dir / n.name / "proc" / "diskstats")
                for n in self.fleet.nodes]

    def inject(self, fault: FaultSpec) -> FaultSpec:
        """Schedule a fault in the running fleet (same as ``POST /faults``)."""
        return self.fleet.inject(fault)

    # ---- handlers -----------------------------------------------------------------------

    def _advance(self) -> None:
        self.fleet.advance(self.now())

    def _page(
        self, ep: Endpoint
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            self._advance()
            ts = int(self.fleet.t * 1000) if self.timestamps else None
            body = ep.render(self.fleet, ts)
            if body is None:
                return web.Response(status=503, text="Service Unavailable\n")
            return web.Response(body=body.encode(), headers={"Content-Type": ep.content_type})

        return handler

    async def _targets(self, request: web.Request) -> web.StreamResponse:
        data = {
            "targets": [asdict(t) for t in self.targets()],
            "files": [{"node": f.node, "sys_root": str(f.sys_root),
                       "diskstats": str(f.diskstats)} for f in self.file_targets()],
        }
        return web.json_response(data)

    async def _faults(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"now_s": self.now(), "faults": self.fleet.ground_truth(),
                                  "benign": self.fleet.benign_truth()})

    async def _inject(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise FaultError("body must be a JSON object")
            now = self.now()
            start = float(body.get("start_s", now + float(body.get("start_in_s", 0.0))))
            fault = FaultSpec(kind=str(body["kind"]), target=str(body["target"]), start_s=start,
                              duration_s=float(body.get("duration_s", 600.0)),
                              intensity=float(body.get("intensity", 1.0)))
            self.inject(fault)
        except (FaultError, KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(fault.as_dict(), status=201)

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok\n")

    # ---- sysfs --------------------------------------------------------------------------

    def _write_sysfs(self) -> None:
        assert self.sysfs_dir is not None
        self._advance()
        write_tree(self.fleet, self.sysfs_dir)

    async def _sysfs_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sysfs_interval_s)
            try:
                self._write_sysfs()
            except OSError:
                log.exception("writing the simulated sysfs tree failed")
