"""KV-cache / inference-engine mapping.

Triton/TensorRT-LLM uses the real README sample (fixture).  No real vLLM v1 or
SGLang capture exists upstream, so those payloads are written here from the
metric names, types and labels in the sources catalogue (vLLM 0.33.0, older v0
names, SGLang 0.5.23) as prometheus_client would expose them.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from gpuslo.collectors.mappings import kvcache
from gpuslo.pipeline.schema import label

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
TS = 1_700_000_000_000
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def mapped(text: str, replica: str | None = None) -> pl.DataFrame:
    return kvcache.parse(text, node="n1", scrape_ts_ms=TS, replica=replica)


def normalised(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.filter(pl.col("metric").str.starts_with("gpuslo_"))


def one(frame: pl.DataFrame, metric: str, entity: str | None = None) -> float:
    got = frame.filter(pl.col("metric") == metric)
    if entity is not None:
        got = got.filter(pl.col("entity") == entity)
    assert got.height == 1, got
    return float(got["value"][0])


def vllm_v1(engine: str = "0") -> str:
    L = f'model_name="{MODEL}",engine="{engine}"'
    return f"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{{L}}} 7.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{{L}}} 3.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{{L}}} 0.8125
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{{{L}}} 120000.0
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{{{L}}} 45000.0
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{{{L}}} 12.0
# TYPE vllm:request_success counter
vllm:request_success_total{{{L},finished_reason="stop"}} 900.0
vllm:request_success_total{{{L},finished_reason="length"}} 80.0
vllm:request_success_total{{{L},finished_reason="abort"}} 15.0
vllm:request_success_total{{{L},finished_reason="error"}} 5.0
vllm:request_success_total{{{L},finished_reason="repetition"}} 0.0
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{{{L},le="0.1"}} 600.0
vllm:time_to_first_token_seconds_bucket{{{L},le="0.5"}} 950.0
vllm:time_to_first_token_seconds_bucket{{{L},le="+Inf"}} 1000.0
vllm:time_to_first_token_seconds_count{{{L}}} 1000.0
vllm:time_to_first_token_seconds_sum{{{L}}} 123.4
# TYPE vllm:inter_token_latency_seconds histogram
vllm:inter_token_latency_seconds_bucket{{{L},le="0.025"}} 40000.0
vllm:inter_token_latency_seconds_bucket{{{L},le="+Inf"}} 50000.0
vllm:inter_token_latency_seconds_count{{{L}}} 50000.0
vllm:inter_token_latency_seconds_sum{{{L}}} 1000.0
"""


def vllm_v0() -> str:
    """The same engine state under the pre-rename names (v0 had no ``engine`` label)."""
    L = f'model_name="{MODEL}"'
    return f"""# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{{L}}} 7.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{{L}}} 3.0
# TYPE vllm:num_requests_swapped gauge
vllm:num_requests_swapped{{{L}}} 0.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{{{L}}} 0.8125
# TYPE vllm:cpu_cache_usage_perc gauge
vllm:cpu_cache_usage_perc{{{L}}} 0.0
# TYPE vllm:gpu_prefix_cache_queries counter
vllm:gpu_prefix_cache_queries_total{{{L}}} 120000.0
# TYPE vllm:gpu_prefix_cache_hits counter
vllm:gpu_prefix_cache_hits_total{{{L}}} 45000.0
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{{{L}}} 12.0
# TYPE vllm:request_success counter
vllm:request_success_total{{{L},finished_reason="stop"}} 900.0
vllm:request_success_total{{{L},finished_reason="length"}} 80.0
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{{{L},le="0.1"}} 600.0
vllm:time_to_first_token_seconds_bucket{{{L},le="+Inf"}} 1000.0
vllm:time_to_first_token_seconds_count{{{L}}} 1000.0
vllm:time_to_first_token_seconds_sum{{{L}}} 123.4
# TYPE vllm:time_per_output_token_seconds histogram
vllm:time_per_output_token_seconds_bucket{{{L},le="0.025"}} 40000.0
vllm:time_per_output_token_seconds_bucket{{{L},le="+Inf"}} 50000.0
vllm:time_per_output_token_seconds_count{{{L}}} 50000.0
vllm:time_per_output_token_seconds_sum{{{L}}} 1000.0
"""


