"""kubelet: ``/metrics/resource``, ``/metrics/cadvisor`` and ``/stats/summary``.

* ``/metrics/cadvisor`` has a series per container *and* per pod cgroup, QoS
  cgroup and pod sandbox (pause), the latter with ``container=""`` (or
  ``"POD"`` under dockershim).  Summing them counts everything twice, so
  :func:`filter_cadvisor` drops them, except the sandbox's network series:
  containers share the pod's network namespace and the sandbox is the only
  place pod traffic is reported.  Samples carry millisecond timestamps, which
  the parser keeps as ``ts``.
* ``/metrics/resource`` is the cheap, stable subset (CPU seconds, working set).
* ``/stats/summary`` is JSON where *any* field may be missing and every block
  (cpu, memory, network, fs...) has its own ``time``; :func:`summary_to_frame`
  emits one row per present numeric field at that block's time and reports
  the rest.

Both metric endpoints and the summary normalise to the same names
(``gpuslo_container_cpu_usage_seconds_total``...), so scrape *one* of
``/metrics/resource`` or ``/stats/summary`` for CPU/memory per target (or use
:func:`cadvisor_signals` without usage) to avoid the same quantity arriving
twice under different ``source`` values.

Entity = ``namespace/pod/container`` for containers, ``namespace/pod`` for
pods, the node name for node-level series.

Pure: the HTTPS fetch with the service-account bearer token (re-read on
rotation, scrubbed from every message) is the scrape engine's, with the
credentials of :mod:`gpuslo.pipeline.auth`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from gpuslo.collectors.base import Partial, ScrapeTarget
from gpuslo.collectors.exposition import ShapeCache
from gpuslo.collectors.mappings.normalise import (
    Derivation,
    Signal,
    layout_derivation,
    normalised_derivation,
    normalised_rows,
    ref,
    signal,
)
from gpuslo.collectors.mappings.prometheus import PrometheusMapping
from gpuslo.collectors.mappings.reader_layout import ReaderLayouts
from gpuslo.pipeline.config import KubeletCollectorConfig, kubelet_endpoint
from gpuslo.pipeline.schema import COLUMNS, FrameBuilder, Kind, label

SOURCE = "kubelet"
SUMMARY_PREFIX = "kubelet_summary_"

# ---------------------------------------------------------------- signals

_USAGE_SIGNALS: tuple[Signal, ...] = (
    signal("gpuslo_container_cpu_usage_seconds_total", "core-seconds", Kind.COUNTER,
           "container_cpu_usage_seconds_total",
           ref(SUMMARY_PREFIX + "cpu_usageCoreNanoSeconds", scale=1e-9, scope="container")),
    signal("gpuslo_container_memory_working_set_bytes", "bytes", Kind.GAUGE,
           "container_memory_working_set_bytes",
           ref(SUMMARY_PREFIX + "memory_workingSetBytes", scope="container")),
    signal("gpuslo_pod_cpu_usage_seconds_total", "core-seconds", Kind.COUNTER,
           "pod_cpu_usage_seconds_total",
           ref(SUMMARY_PREFIX + "cpu_usageCoreNanoSeconds", scale=1e-9, scope="pod")),
    signal("gpuslo_pod_memory_working_set_bytes", "bytes", Kind.GAUGE,
           "pod_memory_working_set_bytes",
           ref(SUMMARY_PREFIX + "memory_workingSetBytes", scope="pod")),
    signal("gpuslo_node_cpu_usage_seconds_total", "core-seconds", Kind.COUNTER,
           "node_cpu_usage_seconds_total",
           ref(SUMMARY_PREFIX + "cpu_usageCoreNanoSeconds", scale=1e-9, scope="node")),
    signal("gpuslo_node_memory_working_set_bytes", "bytes", Kind.GAUGE,
           "node_memory_working_set_bytes",
           ref(SUMMARY_PREFIX + "memory_workingSetBytes", scope="node")),
)

_CADVISOR_ONLY: tuple[Signal, ...] = (
    signal("gpuslo_container_cpu_cfs_periods_total", "periods", Kind.COUNTER,
           "container_cpu_cfs_periods_total"),
    signal("gpuslo_container_cpu_cfs_throttled_periods_total", "periods", Kind.COUNTER,
           "container_cpu_cfs_throttled_periods_total",
           help="Throttled / total periods = CPU throttling ratio."),
    signal("gpuslo_container_cpu_cfs_throttled_seconds_total", "seconds", Kind.COUNTER,
           "container_cpu_cfs_throttled_seconds_total"),
    signal("gpuslo_container_memory_limit_bytes", "bytes", Kind.GAUGE,
           "container_spec_memory_limit_bytes"),
    signal("gpuslo_container_oom_events_total", "events", Kind.COUNTER,
           "container_oom_events_total"),
    signal("gpuslo_pod_network_receive_bytes_total", "bytes", Kind.COUNTER,
           "container_network_receive_bytes_total"),
    signal("gpuslo_pod_network_transmit_bytes_total", "bytes", Kind.COUNTER,
           "container_network_transmit_bytes_total"),
    signal("gpuslo_container_fs_read_bytes_total", "bytes", Kind.COUNTER,
           "container_fs_reads_bytes_total"),
    signal("gpuslo_container_fs_written_bytes_total", "bytes", Kind.COUNTER,
           "container_fs_writes_bytes_total"),
)

_SUMMARY_ONLY: tuple[Signal, ...] = (
    signal("gpuslo_container_rootfs_used_bytes", "bytes", Kind.GAUGE,
           ref(SUMMARY_PREFIX + "rootfs_usedBytes", scope="container")),
    signal("gpuslo_pod_ephemeral_storage_used_bytes", "bytes", Kind.GAUGE,
           ref(SUMMARY_PREFIX + "ephemeral-storage_usedBytes", scope="pod")),
    signal("gpuslo_node_fs_used_bytes", "bytes", Kind.GAUGE,
           ref(SUMMARY_PREFIX + "fs_usedBytes", scope="node")),
    signal("gpuslo_node_fs_capacity_bytes", "bytes", Kind.GAUGE,
           ref(SUMMARY_PREFIX + "fs_capacityBytes", scope="node")),
    signal("gpuslo_pod_network_receive_bytes_total", "bytes", Kind.COUNTER,
           ref(SUMMARY_PREFIX + "network_rxBytes", scope="pod")),
    signal("gpuslo_pod_network_transmit_bytes_total", "bytes", Kind.COUNTER,
           ref(SUMMARY_PREFIX + "network_txBytes", scope="pod")),
)

SIGNALS: tuple[Signal, ...] = _USAGE_SIGNALS + _CADVISOR_ONLY + _SUMMARY_ONLY


def cadvisor_signals(with_usage: bool = True) -> tuple[Signal, ...]:
    """Signals for ``/metrics/cadvisor``; without CPU/memory usage when another
    endpoint (``/metrics/resource`` or ``/stats/summary``) already supplies them."""
    return (_USAGE_SIGNALS if with_usage else ()) + _CADVISOR_ONLY


# ---------------------------------------------------------------- metric endpoints


def entity_expr() -> pl.Expr:
    """``namespace/pod/container``, ``namespace/pod``, else the node name.

    Raw cAdvisor (not behind the kubelet) has no pod labels; its cgroup ``id``
    is used so containers stay apart.
    """
    ns, pod, ctr = label("namespace"), label("pod"), label("container")
    has = lambda e: e.is_not_null() & (e != "")  # noqa: E731
    return (
        pl.when(has(pod) & has(ctr))
        .then(pl.concat_str([ns.fill_null(""), pl.lit("/"), pod, pl.lit("/"), ctr]))
        .when(has(pod))
        .then(pl.concat_str([ns.fill_null(""), pl.lit("/"), pod]))
        .when(has(label("id")))
        .then(label("id"))
        .otherwise(pl.col("node"))
    )


def derive_entities(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with ``entity`` set per row (see :func:`entity_expr`)."""
    return frame.with_columns(entity=entity_expr().fill_null(""))


