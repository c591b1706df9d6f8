"""Inference-engine ``/metrics`` pages: vLLM v1 (and one replica in the old names), SGLang,
Triton with the TensorRT-LLM backend, and the training job's own exporter.

vLLM and SGLang use prometheus_client in single-process mode, so every counter
and histogram also has a ``*_created`` gauge family, values print as ``1.0``,
and labels come in declaration order (``le`` last).  Triton is prometheus-cpp:
counters without ``_total``, per-model labels ``model`` and ``version``.
"""

# ruff: noqa: E501  (upstream help texts are kept on one line, verbatim)

from __future__ import annotations

from collections.abc import Sequence

from gpuslo.simulator.entities import Replica, TrainingJob
from gpuslo.simulator.fleet import Fleet
from gpuslo.simulator.formats.exposition import Family, cpp_float, go_float, py_float, render
from gpuslo.simulator.histogram import (
    SGLANG_LATENCY_BUCKETS,
    SGLANG_TTFT_BUCKETS,
    TRITON_FIRST_RESPONSE_MS_BUCKETS,
    Histogram,
)

Labels = Sequence[tuple[str, str]]


class _PyPage:
    """Collects families the way prometheus_client's ``generate_latest`` writes them."""

    def __init__(self, created_s: float) -> None:
        self.families: list[Family] = []
        self.created = py_float(created_s)

    def gauge(self, name: str, help_: str, rows: list[tuple[Labels, float]]) -> None:
        f = Family(name, "gauge", help_)
        for labels, v in rows:
            f.add(labels, py_float(v))
        self.families.append(f)

    def counter(self, name: str, help_: str, rows: list[tuple[Labels, float]]) -> None:
        base = name.removesuffix("_total")
        f = Family(base + "_total", "counter", help_)
        c = Family(base + "_created", "gauge", help_)
        for labels, v in rows:
            f.add(labels, py_float(v))
            c.add(labels, self.created)
        self.families += [f, c]

    def histogram(self, name: str, help_: str, labels: Labels, h: Histogram) -> None:
        f = Family(name, "histogram", help_)
        for bound, cum in zip(h.bounds, h.cumulative, strict=True):
            f.add([*labels, ("le", py_float(bound))], py_float(cum), "_bucket")
        f.add([*labels, ("le", "+Inf")], py_float(h.count), "_bucket")
        f.add(labels, py_float(h.count), "_count")
        f.add(labels, py_float(h.sum), "_sum")
        c = Family(name + "_created", "gauge", help_)
        c.add(labels, self.created)
        self.families += [f, c]


