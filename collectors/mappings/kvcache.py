"""Inference engines' KV cache and request signals: vLLM, SGLang, TensorRT-LLM/Triton.

Each engine spells the same idea differently; the table :data:`SIGNALS` maps
them onto one set of ``gpuslo_*`` names so an SLO written once works on any
engine.  Traps the table encodes (details in the sources catalogue):

* vLLM ``vllm:kv_cache_usage_perc`` is a **fraction 0-1** despite ``_perc``;
  its predecessor ``vllm:gpu_cache_usage_perc`` is used only where the new
  name is absent (both appear with ``--show-hidden-metrics-for-version``).
* Prefix-cache hits and queries are **token counters** everywhere.  For SGLang
  they come from ``sglang:cached_tokens_total`` (hits; one series per
  ``cache_source``, summed downstream) and ``sglang:prompt_tokens_total``
  (queries), never from the ``sglang:cache_hit_rate`` gauge, which covers only
  the last logging window.  Old vLLM ``vllm:gpu_prefix_cache_*`` counted blocks
  in some releases; the exposition does not say which, so they are mapped
  as-is (tokens) and only where the new names are missing.
* vLLM's ``vllm:request_success_total`` counts every *finished* request;
  ``finished_reason`` says how it ended, so success, error and abort are
  separate normalised counters selected by that label.
* Triton's latency counters are microseconds without ``_total``; its
  first-response histogram is in **milliseconds** (scaled, bucket bounds too).
* trtllm-serve serves Prometheus text on ``/prometheus/metrics``.

Entity = model (``model_name``, or Triton's ``model``) plus the labels that tell
replicas apart *inside one scrape target*, chosen per engine by the metric's
prefix (:data:`REPLICA_LABELS_BY_PREFIX`): ``engine`` for vLLM (the
data-parallel engine core; v0 has none), ``engine_type`` for trtllm-serve,
``version`` for Triton, e.g. ``meta-llama/Llama-3.1-8B/engine=0``.  Those labels
are on every per-model series of their engine, so all signals of one replica
share one entity.  The scrape target can add a replica name (the pod), which
is what keeps two servers of one model on one node apart.

**SGLang has no replica labels in the entity**, only the model (and the
target's replica name): one SGLang replica is one server, i.e. one
``/metrics`` page, one tokenizer manager and the scheduler processes it feeds.
Its series come from two sides that label differently:

* scheduler series (``sglang:token_usage``, ``num_running_reqs``,
  ``num_queue_reqs``, ``num_retracted_requests_total``, ``cache_hit_rate``...)
  carry ``engine_type``, ``tp_rank``, ``pp_rank``, ``moe_ep_rank`` and, with
  data parallelism, ``dp_rank``.  By default only the attention-TP rank 0 of
  each scheduler group reports (``--enable-metrics-for-all-schedulers`` makes
  every rank report);
* tokenizer series (``sglang:prompt_tokens_total``, ``cached_tokens_total``,
  ``num_requests_total``, the latency histograms) describe the whole server,
  every rank's requests, and carry no rank label.  ``engine_type`` is not
  reliable on them either: releases before sglang PR #23978 left it off, and
  with several tokenizer workers in PD mode they say ``unified`` while the
  scheduler says ``prefill``/``decode`` (sglang issue #30406).

An entity built from those labels would file the KV usage and the prefix-cache
hits of one server under two entities (two half-replicas for RCA, dashboards
and per-replica SLO scopes).  So for SGLang the server is the entity, and the
rank labels stay ordinary labels: rows of different ``dp_rank`` (separate KV
pools) or ``tp_rank``/``pp_rank`` remain distinct series of that one entity.
Aggregate them with care: TP ranks of one group report the same batch (take
one, don't sum); DP ranks are separate pools.
"""

from __future__ import annotations

import polars as pl

from gpuslo.collectors.base import ScrapeTarget
from gpuslo.collectors.exposition import ShapeCache
from gpuslo.collectors.mappings.normalise import (
    Derivation,
    ParseFn,
    Signal,
    default_parse,
    first_label,
    histogram,
    layout_derivation,
    normalise,
    normalised_derivation,
    ref,
    signal,
    with_entity,
)
from gpuslo.collectors.mappings.prometheus import PrometheusMapping
from gpuslo.pipeline.config import KvCacheCollectorConfig
from gpuslo.pipeline.schema import Kind, label

SOURCE = "kvcache"

MODEL_LABELS: tuple[str, ...] = ("model_name", "model")
REPLICA_LABELS: tuple[str, ...] = ("engine", "engine_type", "version")
# Replica labels per engine, by metric-name prefix (first match wins; "" matches
# every name).  SGLang: none, see the module docstring.
REPLICA_LABELS_BY_PREFIX: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sglang:", ()),
    ("", REPLICA_LABELS),
)

_OK_REASONS = ("stop", "length", "repetition")