@dataclass(frozen=True)
class FilterResult:
    """Rows kept and how many were dropped as pod/QoS/sandbox aggregates."""

    frame: pl.DataFrame
    dropped: int


def filter_cadvisor(frame: pl.DataFrame) -> FilterResult:
    """Drop ``container=""``/``"POD"`` series from a ``/metrics/cadvisor`` frame.

    Kept: rows without a ``container`` label at all (``machine_*``, raw
    cAdvisor), real containers, and the sandbox's ``container_network_*``
    series (``image`` set), which are the pod's only network counters.  The
    pod and QoS cgroups (no ``image``) never survive, so nothing is summed twice.
    """
    kept = frame.filter(_cadvisor_kept())
    return FilterResult(kept, frame.height - kept.height)


def filter_cadvisor_mask(frame: pl.DataFrame) -> pl.Series:
    """The rows :func:`filter_cadvisor` keeps, as a mask."""
    return frame.select(_cadvisor_kept()).to_series()


def _cadvisor_kept() -> pl.Expr:
    ctr = label("container")
    aggregate = ctr.is_in(["", "POD"]).fill_null(False)
    sandbox_net = (
        pl.col("metric").str.starts_with("container_network_")
        & label("image").is_not_null()
        & (label("image") != "")
    )
    return ~aggregate | sandbox_net


