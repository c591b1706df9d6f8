"""``gpuslo anomaly``: the anomaly scoring stage as its own process."""

from __future__ import annotations

from gpuslo.pipeline.aio import StopEvent, run_until, stop_line
from gpuslo.pipeline.app.cli.common import (
    ConfigOption,
    DurationOption,
    console,
    finish,
    load_or_exit,
    run_async,
)
from gpuslo.pipeline.app.wiring import (
    connect_kafka,
    http_address,
    score_runner,
    scoring,
    serving,
)
from gpuslo.pipeline.readiness import Readiness
from gpuslo.pipeline.stages.publish import health_snapshot, publish_health

# After the drain (shutdown.aggregate_grace_s), stopping the embedded broker gets this long.
HARD_STOP_MARGIN_S = 5.0


def anomaly(config: ConfigOption = None, duration: DurationOption = None) -> None:
    """Score anomalies of gpuslo.samples and publish per-minute digests to gpuslo.digests.

    Scales with the members of group anomaly.group_id (the samples are partitioned
    by node).  Run it beside `gpuslo aggregate` with anomaly.score: false; that one
    then only ranks the causes of its alerts from the digests.  Checkpoints under
    slo.checkpoint_dir; serves its health on exporters.prometheus.  SIGTERM or
    Ctrl-C drains (limit: shutdown.aggregate_grace_s).
    """
    cfg = load_or_exit(config)

    async def main(stop: StopEvent) -> None:
        t = cfg.kafka.topics
        readiness = Readiness()
        stopped: list[str] = []
        async with serving(cfg, stop, readiness, only=("prometheus", "otlp")) as hub:
            address = http_address(hub)
            if address is not None:
                console.print(f"health on {address}: /metrics, /healthz, /readyz",
                              highlight=False)
            async with connect_kafka(cfg, [t.samples, t.digests, t.dlq], stop,
                                     readiness) as servers:
                runner = score_runner(cfg, servers, readiness=readiness)
                console.print(f"scoring {t.samples} into {t.digests} on {servers} "
                              f"(group {cfg.anomaly.group_id})", highlight=False)
                await run_until(stop, duration, scoring(cfg, runner, stop, readiness=readiness),
                                publish_health(hub, stop, lambda: health_snapshot(
                                    dead_letters_total=runner.consumer.dead_letters,
                                    consumer_recoveries_total=runner.recoveries())))
                console.print(f"scored {runner.stats.rows_in} samples; {runner.digests_out} "
                              f"digest rows in {runner.stats.records_out} records",
                              highlight=False)
                stopped.append(f"scoring stage out of group {cfg.anomaly.group_id}")
                if not cfg.kafka.bootstrap_servers:
                    stopped.append(f"embedded broker {servers}")
        if address is not None:
            stopped.append(f"HTTP server {address}")
        console.print(stop_line(stop, stopped), highlight=False, soft_wrap=True)

    why = run_async(main, grace_s=cfg.shutdown.aggregate_grace_s + HARD_STOP_MARGIN_S)
    finish(0, why)
