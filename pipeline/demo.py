"""`gpuslo demo`: the whole path on one machine with nothing installed but gpuslo.

Embedded broker → collectors scraping endpoints the demo serves itself →
Kafka → a live view of what arrives.  Later stages plug into the same
composition.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from rich.console import Console
from rich.live import Live

from collectors.prometheus import PrometheusCollector
from pipeline.broker import EmbeddedBroker
from pipeline.config import (
    ConsumerConfig,
    GpusloConfig,
    KafkaConfig,
    PrometheusCollectorConfig,
    PrometheusTarget,
)
from pipeline.kafka import SampleConsumer, SampleProducer, TransportError, ensure_topics
from pipeline.runtime import CollectRunner, run_until
from pipeline.tail import SampleTail


class DemoExporter:
    """A tiny DCGM-shaped endpoint served with prometheus-client, values moving each scrape."""

    def __init__(self, node: str, gpus: int = 4, seed: int = 0) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=True)
        self._rng = random.Random(seed)
        labels = ["gpu", "UUID", "modelName", "Hostname"]
        self._util = Gauge(
            "DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", labels, registry=self.registry
        )
        self._power = Gauge(
            "DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", labels, registry=self.registry
        )
        self._temp = Gauge(
            "DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", labels, registry=self.registry
        )
        self._energy = Counter(
            "gpuslo_demo_energy_joules", "Energy used.", labels, registry=self.registry
        )
        self._gpus = [
            (str(i), f"GPU-{node}-{i:04d}", "NVIDIA H100 80GB HBM3", node) for i in range(gpus)
        ]
        self._step = 0

    def render(self) -> bytes:
        self._step += 1
        phase = math.sin(self._step / 5.0)
        for g in self._gpus:
            util = max(0.0, min(100.0, 60 + 30 * phase + self._rng.gauss(0, 5)))
            power = 90 + 6 * util
            self._util.labels(*g).set(round(util))
            self._power.labels(*g).set(power)
            self._temp.labels(*g).set(35 + util * 0.4)
            self._energy.labels(*g).inc(power)
        return generate_latest(self.registry)


@dataclass
class DemoServer:
    """Serve one DemoExporter per node on a loopback port."""

    nodes: int = 2
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        self.exporters = {f"node-{i}": DemoExporter(f"node-{i}", seed=i) for i in range(self.nodes)}
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> DemoServer:
        app = web.Application()

        async def metrics(request: web.Request) -> web.Response:
            exporter = self.exporters.get(request.match_info["node"])
            if exporter is None:
                raise web.HTTPNotFound()
            return web.Response(body=exporter.render(), content_type="text/plain", charset="utf-8")

        app.router.add_get("/nodes/{node}/metrics", metrics)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def targets(self) -> list[PrometheusTarget]:
        return [
            PrometheusTarget(url=f"http://{self.host}:{self.port}/nodes/{n}/metrics", node=n)
            for n in self.exporters
        ]


async def tail_samples(
    kafka: KafkaConfig,
    consumer_cfg: ConsumerConfig,
    stop: asyncio.Event,
    on_update: Callable[[SampleTail], None],
    *,
    bootstrap_servers: str | None = None,
    group_id: str = "gpuslo-tail",
) -> SampleTail:
    """Consume the samples topic until ``stop`` and then until drained; commit after counting."""
    tail = SampleTail()
    async with SampleConsumer(
        kafka,
        consumer_cfg,
        [kafka.topics.samples],
        group_id=group_id,
        bootstrap_servers=bootstrap_servers,
    ) as consumer:
        while True:
            try:
                batches = await consumer.poll(timeout_ms=250)
            except TransportError as exc:
                if not exc.retriable or stop.is_set():
                    raise
                await asyncio.sleep(1)
                continue
            if stop.is_set() and not batches:
                break  # drained what was produced before the stop
            for b in batches:
                if b.frame is None:
                    tail.dead += 1
                else:
                    tail.add(b.frame)
            if batches:
                await consumer.commit(batches)
                on_update(tail)
    return tail


async def run_demo(
    duration_s: float | None, interval_s: float, nodes: int, console: Console
) -> SampleTail:
    cfg = GpusloConfig(node="demo")
    async with EmbeddedBroker() as broker:
        servers = broker.bootstrap_servers
        console.print(f"[bold]gpuslo demo[/]: embedded Kafka-compatible broker on {servers}")
        await ensure_topics(
            cfg.kafka, [cfg.kafka.topics.samples, cfg.kafka.topics.dlq], bootstrap_servers=servers
        )
        fleet = await DemoServer(nodes=nodes).start()
        try:
            ccfg = PrometheusCollectorConfig(
                name="demo",
                source="dcgm",
                targets=fleet.targets(),
                interval_s=interval_s,
                timeout_s=min(5.0, interval_s),
            )
            console.print(f"scraping {len(ccfg.targets)} endpoints every {interval_s}s")
            stop = asyncio.Event()
            async with (
                SampleProducer(cfg.kafka, bootstrap_servers=servers) as producer,
                PrometheusCollector(ccfg, default_node=cfg.node) as collector,
            ):
                runner = CollectRunner(
                    [(collector, interval_s)], producer, cfg.kafka.topics.samples
                )
                with Live(
                    SampleTail().table(),
                    console=console,
                    refresh_per_second=4,
                    transient=not console.is_terminal,
                ) as live:
                    tail_task = asyncio.create_task(
                        tail_samples(
                            cfg.kafka,
                            cfg.consumer,
                            stop,
                            lambda t: live.update(t.table()),
                            bootstrap_servers=servers,
                        )
                    )
                    await run_until(stop, duration_s, runner.run(stop))
                    tail = await tail_task
                console.print(tail.table())
                console.print(
                    f"produced {runner.stats.samples_produced} samples in "
                    f"{runner.stats.records_produced} records; samples seen: {tail.samples}"
                )
                return tail
        finally:
            await fleet.stop()