def map_cadvisor(frame: pl.DataFrame, *, with_usage: bool = True) -> tuple[pl.DataFrame, int]:
    """Filter, entity and normalise a parsed ``/metrics/cadvisor`` frame.

    Returns the mapped frame and the number of aggregate rows dropped.
    """
    filtered = filter_cadvisor(frame)
    with_entities = derive_entities(filtered.frame)
    mapped = pl.concat([with_entities.select(COLUMNS),
                        normalised_rows(with_entities, cadvisor_signals(with_usage))])
    return mapped, filtered.dropped


def cadvisor_derivation(frame: pl.DataFrame, *, with_usage: bool = True) -> Derivation:
    """:func:`map_cadvisor`'s frame as a :class:`Derivation` of ``frame``."""
    kept = filter_cadvisor_mask(frame)
    with_entities = derive_entities(frame.filter(kept))
    return (Derivation.upstream(with_entities)
            .then(normalised_derivation(with_entities, cadvisor_signals(with_usage)))
            .through(kept))


def resource_derivation(frame: pl.DataFrame) -> Derivation:
    """:func:`map_resource` as a :class:`Derivation` of ``frame``."""
    with_entities = derive_entities(frame)
    return Derivation.upstream(with_entities).then(
        normalised_derivation(with_entities, _USAGE_SIGNALS))


def map_resource(frame: pl.DataFrame) -> pl.DataFrame:
    """Entity and normalise a parsed ``/metrics/resource`` frame."""
    with_entities = derive_entities(frame)
    return pl.concat([with_entities.select(COLUMNS),
                      normalised_rows(with_entities, _USAGE_SIGNALS)])


# ---------------------------------------------------------------- /stats/summary

# Cumulative fields of the summary API; every other numeric field is a gauge.
_SUMMARY_COUNTERS = frozenset({
    "usageCoreNanoSeconds", "pageFaults", "majorPageFaults",
    "rxBytes", "rxErrors", "txBytes", "txErrors",
})
_STAT_BLOCKS = ("cpu", "memory", "swap", "network", "fs", "rootfs", "logs",
                "ephemeral-storage", "rlimit")


@dataclass(frozen=True)
class SummaryResult:
    """Samples from one ``/stats/summary`` and the fields that could not be used."""

    frame: pl.DataFrame
    errors: tuple[str, ...]
    untimed_blocks: int


def _parse_time(value: object) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


