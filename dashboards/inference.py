"""Inference servers and their KV caches: vLLM, SGLang and Triton with TensorRT-LLM.

Each engine names things its own way, so every panel has one query per engine,
tagged with a ``server`` label (``label_replace``), and draws them together per
model (``model_name``; Triton's ``model`` is its repository name) and replica
(``instance``: one scrape target per server process).  vLLM before 0.10 used
other names for three series (``vllm:gpu_cache_usage_perc``,
``vllm:gpu_prefix_cache_*``, ``vllm:time_per_output_token_seconds``); those get
their own queries, so a fleet mid-upgrade shows every replica.

vLLM's own ``engine`` label is the engine-core index under data parallelism,
not the kind of server; the queries aggregate it away.
"""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dm

from gpuslo.dashboards import common as g
from gpuslo.dashboards.common import Query, instant, q

_M = 'model_name=~"$model"'
_T = 'model=~"$triton_model"'
_RATE = "[$__rate_interval]"
_LEGEND = "{{server}} {{model_name}} {{instance}}"
_LEGEND_MODEL = "{{server}} {{model_name}}"


def _tag(expr: str, server: str) -> str:
    return f'label_replace({expr}, "server", "{server}", "", "")'


def _triton(expr: str) -> str:
    """Triton's series, with its ``model`` label copied to ``model_name``."""
    return _tag(f'label_replace({expr}, "model_name", "$1", "model", "(.*)")', "triton")


def _per_replica(parts: list[tuple[str, str]]) -> str:
    """``max by (server, model_name, instance)`` of each (expr, server), joined by ``or``."""
    return " or ".join(
        f"max by (server, model_name, instance) ({_tag(e, s) if s != 'triton' else e})"
        for e, s in parts)


def _quantile(phi: float) -> list[Query]:
    """TTFT quantile per model for each engine (Triton's histogram is in milliseconds)."""
    by = "sum by (le, model_name)"
    return [
        q(_tag(f"histogram_quantile({phi}, {by} (rate("
               f"vllm:time_to_first_token_seconds_bucket{{{_M}}}{_RATE})))", "vllm"),
          _LEGEND_MODEL),
        q(_tag(f"histogram_quantile({phi}, {by} (rate("
               f"sglang:time_to_first_token_seconds_bucket{{{_M}}}{_RATE})))", "sglang"),
          _LEGEND_MODEL),
        q(_triton(f"histogram_quantile({phi}, sum by (le, model) (rate("
                  f"nv_inference_first_response_histogram_ms_bucket{{{_T}}}{_RATE}))) / 1000"),
          _LEGEND_MODEL),
    ]


def _itl(phi: float) -> list[Query]:
    """Inter-token latency quantile per model (Triton exports no ITL histogram)."""
    by = "sum by (le, model_name)"
    return [
        q(_tag(f"histogram_quantile({phi}, {by} (rate("
               f"vllm:inter_token_latency_seconds_bucket{{{_M}}}{_RATE})))", "vllm"),
          _LEGEND_MODEL),
        q(_tag(f"histogram_quantile({phi}, {by} (rate("
               f"vllm:time_per_output_token_seconds_bucket{{{_M}}}{_RATE})))", "vllm<0.10"),
          _LEGEND_MODEL),
        q(_tag(f"histogram_quantile({phi}, {by} (rate("
               f"sglang:inter_token_latency_seconds_bucket{{{_M}}}{_RATE})))", "sglang"),
          _LEGEND_MODEL),
    ]


def _vllm_prefix(kind: str) -> str:
    """Prefix-cache token rate per model under vLLM's new and pre-0.10 names together."""
    name = f'__name__=~"vllm:(gpu_)?prefix_cache_{kind}_total"'
    return f"sum by (model_name) (rate({{{name}, {_M}}}{_RATE}))"