def sglang(tokenizer: str = 'engine_type="unified"',
           scheduler: tuple[str, ...] = ('engine_type="unified",tp_rank="0",pp_rank="0",'
                                         'moe_ep_rank="0"',)) -> str:
    """One SGLang server's page: tokenizer series (request counters, latency)
    carry ``model_name``, ``engine_type`` and no rank; scheduler series (queue,
    KV usage, retractions) also carry ``tp_rank``/``pp_rank``/``moe_ep_rank``
    (SGLang 0.5.23 label sets).  ``scheduler`` lists one label set per
    reporting scheduler (more than one with DP, or with
    ``--enable-metrics-for-all-schedulers``), ``tokenizer`` the extra labels of
    the tokenizer side (older releases: none).
    """
    L = ",".join(x for x in (f'model_name="{MODEL}"', tokenizer) if x)

    def sched(metric: str, value: float) -> str:
        return "".join(f"{metric}{{model_name=\"{MODEL}\",{labels}}} {value}\n"
                       for labels in scheduler)

    return f"""# TYPE sglang:num_running_reqs gauge
{sched("sglang:num_running_reqs", 5.0)}# TYPE sglang:num_queue_reqs gauge
{sched("sglang:num_queue_reqs", 2.0)}# TYPE sglang:token_usage gauge
{sched("sglang:token_usage", 0.42)}# TYPE sglang:cache_hit_rate gauge
{sched("sglang:cache_hit_rate", 0.99)}# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{{{L},is_streaming="true"}} 6000.0
sglang:prompt_tokens_total{{{L},is_streaming="false"}} 4000.0
# TYPE sglang:cached_tokens_total counter
sglang:cached_tokens_total{{{L},cache_source="device"}} 2500.0
sglang:cached_tokens_total{{{L},cache_source="host"}} 500.0
# TYPE sglang:num_retracted_requests_total counter
{sched("sglang:num_retracted_requests_total", 4.0)}# TYPE sglang:num_requests_total counter
sglang:num_requests_total{{{L}}} 300.0
# TYPE sglang:num_aborted_requests_total counter
sglang:num_aborted_requests_total{{{L}}} 6.0
# TYPE sglang:time_to_first_token_seconds histogram
sglang:time_to_first_token_seconds_bucket{{{L},is_streaming="true",le="0.2"}} 250.0
sglang:time_to_first_token_seconds_bucket{{{L},is_streaming="true",le="+Inf"}} 300.0
sglang:time_to_first_token_seconds_count{{{L},is_streaming="true"}} 300.0
sglang:time_to_first_token_seconds_sum{{{L},is_streaming="true"}} 45.0
"""


def test_triton_trtllm_readme_fixture() -> None:
    text = (FIXTURES / "triton-trtllm" / "tensorrtllm_backend-README-metrics.prom").read_text()
    out = mapped(text)
    entity = "tensorrt_llm/version=1"
    n = normalised(out)
    # nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"} 0.4875
    # (= used/max as the backend reports it, already 0-1)
    assert one(n, "gpuslo_kv_cache_usage_ratio", entity) == 0.4875
    # request_type="active" 0, "waiting" 1; Triton's generic pending count (0) is
    # only a fallback, so waiting is not doubled.
    assert one(n, "gpuslo_requests_running", entity) == 0
    assert one(n, "gpuslo_requests_waiting", entity) == 1
    # nv_inference_request_success/failure are counters without _total upstream.
    assert one(n, "gpuslo_requests_succeeded_total", entity) == 0
    assert set(out["entity"]) == {entity}
    assert kvcache.detect_engine(out) == "triton"


def test_triton_summary_example_is_kept_raw() -> None:
    text = (FIXTURES / "triton-trtllm" / "triton-server-docs-summary-example.prom").read_text()
    out = mapped(text)
    assert normalised(out).height == 0
    assert out.filter(pl.col("metric") == "nv_inference_queue_summary_us_count")["value"][0] == 161