class _Summary:
    def __init__(self, node: str, source: str, scrape_ts_ms: int) -> None:
        self.node, self.source, self.scrape_ts_ms = node, source, scrape_ts_ms
        self.rows = FrameBuilder(node, source, scrape_ts_ms)  # a frame once the walk is done
        self.errors: list[str] = []
        self.untimed = 0

    def block(self, where: str, name: str, block: object, entity: str,
              labels: Mapping[str, str]) -> None:
        if block is None:
            return
        if not isinstance(block, dict):
            self.errors.append(f"{where}.{name}: expected an object, got {type(block).__name__}")
            return
        ts = _parse_time(block.get("time"))
        if ts is None:
            # A block without a usable time still has values; stamp them with
            # the scrape time and count it, rather than invent an age.
            if "time" in block:
                self.errors.append(f"{where}.{name}.time: unparseable {block['time']!r}")
            self.untimed += 1
            ts = self.scrape_ts_ms
        for key, value in block.items():
            if key in ("time", "name", "interfaces", "psi"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                # null is "not reported"; nested objects are not stats of this block.
                if value is not None and not isinstance(value, (dict, list)):
                    self.errors.append(f"{where}.{name}.{key}: not a number: {value!r}")
                continue
            kind = Kind.COUNTER if key in _SUMMARY_COUNTERS else Kind.GAUGE
            self.rows.add(f"{SUMMARY_PREFIX}{name}_{key}", kind, float(value), entity, labels,
                          ts_ms=ts)

    def stats(self, where: str, obj: Mapping[str, Any], entity: str,
              labels: Mapping[str, str]) -> None:
        for name in _STAT_BLOCKS:
            self.block(where, name, obj.get(name), entity, labels)


def summary_to_frame(
    summary: Mapping[str, Any] | str | bytes,
    *,
    node: str,
    scrape_ts_ms: int,
    source: str = SOURCE,
    layouts: ReaderLayouts | None = None,
    target: str = "",
) -> SummaryResult:
    """``/stats/summary`` JSON -> raw sample rows (``kubelet_summary_<block>_<field>``).

    Labels: ``scope`` (``node``, ``system_container``, ``pod``, ``container``,
    ``volume``), and ``namespace``/``pod``/``container``/``system_container``/
    ``volume`` as applicable.  Field names keep the API's camelCase.  A pod
    without ``podRef.name`` is skipped and reported; a non-numeric field is
    reported and skipped; a missing field is simply absent.

    ``layouts``: ``target``'s earlier layouts (see :mod:`.reader_layout`); a summary
    with the same pods, containers, volumes and fields as one of them reuses its
    frame's series columns.  The frame is the same either way.

    Raises:
        ValueError: the body is not JSON or not a JSON object.
    """
    if isinstance(summary, (str, bytes)):
        try:
            summary = json.loads(summary)
        except json.JSONDecodeError as exc:
            raise ValueError(f"/stats/summary is not JSON: {exc}") from exc
    if not isinstance(summary, Mapping):
        raise ValueError(f"/stats/summary is a JSON {type(summary).__name__}, expected an object")
    s = _Summary(node, source, scrape_ts_ms)
    node_obj = summary.get("node")
    if isinstance(node_obj, Mapping):
        s.stats("node", node_obj, node, {"scope": "node"})
        runtime = node_obj.get("runtime")
        if isinstance(runtime, Mapping):
            for fs_name in ("imageFs", "containerFs"):
                s.block("node.runtime", fs_name, runtime.get(fs_name), node,
                        {"scope": "node"})
        for i, sc in enumerate(_as_list(node_obj.get("systemContainers"), "node.systemContainers",
                                        s.errors)):
            name = sc.get("name")
            if not isinstance(name, str) or not name:
                s.errors.append(f"node.systemContainers[{i}]: no name, skipped")
                continue
            s.stats(f"node.systemContainers[{name}]", sc, f"{node}/{name}",
                    {"scope": "system_container", "system_container": name})
    elif node_obj is not None:
        s.errors.append("node: expected an object")
    for i, pod in enumerate(_as_list(summary.get("pods"), "pods", s.errors)):
        ref_ = pod.get("podRef")
        pname = ref_.get("name") if isinstance(ref_, Mapping) else None
        ns = ref_.get("namespace") if isinstance(ref_, Mapping) else None
        if not isinstance(pname, str) or not pname:
            s.errors.append(f"pods[{i}]: no podRef.name, skipped")
            continue
        ns = ns if isinstance(ns, str) else ""
        where = f"pods[{ns}/{pname}]"
        pod_labels = {"scope": "pod", "namespace": ns, "pod": pname}
        s.stats(where, pod, f"{ns}/{pname}", pod_labels)
        for c in _as_list(pod.get("containers"), f"{where}.containers", s.errors):
            cname = c.get("name")
            if not isinstance(cname, str) or not cname:
                s.errors.append(f"{where}.containers: container without a name, skipped")
                continue
            s.stats(f"{where}.containers[{cname}]", c, f"{ns}/{pname}/{cname}",
                    {"scope": "container", "namespace": ns, "pod": pname, "container": cname})
        for v in _as_list(pod.get("volume"), f"{where}.volume", s.errors):
            vname = v.get("name")
            if not isinstance(vname, str):
                s.errors.append(f"{where}.volume: volume without a name, skipped")
                continue
            s.block(where, "volume", v, f"{ns}/{pname}",
                    {"scope": "volume", "namespace": ns, "pod": pname, "volume": vname})
    frame = s.rows.frame() if layouts is None else layouts.frame(target, s.rows)
    return SummaryResult(frame, tuple(s.errors), s.untimed)


def _as_list(value: object, where: str, errors: list[str]) -> list[Mapping[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        errors.append(f"{where}: expected a list")
        return []
    out = []
    for i, item in enumerate(value):
        if isinstance(item, Mapping):
            out.append(item)
        else:
            errors.append(f"{where}[{i}]: expected an object")
    return out


def map_summary(result: SummaryResult, *, with_usage: bool = True) -> pl.DataFrame:
    """Raw summary rows + the normalised signals they yield.

    ``with_usage=False`` leaves CPU/memory usage to ``/metrics/resource`` when
    both are read, so each quantity arrives once.
    """
    signals = SIGNALS if with_usage else _CADVISOR_ONLY + _SUMMARY_ONLY
    return pl.concat([result.frame.select(COLUMNS), normalised_rows(result.frame, signals)])


def summary_derivation(frame: pl.DataFrame, *, with_usage: bool = True) -> Derivation:
    """:func:`map_summary` of a summary frame as a :class:`Derivation` of it."""
    signals = SIGNALS if with_usage else _CADVISOR_ONLY + _SUMMARY_ONLY
    return Derivation.upstream(frame).then(normalised_derivation(frame, signals))


USAGE_SIGNAL_NAMES: frozenset[str] = frozenset(s.name for s in _USAGE_SIGNALS)
POD_NETWORK_SIGNAL_NAMES: frozenset[str] = frozenset(
    {"gpuslo_pod_network_receive_bytes_total", "gpuslo_pod_network_transmit_bytes_total"}
)


# ---------------------------------------------------------------- the collector


def summary_partial(result: SummaryResult) -> Partial:
    """A ``/stats/summary`` read as the engine's :class:`~gpuslo.collectors.base.Partial`.

    Unusable fields and nameless pods/containers are the problems (reason
    ``summary_field``); a block without a time is stamped with the scrape time
    and not counted, since the kubelet omits it routinely.
    """
    detail = (f"{len(result.errors)} /stats/summary field(s) not used, e.g. {result.errors[0]}"
              if result.errors else None)
    return Partial(result.frame, {"summary_field": len(result.errors)}, detail)


def _skip_signals(endpoint: str, present: set[str]) -> frozenset[str]:
    """Normalised names an endpoint leaves to another one read from the same kubelet."""
    if endpoint == "cadvisor" and present & {"resource", "summary"}:
        return USAGE_SIGNAL_NAMES
    if endpoint == "summary":
        skip: set[str] = set()
        if "resource" in present:
            skip |= USAGE_SIGNAL_NAMES
        if "cadvisor" in present:
            skip |= POD_NETWORK_SIGNAL_NAMES
        return frozenset(skip)
    return frozenset()


class KubeletMapping(PrometheusMapping):
    """The kubelet's resource, cAdvisor and summary endpoints.

    When several endpoints of one kubelet carry the same quantity (CPU/memory
    usage in resource, cAdvisor and summary; pod network in cAdvisor and
    summary) only one of them maps it, so a normalised signal arrives once per
    entity: ``targets`` (every endpoint the collector reads) decides which.
    """

    def __init__(self, targets: Iterable[ScrapeTarget], source: str = SOURCE) -> None:
        super().__init__(source)
        present: dict[str, set[str]] = {}
        targets = list(targets)
        for t in targets:
            present.setdefault(t.node, set()).add(_endpoint(t))
        self._skip = {t.url: _skip_signals(_endpoint(t), present[t.node]) for t in targets}
        self.aggregates_dropped = 0  # pod/QoS/sandbox cAdvisor rows dropped, cumulative
        self.summary_layouts = ReaderLayouts()  # /stats/summary has no parser shape

    def parse(self, text: str, openmetrics: bool, target: ScrapeTarget, scrape_ts_ms: int,
              shape_cache: ShapeCache | None = None) -> pl.DataFrame | Partial:
        if _endpoint(target) == "summary":
            result = summary_to_frame(text, node=target.node, scrape_ts_ms=scrape_ts_ms,
                                      source=self.source, layouts=self.summary_layouts,
                                      target=target.url)
            return summary_partial(result)
        return super().parse(text, openmetrics, target, scrape_ts_ms, shape_cache)

    def transform(self, frame: pl.DataFrame, target: ScrapeTarget,
                  shape_cache: ShapeCache | None = None) -> pl.DataFrame:
        endpoint = _endpoint(target)
        skip = self._skip.get(target.url, frozenset())
        if endpoint == "summary":
            got = self.summary_layouts.transform(
                target.url, frame, lambda f: _derivation(f, endpoint, skip))
            if got is not None:
                return got
        else:
            kept = layout_derivation(shape_cache, frame,
                                     lambda f: _derivation(f, endpoint, skip), Derivation)
            if kept is not None:
                self.aggregates_dropped += kept.dropped
                return kept.apply(frame)
        if endpoint == "cadvisor":
            mapped, dropped = map_cadvisor(frame, with_usage=not (skip & USAGE_SIGNAL_NAMES))
            self.aggregates_dropped += dropped
        elif endpoint == "summary":
            mapped = map_summary(SummaryResult(frame, (), 0))
        else:
            mapped = map_resource(frame)
        return mapped.filter(~pl.col("metric").is_in(list(skip))) if skip else mapped


def _derivation(frame: pl.DataFrame, endpoint: str, skip: frozenset[str]) -> Derivation:
    """What :meth:`KubeletMapping.transform` makes of a frame of ``endpoint``."""
    if endpoint == "cadvisor":
        made = cadvisor_derivation(frame, with_usage=not (skip & USAGE_SIGNAL_NAMES))
    elif endpoint == "summary":
        made = summary_derivation(frame)
    else:
        made = resource_derivation(frame)
    return made.where(~made.series.get_column("metric").is_in(list(skip))) if skip else made


def kubelet_targets(config: KubeletCollectorConfig, default_node: str) -> list[ScrapeTarget]:
    """Every endpoint the config names, as targets tagged with their endpoint kind."""
    targets: list[ScrapeTarget] = []
    for url, node in config.endpoint_urls():
        endpoint = kubelet_endpoint(url)
        assert endpoint is not None  # the config validated every path
        targets.append(ScrapeTarget(url, node or default_node, meta=(("endpoint", endpoint),)))
    return targets


def _endpoint(target: ScrapeTarget) -> str:
    return dict(target.meta).get("endpoint") or kubelet_endpoint(target.url) or "resource"