def render_vllm(fleet: Fleet, r: Replica, ts_ms: int | None = None) -> str:
    """vLLM's page; ``r.legacy_names`` selects the pre-0.10 names and no ``engine`` label."""
    spec = fleet.services[r.service]
    c = r.counters
    legacy = r.legacy_names
    lbl: list[tuple[str, str]] = [("model_name", r.service)]
    if not legacy:
        lbl.append(("engine", "0"))
    page = _PyPage(r.start_s)
    page.gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
               [(lbl, round(r.running))])
    page.gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
               [(lbl, round(r.waiting))])
    if legacy:
        page.gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.",
                   [(lbl, r.kv_usage)])
        page.counter("vllm:gpu_prefix_cache_queries",
                     "GPU prefix cache queries, in terms of number of queried tokens.",
                     [(lbl, int(c.get("prefix_queries", 0.0)))])
        page.counter("vllm:gpu_prefix_cache_hits",
                     "GPU prefix cache hits, in terms of number of cached tokens.",
                     [(lbl, int(c.get("prefix_hits", 0.0)))])
    else:
        page.gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                   [(lbl, r.kv_usage)])
        page.counter("vllm:prefix_cache_queries",
                     "Prefix cache queries, in terms of number of queried tokens.",
                     [(lbl, int(c.get("prefix_queries", 0.0)))])
        page.counter("vllm:prefix_cache_hits",
                     "Prefix cache hits, in terms of number of cached tokens.",
                     [(lbl, int(c.get("prefix_hits", 0.0)))])
    page.counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
                 [(lbl, int(c.get("preemptions", 0.0)))])
    page.counter("vllm:prompt_tokens", "Number of prefill tokens processed.",
                 [(lbl, int(c.get("prompt_tokens", 0.0)))])
    page.counter("vllm:generation_tokens", "Number of generation tokens processed.",
                 [(lbl, int(c.get("generation_tokens", 0.0)))])
    page.counter("vllm:request_success", "Count of successfully processed requests.",
                 [([*lbl, ("finished_reason", reason)], int(c.get(f"success_{reason}", 0.0)))
                  for reason in ("stop", "length", "abort")])
    page.histogram("vllm:time_to_first_token_seconds",
                   "Histogram of time to first token in seconds.", lbl, r.ttft)
    if legacy:
        page.histogram("vllm:time_per_output_token_seconds",
                       "Histogram of time per output token in seconds.", lbl, r.itl)
    else:
        page.histogram("vllm:inter_token_latency_seconds",
                       "Histogram of inter-token latency in seconds.", lbl, r.itl)
    page.histogram("vllm:e2e_request_latency_seconds",
                   "Histogram of e2e request latency in seconds.", lbl, r.e2e)
    page.histogram("vllm:request_queue_time_seconds",
                   "Histogram of time spent in WAITING phase for request.", lbl, r.queue)
    page.histogram("vllm:request_prefill_time_seconds",
                   "Histogram of time spent in PREFILL phase for request.", lbl, r.prefill)
    page.histogram("vllm:request_decode_time_seconds",
                   "Histogram of time spent in DECODE phase for request.", lbl, r.decode)
    page.gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
               [([("block_size", "16"), ("cache_dtype", "auto"), ("enable_prefix_caching", "True"),
                  ("gpu_memory_utilization", "0.9"),
                  ("num_gpu_blocks", str(int(spec.kv_capacity_tokens // 16))),
                  ("engine", "")], 1.0)])
    return render(page.families, ts_ms)


def render_sglang(fleet: Fleet, r: Replica, ts_ms: int | None = None) -> str:
    """SGLang 0.5.x's page (``--enable-metrics``)."""
    spec = fleet.services[r.service]
    c = r.counters
    sched = [("model_name", r.service), ("engine_type", "unified"), ("tp_rank", "0"),
             ("pp_rank", "0"), ("moe_ep_rank", "0")]
    tok = [("model_name", r.service), ("engine_type", "unified")]
    page = _PyPage(r.start_s)
    page.gauge("sglang:num_running_reqs", "The number of running requests.",
               [(sched, round(r.running))])
    page.gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue.",
               [(sched, round(r.waiting))])
    page.gauge("sglang:num_used_tokens", "The number of used tokens.",
               [(sched, int(r.kv_usage * spec.kv_capacity_tokens))])
    page.gauge("sglang:max_total_num_tokens", "Maximum total number of tokens in the KV cache pool.",
               [(sched, spec.kv_capacity_tokens)])
    page.gauge("sglang:token_usage", "The token usage.", [(sched, round(r.kv_usage, 4))])
    page.gauge("sglang:gen_throughput", "The generation throughput (token/s).",
               [(sched, round(r.gen_tps, 2))])
    page.gauge("sglang:cache_hit_rate", "The prefix cache hit rate.",
               [(sched, round(r.window_hit_ratio, 4))])
    page.counter("sglang:prompt_tokens_total", "Number of prefill tokens processed.",
                 [([*tok, ("is_streaming", "true")], int(c.get("prompt_tokens", 0.0)))])
    page.counter("sglang:generation_tokens_total", "Number of generation tokens processed.",
                 [([*tok, ("is_streaming", "true")], int(c.get("generation_tokens", 0.0)))])
    page.counter("sglang:cached_tokens_total", "Number of cached prompt tokens.",
                 [([*tok, ("cache_source", "device")], int(c.get("prefix_hits", 0.0)))])
    page.counter("sglang:num_requests_total", "Number of requests processed.",
                 [(tok, int(c.get("requests", 0.0)))])
    page.counter("sglang:num_retracted_requests_total", "Number of retracted requests.",
                 [(sched, int(c.get("preemptions", 0.0)))])
    for name, help_, h, bounds in (
        ("sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
         r.ttft, SGLANG_TTFT_BUCKETS),
        ("sglang:e2e_request_latency_seconds", "Histogram of End-to-end request latency in seconds",
         r.e2e, SGLANG_LATENCY_BUCKETS),
    ):
        page.histogram(name, help_, [*tok, ("is_streaming", "true")], _rebucket(h, bounds))
    page.histogram("sglang:inter_token_latency_seconds",
                   "Histogram of inter-token latency in seconds.", tok, r.itl)
    return render(page.families, ts_ms)


def _rebucket(h: Histogram, bounds: tuple[float, ...]) -> Histogram:
    """The same observations counted against other bounds (nearest lower original bound)."""
    out = Histogram(bounds)
    out.count, out.sum = h.count, h.sum
    for i, b in enumerate(bounds):
        below = [cum for ob, cum in zip(h.bounds, h.cumulative, strict=True) if ob <= b]
        out.cumulative[i] = below[-1] if below else 0
    return out


def render_triton(fleet: Fleet, r: Replica, ts_ms: int | None = None) -> str:
    """Triton ``:8002/metrics`` with the TensorRT-LLM backend's ``nv_trt_llm_*`` gauges."""
    spec = fleet.services[r.service]
    c = r.counters
    mv = [("model", "tensorrt_llm"), ("version", "1")]
    fams: list[Family] = []

    def fam(name: str, kind: str, help_: str,
            rows: list[tuple[list[tuple[str, str]], float]]) -> None:
        f = Family(name, kind, help_)
        for labels, v in rows:
            f.add(sorted(labels), cpp_float(v))
        fams.append(f)

    max_blocks = int(spec.kv_capacity_tokens // 64)
    used = int(r.kv_usage * max_blocks)
    fam("nv_trt_llm_request_metrics", "gauge", "TRT LLM request metrics", [
        ([("request_type", "waiting"), *mv], round(r.waiting)),
        ([("request_type", "context"), *mv], min(round(r.running), 8)),
        ([("request_type", "scheduled"), *mv], round(r.running)),
        ([("request_type", "max"), *mv], spec.max_num_seqs),
        ([("request_type", "active"), *mv], round(r.running)),
    ])
    fam("nv_trt_llm_runtime_memory_metrics", "gauge", "TRT LLM runtime memory metrics", [
        ([("memory_type", "pinned"), *mv], 0),
        ([("memory_type", "gpu"), *mv], 1610236),
        ([("memory_type", "cpu"), *mv], 0),
    ])
    fam("nv_trt_llm_kv_cache_block_metrics", "gauge", "TRT LLM KV cache block metrics", [
        ([("kv_cache_block_type", "fraction"), *mv], round(used / max_blocks, 4)),
        ([("kv_cache_block_type", "tokens_per"), *mv], 64),
        ([("kv_cache_block_type", "used"), *mv], used),
        ([("kv_cache_block_type", "free"), *mv], max_blocks - used),
        ([("kv_cache_block_type", "max"), *mv], max_blocks),
        ([("kv_cache_block_type", "reused"), *mv], int(c.get("prefix_hits", 0.0) // 64)),
    ])
    fam("nv_trt_llm_inflight_batcher_metrics", "gauge", "TRT LLM inflight_batcher-specific metrics", [
        ([("inflight_batcher_specific_metric", "micro_batch_id"), *mv], 0),
        ([("inflight_batcher_specific_metric", "generation_requests"), *mv], round(r.running)),
        ([("inflight_batcher_specific_metric", "total_context_tokens"), *mv],
         int(r.rps * spec.prompt_tokens * 0.05)),
    ])
    fam("nv_trt_llm_general_metrics", "gauge", "General TRT LLM metrics", [
        ([("general_type", "iteration_counter"), *mv], int(c.get("iterations", 0.0))),
        ([("general_type", "timestamp"), *mv], int(fleet.t)),
    ])
    n = int(c.get("requests", 0.0))
    for name, help_, v in (
        ("nv_inference_request_success", "Number of successful inference requests, all batch sizes", n),
        ("nv_inference_request_failure", "Number of failed inference requests, all batch sizes",
         int(c.get("success_abort", 0.0))),
        ("nv_inference_count", "Number of inferences performed (does not include cached requests)", n),
        ("nv_inference_exec_count", "Number of model executions performed (does not include cached requests)",
         int(c.get("iterations", 0.0))),
        ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds (includes cached requests)",
         int(c.get("time_us", 0.0))),
        ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds (includes cached requests)",
         int(c.get("queue_us", 0.0))),
        ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds (does not include cached requests)",
         int(n * 800)),
        ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds (does not include cached requests)",
         int(c.get("time_us", 0.0) - c.get("queue_us", 0.0))),
        ("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in microseconds (does not include cached requests)",
         int(n * 300)),
    ):
        fam(name, "counter", help_, [(list(mv), v)])
    fam("nv_inference_pending_request_count", "gauge",
        "Instantaneous number of pending requests awaiting execution per-model.",
        [(list(mv), round(r.waiting))])
    h = _rebucket_ms(r.ttft)
    f = Family("nv_inference_first_response_histogram_ms", "histogram",
               "Duration from request to first response in milliseconds")
    for bound, cum in zip(h.bounds, h.cumulative, strict=True):
        f.add([*mv, ("le", cpp_float(bound))], cpp_float(cum), "_bucket")
    f.add([*mv, ("le", "+Inf")], cpp_float(h.count), "_bucket")
    f.add(mv, cpp_float(h.sum), "_sum")
    f.add(mv, cpp_float(h.count), "_count")
    fams.append(f)
    gpu_rows = [([("gpu_uuid", g.uuid)], g) for g in r.gpus if not g.lost]
    fam("nv_gpu_utilization", "gauge", "GPU utilization rate [0.0 - 1.0)",
        [(lbl, round(g.util, 4)) for lbl, g in gpu_rows])
    fam("nv_gpu_power_usage", "gauge", "GPU power usage in watts",
        [(lbl, round(g.power_w, 3)) for lbl, g in gpu_rows])
    fam("nv_energy_consumption", "counter", "GPU energy consumption in joules since the Triton Server started",
        [(lbl, round(g.energy_mj / 1000.0, 3)) for lbl, g in gpu_rows])
    return render(fams, ts_ms)