def test_triton_first_response_histogram_in_ms_becomes_seconds() -> None:
    text = """# TYPE nv_inference_first_response_histogram_ms histogram
nv_inference_first_response_histogram_ms_bucket{model="m",version="1",le="100"} 3
nv_inference_first_response_histogram_ms_bucket{model="m",version="1",le="+Inf"} 4
nv_inference_first_response_histogram_ms_sum{model="m",version="1"} 520
nv_inference_first_response_histogram_ms_count{model="m",version="1"} 4
"""
    n = normalised(mapped(text))
    # sum 520 ms -> 0.52 s; bucket bound 100 ms -> 0.1 s; counts unchanged
    assert one(n, "gpuslo_time_to_first_token_seconds_sum") == pytest.approx(0.52)
    assert one(n, "gpuslo_time_to_first_token_seconds_count") == 4
    les = sorted(lab["value"] for labs in
                 n.filter(pl.col("metric") == "gpuslo_time_to_first_token_seconds_bucket")["labels"]
                 for lab in labs if lab["name"] == "le")
    assert les == ["+Inf", "0.1"]


def test_triton_malformed_doc_example_is_not_silently_mapped() -> None:
    text = (FIXTURES / "triton-trtllm"
            / "triton-server-docs-histogram-example.MALFORMED.prom").read_text()
    try:
        out = mapped(text)
    except ValueError:
        return  # a strict parser rejects it: fine
    # A lenient parser sees untyped families; they must not pass for a TTFT histogram.
    assert normalised(out).filter(
        pl.col("metric").str.starts_with("gpuslo_time_to_first_token")).height == 0


def test_vllm_v1_values() -> None:
    n = normalised(mapped(vllm_v1()))
    e = f"{MODEL}/engine=0"
    assert one(n, "gpuslo_kv_cache_usage_ratio", e) == 0.8125
    assert one(n, "gpuslo_prefix_cache_queries_tokens_total", e) == 120000
    assert one(n, "gpuslo_prefix_cache_hits_tokens_total", e) == 45000
    assert one(n, "gpuslo_preemptions_total", e) == 12
    assert one(n, "gpuslo_requests_running", e) == 7
    assert one(n, "gpuslo_requests_waiting", e) == 3
    # finished = 900+80+15+5+0; succeeded = stop+length+repetition = 980
    finished = n.filter(pl.col("metric") == "gpuslo_requests_finished_total")["value"].sum()
    ok = n.filter(pl.col("metric") == "gpuslo_requests_succeeded_total")["value"].sum()
    assert (finished, ok) == (1000, 980)
    assert one(n, "gpuslo_requests_failed_total", e) == 5
    assert one(n, "gpuslo_requests_aborted_total", e) == 15
    assert one(n, "gpuslo_inter_token_latency_seconds_count", e) == 50000
    assert set(n.filter(pl.col("metric").str.ends_with("_bucket"))["kind"]) == {"histogram_bucket"}


def test_vllm_v0_and_v1_give_the_same_normalised_names_and_values() -> None:
    n0 = normalised(mapped(vllm_v0()))
    n1 = normalised(mapped(vllm_v1()))
    core = {"gpuslo_kv_cache_usage_ratio", "gpuslo_prefix_cache_queries_tokens_total",
            "gpuslo_prefix_cache_hits_tokens_total", "gpuslo_preemptions_total",
            "gpuslo_requests_running", "gpuslo_requests_waiting",
            "gpuslo_time_to_first_token_seconds_bucket",
            "gpuslo_inter_token_latency_seconds_count", "gpuslo_requests_finished_total"}
    assert core <= set(n0["metric"])
    assert core <= set(n1["metric"])
    for metric in ("gpuslo_kv_cache_usage_ratio", "gpuslo_prefix_cache_hits_tokens_total",
                   "gpuslo_inter_token_latency_seconds_sum"):
        assert one(n0, metric) == one(n1, metric)
    assert set(n0["entity"]) == {MODEL}


def test_payload_with_both_old_and_new_names_is_not_counted_twice() -> None:
    both = vllm_v1() + (
        "# TYPE vllm:gpu_cache_usage_perc gauge\n"
        f'vllm:gpu_cache_usage_perc{{model_name="{MODEL}",engine="0"}} 0.8125\n'
        "# TYPE vllm:gpu_prefix_cache_hits counter\n"
        f'vllm:gpu_prefix_cache_hits_total{{model_name="{MODEL}",engine="0"}} 45000.0\n'
    )
    n = normalised(mapped(both))
    assert n.filter(pl.col("metric") == "gpuslo_kv_cache_usage_ratio").height == 1
    assert n.filter(pl.col("metric") == "gpuslo_prefix_cache_hits_tokens_total").height == 1


