"""Shared helpers for the simulator tests: small fleets, parsed scrapes, catalog frames."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gpuslo.collectors.exposition import parse_text
from gpuslo.pipeline.app.fleet_targets import PROMETHEUS_KINDS
from gpuslo.simulator import Fleet, FleetSpec, ServiceSpec, TrainingSpec
from gpuslo.simulator.endpoints import Endpoint, endpoints

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SCRAPE_S = 15.0


def small_spec(seed: int = 7, **kw: object) -> FleetSpec:
    """4 nodes x 4 GPUs, one service per engine, a one-node training job."""
    services = (
        ServiceSpec("llama-70b", "vllm", replicas=2, tp=2, base_rps=6.0,
                    kv_capacity_tokens=250_000.0, legacy_replicas=(1,)),
        ServiceSpec("llama-8b", "vllm", replicas=2, tp=1, base_rps=12.0,
                    kv_capacity_tokens=150_000.0),
        ServiceSpec("qwen-32b", "sglang", replicas=1, tp=2, base_rps=5.0,
                    kv_capacity_tokens=200_000.0),
        ServiceSpec("mistral-7b", "triton", replicas=1, tp=1, base_rps=5.0,
                    kv_capacity_tokens=150_000.0),
    )
    args: dict[str, object] = {"nodes": 4, "gpus_per_node": 4, "seed": seed,
                               "services": services, "training": TrainingSpec(nodes=1)}
    args.update(kw)
    return FleetSpec(**args)  # type: ignore[arg-type]


def warmed(spec: FleetSpec | None = None, minutes: float = 5.0) -> Fleet:
    """A fleet advanced past its warm-up (temperatures settle, Ceph ready)."""
    f = Fleet(spec or small_spec())
    f.advance(f.t + minutes * 60.0)
    return f


def parse(text: str) -> dict[str, tuple[str, str, list[Sample]]]:
    """Family name -> (type, help, samples)."""
    return {f.name: (f.type, f.documentation, list(f.samples))
            for f in text_string_to_metric_families(text)}


def values(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample keyed by (name, labels)."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def page(fleet: Fleet, kind: str, node: str | None = None, entity: str | None = None) -> str:
    """Render one endpoint of the fleet; raises if it is down (renders ``None``)."""
    ep = find(fleet, kind, node, entity)
    body = ep.render(fleet, int(fleet.t * 1000))
    assert body is not None, f"{kind} on {node or entity} is down"
    return body


def find(fleet: Fleet, kind: str, node: str | None = None,
         entity: str | None = None) -> Endpoint:
    for ep in endpoints(fleet):
        if ep.kind == kind and (node is None or ep.node == node) and (
                entity is None or ep.entity == entity):
            return ep
    raise LookupError((kind, node, entity))


def fixture_families(rel: str) -> dict[str, tuple[str, str, list[Sample]]]:
    return parse((FIXTURES / rel).read_text())


def pick(vals: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
         **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels``."""
    # prometheus_client's parser names counter samples "<name>_total" when the
    # exposition does not (DCGM, Ceph, Triton): accept both spellings.
    hits = [v for (n, lbl), v in vals.items()
            if n in (name, name + "_total") and all((k, val) in lbl for k, val in labels.items())]
    assert len(hits) == 1, (name, labels, len(hits))
    return hits[0]


# ---- the SLO catalog on a simulated fleet (no Kafka, no collectors) --------------------
#
# Frames come from the rendered pages through collectors.prometheus.parse_text, the
# parser every collector uses, rather than through the collectors themselves: their
# normalisation costs seconds per simulated minute of a default fleet.  The catalog
# reads upstream series only, which the collectors pass through as scraped
# (test_sim_catalog_margin checks that the shortcut sees what the collectors would).


def scrape(fleet: Fleet, eps: Sequence[Endpoint], metrics: Sequence[str]) -> pl.DataFrame:
    """One scrape of ``eps`` at the fleet's time, the catalog's series only (a down page
    gives nothing, as a failed scrape would)."""
    ts = int(fleet.t * 1000)
    frames = [parse_text(body, node=ep.node, source=ep.source, scrape_ts_ms=ts)
              for ep in eps for body in [ep.render(fleet, ts)] if body is not None]
    return pl.concat(frames).filter(pl.col("metric").is_in(list(metrics)))


def catalog_endpoints(fleet: Fleet, metrics: Sequence[str]) -> list[Endpoint]:
    """The Prometheus-format pages whose kind serves at least one catalog metric."""
    eps = [ep for ep in endpoints(fleet) if ep.kind in PROMETHEUS_KINDS]
    ts = int(fleet.t * 1000)
    kinds = {ep.kind for ep in eps for body in [ep.render(fleet, ts)] if body is not None
             and parse_text(body, node=ep.node, source=ep.source, scrape_ts_ms=ts)
             .get_column("metric").is_in(list(metrics)).any()}
    return [ep for ep in eps if ep.kind in kinds]