SIGNALS: tuple[Signal, ...] = (
    signal(
        "gpuslo_kv_cache_usage_ratio", "ratio", Kind.GAUGE,
        "vllm:kv_cache_usage_perc",
        ref("vllm:gpu_cache_usage_perc", superseded_by="vllm:kv_cache_usage_perc"),
        "sglang:token_usage",
        "trtllm_kv_cache_utilization",
        ref("nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="fraction"),
        help="Fraction of the KV-cache pool in use, 0-1.",
    ),
    signal(
        "gpuslo_prefix_cache_queries_tokens_total", "tokens", Kind.COUNTER,
        "vllm:prefix_cache_queries_total",
        ref("vllm:gpu_prefix_cache_queries_total",
            superseded_by="vllm:prefix_cache_queries_total"),
        "sglang:prompt_tokens_total",
        help="Prompt tokens looked up in the prefix cache.",
    ),
    signal(
        "gpuslo_prefix_cache_hits_tokens_total", "tokens", Kind.COUNTER,
        "vllm:prefix_cache_hits_total",
        ref("vllm:gpu_prefix_cache_hits_total", superseded_by="vllm:prefix_cache_hits_total"),
        "sglang:cached_tokens_total",
        help="Prompt tokens served from the prefix cache (SGLang: one series per cache_source).",
    ),
    signal(
        "gpuslo_preemptions_total", "preemptions", Kind.COUNTER,
        "vllm:num_preemptions_total",
        "sglang:num_retracted_requests_total",
        help="Requests preempted (vLLM) or retracted (SGLang) to free KV cache.",
    ),
    signal(
        "gpuslo_requests_running", "requests", Kind.GAUGE,
        "vllm:num_requests_running",
        "sglang:num_running_reqs",
        "trtllm_num_requests_running",
        ref("nv_trt_llm_request_metrics", request_type="active"),
    ),
    signal(
        "gpuslo_requests_waiting", "requests", Kind.GAUGE,
        "vllm:num_requests_waiting",
        "sglang:num_queue_reqs",
        "trtllm_num_requests_waiting",
        ref("nv_trt_llm_request_metrics", request_type="waiting"),
        # Triton's generic queue gauge; for TensorRT-LLM models the backend's own
        # "waiting" is the better count, so this is only a fallback.
        ref("nv_inference_pending_request_count", superseded_by="nv_trt_llm_request_metrics"),
    ),
    histogram(
        "gpuslo_time_to_first_token_seconds", "seconds",
        "vllm:time_to_first_token_seconds",
        "sglang:time_to_first_token_seconds",
        "trtllm_time_to_first_token_seconds",
        ref("nv_inference_first_response_histogram_ms", scale=1e-3),
        help="Time to first token (Triton: first response, ms scaled to s).",
    ),
    histogram(
        "gpuslo_inter_token_latency_seconds", "seconds",
        "vllm:inter_token_latency_seconds",
        ref("vllm:time_per_output_token_seconds",
            superseded_by="vllm:inter_token_latency_seconds"),
        "sglang:inter_token_latency_seconds",
        "trtllm_time_per_output_token_seconds",
        help="Latency between output tokens (trtllm: per-request TPOT).",
    ),
    histogram(
        "gpuslo_e2e_request_latency_seconds", "seconds",
        "vllm:e2e_request_latency_seconds",
        "sglang:e2e_request_latency_seconds",
        "trtllm_e2e_request_latency_seconds",
    ),
    signal(
        "gpuslo_requests_finished_total", "requests", Kind.COUNTER,
        "vllm:request_success_total",
        "sglang:num_requests_total",
        "trtllm_request_success_total",
        "nv_inference_request_success",
        "nv_inference_request_failure",
        help="Requests that ended, whatever the outcome.",
    ),
    signal(
        "gpuslo_requests_succeeded_total", "requests", Kind.COUNTER,
        ref("vllm:request_success_total", finished_reason=_OK_REASONS),
        ref("trtllm_request_success_total", finished_reason=_OK_REASONS),
        "nv_inference_request_success",
    ),
    signal(
        "gpuslo_requests_failed_total", "requests", Kind.COUNTER,
        ref("vllm:request_success_total", finished_reason="error"),
        ref("trtllm_request_success_total", finished_reason="error"),
        "nv_inference_request_failure",
    ),
    signal(
        "gpuslo_requests_aborted_total", "requests", Kind.COUNTER,
        ref("vllm:request_success_total", finished_reason="abort"),
        ref("trtllm_request_success_total", finished_reason="abort"),
        "sglang:num_aborted_requests_total",
    ),
    signal(
        "gpuslo_prompt_tokens_total", "tokens", Kind.COUNTER,
        "vllm:prompt_tokens_total", "sglang:prompt_tokens_total", "trtllm_prompt_tokens_total",
    ),
    signal(
        "gpuslo_generation_tokens_total", "tokens", Kind.COUNTER,
        "vllm:generation_tokens_total", "sglang:generation_tokens_total",
        "trtllm_generation_tokens_total",
    ),
    signal(
        "gpuslo_request_duration_seconds_total", "seconds", Kind.COUNTER,
        ref("nv_inference_request_duration_us", scale=1e-6),
        help="Triton cumulative request time (us scaled); divide by finished requests.",
    ),
    signal(
        "gpuslo_request_queue_seconds_total", "seconds", Kind.COUNTER,
        ref("nv_inference_queue_duration_us", scale=1e-6),
    ),
)


def _replica_part(names: tuple[str, ...], replica: str | None) -> pl.Expr:
    """``k=v,...`` for whichever of ``names`` a row has, then ``replica=<name>``."""
    parts: list[pl.Expr] = [
        pl.when(label(n).is_not_null() & (label(n) != "")).then(pl.lit(f"{n}=") + label(n))
        for n in names
    ]
    if replica:
        parts.append(pl.lit(f"replica={replica}"))
    if not parts:
        return pl.lit("")
    return pl.concat_list(parts).list.drop_nulls().list.join(",")


def entity_expr(replica: str | None = None) -> pl.Expr:
    """``<model>/<k>=<v>,...`` from the model label and the engine's replica labels.

    The replica labels depend on the engine (:data:`REPLICA_LABELS_BY_PREFIX`);
    an SGLang series gets only the model and ``replica``.

    Args:
        replica: appended as ``replica=<name>`` (the scrape target's pod or
            address) so two replicas of one model on one node stay apart.
    """
    model = first_label(*MODEL_LABELS).fill_null("")
    metric = pl.col("metric")
    replica_part: pl.Expr = pl.lit("")
    for prefix, names in reversed(REPLICA_LABELS_BY_PREFIX):
        part = _replica_part(names, replica)
        replica_part = (part if not prefix else
                        pl.when(metric.str.starts_with(prefix)).then(part).otherwise(replica_part))
    return (
        pl.when(replica_part != "")
        .then(pl.concat_str([model, pl.lit("/"), replica_part]))
        .otherwise(model)
    )


def derive_entities(frame: pl.DataFrame, replica: str | None = None) -> pl.DataFrame:
    """``frame`` with ``entity`` set per row (see :func:`entity_expr`)."""
    return with_entity(frame, entity_expr(replica))


def map_frame(frame: pl.DataFrame, replica: str | None = None) -> pl.DataFrame:
    """Entities and normalised signals for a parsed engine payload (any engine)."""
    return normalise(derive_entities(frame, replica), SIGNALS)


def map_derivation(frame: pl.DataFrame, replica: str | None = None) -> Derivation:
    """:func:`map_frame` as a :class:`Derivation` of ``frame`` (for a repeated layout)."""
    with_entities = derive_entities(frame, replica)
    return Derivation.upstream(with_entities).then(normalised_derivation(with_entities, SIGNALS))


def parse(
    text: str,
    *,
    node: str,
    scrape_ts_ms: int,
    source: str = SOURCE,
    replica: str | None = None,
    parser: ParseFn = default_parse,
) -> pl.DataFrame:
    """Parse an engine's ``/metrics`` (or trtllm-serve ``/prometheus/metrics``) and map it."""
    return map_frame(parser(text, node=node, source=source, scrape_ts_ms=scrape_ts_ms), replica)


def detect_engine(frame: pl.DataFrame) -> str | None:
    """Which engine produced a payload (``vllm``, ``sglang``, ``trtllm``, ``triton``), if any.

    For display in ``gpuslo scrape``; the mapping itself does not need it.
    """
    names = frame.get_column("metric")
    for prefix, engine in (("vllm:", "vllm"), ("sglang:", "sglang"), ("trtllm_", "trtllm"),
                           ("nv_trt_llm_", "triton"), ("nv_inference_", "triton")):
        if names.str.starts_with(prefix).any():
            return engine
    return None


class KvCacheMapping(PrometheusMapping):
    """Inference engines (vLLM v0/v1, SGLang, Triton, trtllm-serve) on any path.

    The target's ``replica`` (the pod, from discovery, or set in the config)
    joins the entity so two replicas of one model on one node stay apart.
    """

    def __init__(self, source: str = SOURCE) -> None:
        super().__init__(source)

    @classmethod
    def from_config(cls, config: KvCacheCollectorConfig) -> KvCacheMapping:
        return cls(config.source)

    def transform(self, frame: pl.DataFrame, target: ScrapeTarget,
                  shape_cache: ShapeCache | None = None) -> pl.DataFrame:
        kept = layout_derivation(shape_cache, frame, lambda f: map_derivation(f, target.replica),
                                 Derivation)
        return map_frame(frame, target.replica) if kept is None else kept.apply(frame)