def test_data_parallel_engines_are_separate_entities() -> None:
    n = normalised(mapped(vllm_v1("0") + vllm_v1("1").replace("# TYPE", "# XTYPE")
                          .replace("# HELP", "# XHELP")))
    usage = n.filter(pl.col("metric") == "gpuslo_kv_cache_usage_ratio")
    assert sorted(usage["entity"]) == [f"{MODEL}/engine=0", f"{MODEL}/engine=1"]


def test_sglang_prefix_hits_come_from_token_counters_not_the_window_gauge() -> None:
    n = normalised(mapped(sglang()))
    hits = n.filter(pl.col("metric") == "gpuslo_prefix_cache_hits_tokens_total")
    queries = n.filter(pl.col("metric") == "gpuslo_prefix_cache_queries_tokens_total")
    # hits = 2500 (device) + 500 (host); queries = 6000 + 4000 prompt tokens
    assert hits["value"].sum() == 3000
    assert queries["value"].sum() == 10000
    # 3000/10000 = 0.3, not the 0.99 of the last window's cache_hit_rate gauge.
    assert float(hits["value"].sum()) / float(queries["value"].sum()) == pytest.approx(0.3)
    assert 0.99 not in n["value"].to_list()
    assert one(n, "gpuslo_kv_cache_usage_ratio") == 0.42
    assert one(n, "gpuslo_preemptions_total") == 4
    assert one(n, "gpuslo_requests_aborted_total") == 6
    assert one(n, "gpuslo_requests_running") == 5


def test_replica_name_is_appended_to_the_entity() -> None:
    n = normalised(mapped(sglang(), replica="sglang-7d9f"))
    assert all(e.endswith("replica=sglang-7d9f") for e in n["entity"])


# Normalised signals of one SGLang server, from both sides of it.
SGLANG_SCHEDULER_SIGNALS = ("gpuslo_kv_cache_usage_ratio", "gpuslo_requests_running",
                            "gpuslo_requests_waiting", "gpuslo_preemptions_total")
SGLANG_TOKENIZER_SIGNALS = ("gpuslo_prefix_cache_hits_tokens_total",
                            "gpuslo_prefix_cache_queries_tokens_total",
                            "gpuslo_requests_finished_total", "gpuslo_requests_aborted_total",
                            "gpuslo_time_to_first_token_seconds_count")


def entities_of(frame: pl.DataFrame, metric: str) -> set[str]:
    return set(frame.filter(pl.col("metric") == metric)["entity"])


def label_values(frame: pl.DataFrame, name: str) -> list[str | None]:
    return frame.select(label(name).alias("v"))["v"].to_list()


def test_sglang_kv_usage_and_prefix_cache_of_one_server_share_one_entity() -> None:
    out = mapped(sglang())
    n = normalised(out)
    for metric in SGLANG_SCHEDULER_SIGNALS + SGLANG_TOKENIZER_SIGNALS:
        assert entities_of(n, metric) == {MODEL}, metric
    assert set(out["entity"]) == {MODEL}  # upstream rows too
    # A per-replica join sees one whole replica, not two halves.
    hits = (n.filter(pl.col("metric") == "gpuslo_prefix_cache_hits_tokens_total")
            .group_by("entity").agg(pl.col("value").sum().alias("hits")))
    usage = n.filter(pl.col("metric") == "gpuslo_kv_cache_usage_ratio").select(
        "entity", usage=pl.col("value"))
    joined = usage.join(hits, on="entity")
    assert joined.rows() == [(MODEL, 0.42, 3000.0)]
    # The rank labels are kept on the scheduler's rows, only not in the entity.
    row = n.filter(pl.col("metric") == "gpuslo_kv_cache_usage_ratio")
    assert [label_values(row, k)[0] for k in ("engine_type", "tp_rank", "pp_rank")] == [
        "unified", "0", "0"]
    # With the scrape target's replica name, still one entity per server.
    named = mapped(sglang(), replica="inference/sglang-0")
    assert set(named["entity"]) == {f"{MODEL}/replica=inference/sglang-0"}