def _rebucket_ms(h: Histogram) -> Histogram:
    seconds = _rebucket(h, tuple(b / 1000.0 for b in TRITON_FIRST_RESPONSE_MS_BUCKETS))
    out = Histogram(TRITON_FIRST_RESPONSE_MS_BUCKETS)
    out.cumulative, out.count, out.sum = seconds.cumulative, seconds.count, seconds.sum * 1000.0
    return out


def render_engine(fleet: Fleet, r: Replica, ts_ms: int | None = None) -> str:
    """Dispatch on the replica's engine."""
    if r.engine == "sglang":
        return render_sglang(fleet, r, ts_ms)
    if r.engine == "triton":
        return render_triton(fleet, r, ts_ms)
    return render_vllm(fleet, r, ts_ms)


def render_training(job: TrainingJob, ts_ms: int | None = None) -> str:
    """The training job's own exporter (simulator-defined names, client_golang style).

    No upstream standard exists for step time; these names are the simulator's:
    ``training_step_duration_seconds`` (histogram), ``training_steps_total``, a
    per-rank ``training_rank_compute_seconds`` gauge (the straggler shows here) and
    a per-rank ``training_rank_step_seconds`` gauge (every rank waits for the
    slowest, so a fault slows every rank's step: the symptom is everywhere).
    """
    lbl = [("job", job.name)]
    fams: list[Family] = []
    h = job.step_hist
    f = Family("training_step_duration_seconds", "histogram",
               "Wall time of one synchronous training step.")
    for bound, cum in zip(h.bounds, h.cumulative, strict=True):
        f.add([*lbl, ("le", go_float(bound))], go_float(cum), "_bucket")
    f.add([*lbl, ("le", "+Inf")], go_float(h.count), "_bucket")
    f.add(lbl, go_float(round(h.sum, 6)), "_sum")
    f.add(lbl, go_float(h.count), "_count")
    fams.append(f)
    s = Family("training_steps_total", "counter", "Optimizer steps completed by this run.")
    s.add(lbl, go_float(job.steps))
    fams.append(s)
    g = Family("training_rank_compute_seconds", "gauge",
               "Compute time of the last step on each rank, excluding waits.")
    for rk in job.ranks:
        g.add([*lbl, ("node", rk.gpu.node), ("gpu", str(rk.gpu.index)), ("rank", str(rk.rank))],
              go_float(round(rk.compute_s, 6)))
    fams.append(g)
    st = Family("training_rank_step_seconds", "gauge",
                "Wall time of the last step on each rank, waits included (the same on every rank "
                "of a synchronous job).")
    for rk in job.ranks:
        st.add([*lbl, ("node", rk.gpu.node), ("gpu", str(rk.gpu.index)), ("rank", str(rk.rank))],
               go_float(round(job.step_s, 6)))
    fams.append(st)
    up = Family("training_job_up", "gauge", "1 while the job's processes run.")
    up.add(lbl, "1" if job.up else "0")
    fams.append(up)
    return render(fams, ts_ms)