def build() -> dm.Dashboard:
    """Inference and KV cache."""
    d = g.dashboard(
        g.UID_INFERENCE, "gpuslo / Inference and KV cache", tags=["inference", "kv-cache"],
        source=True,
        description="vLLM, SGLang and Triton/TensorRT-LLM per model and replica: prefix-cache "
                    "hit ratio, KV-cache usage, preemptions, running and waiting requests, "
                    "TTFT and inter-token latency quantiles.",
    )
    d = d.with_variable(g.query_variable(
        "model",
        'label_values({__name__=~"vllm:num_requests_running|sglang:num_running_reqs"}, '
        "model_name)",
        label="Model (vLLM, SGLang)", multi=True))
    d = d.with_variable(g.query_variable(
        "triton_model", "label_values(nv_inference_request_success, model)",
        label="Model (Triton)", multi=True))

    d = d.with_row(g.row("Latency"))
    d = d.with_panel(g.timeseries("Time to first token, p50", _quantile(0.5), unit="s"))
    d = d.with_panel(g.timeseries("Time to first token, p99", _quantile(0.99), unit="s"))
    d = d.with_panel(g.timeseries("Inter-token latency, p50", _itl(0.5), unit="s",
                                  description="Triton/TensorRT-LLM exports no inter-token "
                                              "histogram."))
    d = d.with_panel(g.timeseries("Inter-token latency, p99", _itl(0.99), unit="s"))

    d = d.with_row(g.row("KV cache"))
    d = d.with_panel(g.timeseries("KV-cache usage", [q(_per_replica([
        (f"vllm:kv_cache_usage_perc{{{_M}}}", "vllm"),
        (f"vllm:gpu_cache_usage_perc{{{_M}}}", "vllm<0.10"),
        (f"sglang:token_usage{{{_M}}}", "sglang"),
        (_triton(f'nv_trt_llm_kv_cache_block_metrics{{{_T}, kv_cache_block_type="fraction"}}'),
         "triton"),
    ]), _LEGEND)], unit="percentunit", min_val=0, max_val=1,
        thresholds=g.steps((None, "green"), (0.9, "red")),
        description="Share of the KV-cache blocks (tokens) in use per replica; near 1 the "
                    "engine preempts or queues requests."))
    d = d.with_panel(g.timeseries("Prefix-cache hit ratio", [
        q(_tag(f"{_vllm_prefix('hits')} / {_vllm_prefix('queries')}", "vllm"),
          _LEGEND_MODEL),
        q(_tag(f"sum by (model_name) (rate(sglang:cached_tokens_total{{{_M}}}{_RATE})) / "
               f"sum by (model_name) (rate(sglang:prompt_tokens_total{{{_M}}}{_RATE}))",
               "sglang"), _LEGEND_MODEL)],
        unit="percentunit", min_val=0, max_val=1,
        description="Prompt tokens served from the prefix cache over prompt tokens queried. "
                    "vLLM's old and new counter names are summed per model. Triton reports "
                    "reused blocks, not queries, so no ratio."))
    d = d.with_panel(g.timeseries("Preemptions", [
        q(_tag(f"sum by (model_name, instance) (rate(vllm:num_preemptions_total{{{_M}}}"
               f"{_RATE}))", "vllm"), _LEGEND),
        q(_tag(f"sum by (model_name, instance) (rate("
               f"sglang:num_retracted_requests_total{{{_M}}}{_RATE}))", "sglang"), _LEGEND)],
        unit="ops", description="Requests evicted from the KV cache to make room (SGLang: "
                                "retracted)."))
    d = d.with_panel(g.timeseries("KV-cache blocks reused (Triton)", [
        q(_triton(f"max by (model, instance) (nv_trt_llm_kv_cache_block_metrics{{{_T}, "
                  f'kv_cache_block_type="reused"}})'), _LEGEND)],
        unit="short"))

    d = d.with_row(g.row("Requests"))
    d = d.with_panel(g.timeseries("Running requests", [q(_per_replica([
        (f"vllm:num_requests_running{{{_M}}}", "vllm"),
        (f"sglang:num_running_reqs{{{_M}}}", "sglang"),
        (_triton(f'nv_trt_llm_request_metrics{{{_T}, request_type="active"}}'), "triton"),
    ]), _LEGEND)], unit="short"))
    d = d.with_panel(g.timeseries("Waiting requests", [q(_per_replica([
        (f"vllm:num_requests_waiting{{{_M}}}", "vllm"),
        (f"sglang:num_queue_reqs{{{_M}}}", "sglang"),
        (_triton(f'nv_trt_llm_request_metrics{{{_T}, request_type="waiting"}}'), "triton"),
    ]), _LEGEND)], unit="short"))
    d = d.with_panel(g.timeseries("Generated tokens per second", [
        q(_tag(f"sum by (model_name) (rate(vllm:generation_tokens_total{{{_M}}}{_RATE}))",
               "vllm"), _LEGEND_MODEL),
        q(_tag(f"sum by (model_name) (rate(sglang:generation_tokens_total{{{_M}}}{_RATE}))",
               "sglang"), _LEGEND_MODEL)],
        unit="short"))
    d = d.with_panel(g.timeseries("Finished requests by reason", [
        q(_tag(f"sum by (model_name, finished_reason) (rate(vllm:request_success_total"
               f"{{{_M}}}{_RATE}))", "vllm"), "{{server}} {{model_name}} {{finished_reason}}"),
        q(_triton(f"sum by (model) (rate(nv_inference_request_success{{{_T}}}{_RATE}))"),
          "{{server}} {{model_name}} success"),
        q(_triton(f"sum by (model) (rate(nv_inference_request_failure{{{_T}}}{_RATE}))"),
          "{{server}} {{model_name}} failure")],
        unit="reqps", stack=True))

    d = d.with_row(g.row("Replicas now"))
    d = d.with_panel(g.table("Replicas", [
        instant(_per_replica([
            (f"vllm:kv_cache_usage_perc{{{_M}}}", "vllm"),
            (f"vllm:gpu_cache_usage_perc{{{_M}}}", "vllm<0.10"),
            (f"sglang:token_usage{{{_M}}}", "sglang"),
            (_triton(f'nv_trt_llm_kv_cache_block_metrics{{{_T}, '
                     'kv_cache_block_type="fraction"}'), "triton"),
        ])),
        instant(_per_replica([
            (f"vllm:num_requests_waiting{{{_M}}}", "vllm"),
            (f"sglang:num_queue_reqs{{{_M}}}", "sglang"),
            (_triton(f'nv_trt_llm_request_metrics{{{_T}, request_type="waiting"}}'),
             "triton"),
        ])),
    ], rename={"Value #A": "KV-cache usage", "Value #B": "Waiting"}, sort_by="KV-cache usage",
        sort_desc=True, h=9,
        description="Every replica the Prometheus scrapes, fullest KV cache first.")
        .override_by_name("KV-cache usage", [dm.DynamicConfigValue("unit", "percentunit")]))
    return g.finish(d)