_SCHED = 'engine_type="{t}",tp_rank="{tp}",pp_rank="0",moe_ep_rank="0"'


@pytest.mark.parametrize(("tokenizer", "scheduler", "rank_label"), [
    # --enable-metrics-for-all-schedulers: every TP rank reports.
    ('engine_type="unified"',
     (_SCHED.format(t="unified", tp=0), _SCHED.format(t="unified", tp=1)), "tp_rank"),
    # DP attention: each DP group's attention-TP rank 0 reports, with dp_rank.
    ('engine_type="unified"',
     (_SCHED.format(t="unified", tp=0) + ',dp_rank="0"',
      _SCHED.format(t="unified", tp=1) + ',dp_rank="1"'), "dp_rank"),
    # Releases before engine_type reached the tokenizer side.
    ("", (_SCHED.format(t="unified", tp=0),), None),
    # PD with several tokenizer workers: tokenizer says unified, scheduler prefill.
    ('engine_type="unified"', (_SCHED.format(t="prefill", tp=0),), None),
], ids=["all-schedulers", "dp-attention", "no-engine-type-on-tokenizer", "pd-multi-tokenizer"])
def test_sglang_label_variants_keep_one_entity_per_server(
    tokenizer: str, scheduler: tuple[str, ...], rank_label: str | None
) -> None:
    n = normalised(mapped(sglang(tokenizer, scheduler), replica="sglang-0"))
    entity = f"{MODEL}/replica=sglang-0"
    for metric in SGLANG_SCHEDULER_SIGNALS + SGLANG_TOKENIZER_SIGNALS:
        assert entities_of(n, metric) == {entity}, metric
    usage = n.filter(pl.col("metric") == "gpuslo_kv_cache_usage_ratio")
    assert usage.height == len(scheduler)
    if rank_label is not None:
        # Different ranks stay different series of that entity (by their labels).
        assert sorted(v or "" for v in label_values(usage, rank_label)) == ["0", "1"]


def test_simulated_sglang_page_keeps_one_entity_per_replica() -> None:
    from gpuslo.simulator import Fleet, FleetSpec, ServiceSpec
    from gpuslo.simulator.formats.engines import render_sglang

    fleet = Fleet(FleetSpec(nodes=1, gpus_per_node=2, seed=3, training=None, services=(
        ServiceSpec("qwen-32b", "sglang", replicas=1, tp=2, base_rps=5.0,
                    kv_capacity_tokens=200_000.0),)))
    fleet.advance(fleet.t + 300.0)
    r = next(r for r in fleet.replicas if r.engine == "sglang")
    n = normalised(mapped(render_sglang(fleet, r, int(fleet.t * 1000)), replica=r.key))
    entity = f"{r.service}/replica={r.key}"
    for metric in ("gpuslo_kv_cache_usage_ratio", "gpuslo_prefix_cache_hits_tokens_total",
                   "gpuslo_prefix_cache_queries_tokens_total", "gpuslo_requests_running",
                   "gpuslo_time_to_first_token_seconds_count"):
        assert entities_of(n, metric) == {entity}, metric


def test_trtllm_serve_names() -> None:
    text = """# TYPE trtllm_kv_cache_utilization gauge
trtllm_kv_cache_utilization{model_name="m",engine_type="trtllm"} 0.3
# TYPE trtllm_request_success_total counter
trtllm_request_success_total{model_name="m",engine_type="trtllm",finished_reason="stop"} 10
# TYPE trtllm_num_requests_waiting gauge
trtllm_num_requests_waiting{model_name="m",engine_type="trtllm"} 2
"""
    n = normalised(mapped(text))
    assert one(n, "gpuslo_kv_cache_usage_ratio") == 0.3
    assert one(n, "gpuslo_requests_succeeded_total") == 10
    assert one(n, "gpuslo_requests_waiting") == 2
    # trtllm-serve puts engine_type on every series, so it stays in the entity.
    assert set(n["entity"]) == {"m/engine_type=trtllm"}
