"""Coverage-guided fuzzing of the exposition parser and the record decoders (atheris).

Why: the hypothesis tests in CI try a few hundred cases per input type; this
run tries a million or more, guided by coverage (libFuzzer through atheris),
over the two inputs gpuslo reads from outside at the highest rate: scrape
payloads (``parse_exposition``: text, OpenMetrics, auto-detected) and Kafka
records (``schema.decode``, ``slo.wire.decode_partials``, and the checkpoint
reader, which shares their Arrow path).  The promise checked on every case:
the call returns, or raises its documented ``InputError`` subclass; any other
exception, a crash (a polars abort), a hang or a memory bomb is a finding.

Each worker is a child process running libFuzzer over a corpus seeded from
``tests/fixtures`` and encoded frames; the parent sums what they report and
prints cases, cases/s, coverage (libFuzzer's edge count, the largest any
worker reached) and the findings, each with the input saved to reproduce it.

Run: ``python benchmarks/fuzz.py --cases 1000000 --jobs 2`` (``pip install -e
'.[fuzz]'`` first, which is atheris; without it the script says so and runs the hypothesis fuzz
tests with ``GPUSLO_FUZZ_SCALE`` raised to about the same number of cases).
Measured (2 shared cores, two workers): 1,000,000 cases in 2,275 s = 440
cases/s, 725 coverage edges; it found one bug (a metadata line whose name is
only a ``\x1c`` blank: ``IndexError`` out of the parser, fixed, regression test
in ``tests/collectors/test_exposition.py``).  ``--cases`` and ``--jobs`` size
the run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
PAYLOADS = [
    "cadvisor/prometheus_metrics", "node_exporter/e2e-output.txt",
    "kubelet/metrics_resource.metrics-server-client_test.prom",
    "triton-trtllm/tensorrtllm_backend-README-metrics.prom",
    "triton-trtllm/triton-server-docs-summary-example.prom",
    "triton-trtllm/triton-server-docs-histogram-example.MALFORMED.prom",
    "lustre/lustrefs_exporter__tests__valid_fixture_valid.txt.histsnap",
]
OM_SEED = (
    b"# TYPE rq counter\n# UNIT rq_seconds seconds\n# HELP rq Requests.\n"
    b'rq_total{code="200"} 12 1700000000.5 # {trace_id="a"} 1 1700000000.1\n'
    b'rq_created{code="200"} 1700000000.0\n# TYPE lat histogram\n'
    b'lat_bucket{le="0.5"} 3\nlat_bucket{le="+Inf"} 5\nlat_count 5\nlat_sum 2.5\n# EOF\n'
)
# The first byte of a case picks what reads the rest.
TARGETS = ["text", "openmetrics", "detect", "sample", "partials", "checkpoint"]
HYPOTHESIS_FILES = ["tests/collectors/test_exposition_fuzz.py",
                    "tests/pipeline/test_decoders_fuzz.py"]


# ------------------------------------------------------------------------------ seeds


# gpuslo is imported inside the functions below, not at the top: a worker must import it
# inside atheris.instrument_imports() for the coverage feedback to see its code.


def write_seed_corpus(corpus: Path) -> int:
    """Seed inputs, each prefixed with the byte of the target that reads it."""
    from datetime import UTC, datetime

    import polars as pl

    from gpuslo.pipeline.schema import encode, frame_from_rows
    from gpuslo.pipeline.stages.checkpoint import CheckpointStore
    from gpuslo.slo.sli import PARTIAL_SCHEMA
    from gpuslo.slo.wire import encode_partials

    corpus.mkdir(parents=True, exist_ok=True)
    seeds: list[tuple[str, bytes]] = []
    for rel in PAYLOADS:
        text = (FIXTURES / rel).read_bytes()[:4000]
        seeds += [("text", text), ("detect", text)]
    seeds += [("openmetrics", OM_SEED), ("detect", OM_SEED)]
    frame = frame_from_rows([
        (1_700_000_000_000, "n1", "dcgm", "DCGM_FI_DEV_GPU_TEMP", "gauge", 71.0, "GPU-1",
         {"UUID": "GPU-1", "gpu": "0"}),
        (1_700_000_000_001, "n2", "kvcache", "x_total", "counter", float("nan"), "", {}),
    ])
    partials = pl.DataFrame(
        {"partition": [0], "slo": ["ttft"], "scope": [""],
         "minute": [datetime(2024, 1, 1, tzinfo=UTC)], "good": [3.0], "total": [4.0]},
        schema=PARTIAL_SCHEMA)
    seeds += [("sample", encode(frame)), ("sample", encode(frame.head(0))),
              ("partials", encode_partials(partials))]
    with tempfile.TemporaryDirectory() as d:
        store = CheckpointStore(d)
        store.write("s", 0, 42, {"state": frame, "partials": partials}, {"alerts": {}})
        seeds.append(("checkpoint", store.path("s", 0).read_bytes()))
    for i, (target, data) in enumerate(seeds):
        (corpus / f"seed-{i:03d}-{target}").write_bytes(bytes([TARGETS.index(target)]) + data)
    return len(seeds)


# ------------------------------------------------------------------------------ one case


class Harness:
    """Reads one case with the chosen target; records anything undocumented."""

    def __init__(self, findings: Path) -> None:
        from gpuslo.collectors.exposition import ExpositionError, parse_exposition
        from gpuslo.pipeline.schema import SchemaError, decode
        from gpuslo.pipeline.stages.checkpoint import CorruptCheckpointError, _decode
        from gpuslo.slo.wire import PartialsError, decode_partials

        def parse(openmetrics: bool | None) -> Any:
            return lambda data: parse_exposition(data, node="n", source="fuzz",
                                                 scrape_ts_ms=1_700_000_000_000,
                                                 entity_label="container",
                                                 openmetrics=openmetrics)

        self.readers: list[tuple[Any, type[Exception]]] = [
            (parse(False), ExpositionError), (parse(True), ExpositionError),
            (parse(None), ExpositionError), (decode, SchemaError),
            (decode_partials, PartialsError),
            (lambda data: _decode(data, "fuzz.ckpt"), CorruptCheckpointError),
        ]
        self.findings = findings
        self.seen: set[str] = set()

    def __call__(self, case: bytes) -> None:
        if not case:
            return
        reader, documented = self.readers[case[0] % len(self.readers)]
        try:
            reader(case[1:])
        except documented:
            pass
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a polars panic is a BaseException
            self.record(case, exc)

    def record(self, case: bytes, exc: BaseException) -> None:
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f"{Path(frame.filename).name}:{frame.lineno}" if frame else "?"
        key = f"{TARGETS[case[0] % len(TARGETS)]}-{type(exc).__name__}-{where}"
        if key in self.seen:
            return
        self.seen.add(key)
        self.findings.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        (self.findings / f"{safe}.bin").write_bytes(case)
        with (self.findings / "findings.jsonl").open("a") as f:
            f.write(json.dumps({"key": key, "error": repr(exc)[:300],
                                "input": str(self.findings / f"{safe}.bin")}) + "\n")


# ------------------------------------------------------------------------------ a worker


def worker(args: argparse.Namespace) -> None:
    # Optional dependency: atheris (libFuzzer for Python) is not part of the install;
    # the parent only starts workers after checking that it imports.
    import atheris

    with atheris.instrument_imports(include=["gpuslo", "prometheus_client"]):
        harness = Harness(Path(args.findings))
    atheris.Setup(
        [sys.argv[0], f"-runs={args.runs}", f"-seed={args.seed}", f"-max_len={args.max_len}",
         f"-timeout={args.case_timeout}", "-rss_limit_mb=4096", "-print_final_stats=1",
         "-print_pcs=0", "-reload=30", args.corpus],
        harness)
    atheris.Fuzz()


# ------------------------------------------------------------------------------ the parent


def stats_of(log: str) -> dict[str, float]:
    """What libFuzzer printed: cases run, exec/s, coverage edges and features."""
    out: dict[str, float] = {}
    for pattern, key in ((r"stat::number_of_executed_units: (\d+)", "cases"),
                         (r"stat::average_exec_per_sec: (\d+)", "exec_s"),
                         (r"Done (\d+) runs", "cases")):
        m = re.findall(pattern, log)
        if m:
            out[key] = float(m[-1])
    for key in ("cov", "ft"):
        m = re.findall(rf"\b{key}: (\d+)", log)
        if m:
            out[key] = max(float(v) for v in m)
    if "cases" not in out:
        m = re.findall(r"^#(\d+)\s", log, flags=re.M)
        if m:
            out["cases"] = float(m[-1])
    return out


def run_atheris(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    corpus, findings = work / "corpus", work / "findings"
    print(f"seed corpus: {write_seed_corpus(corpus)} inputs in {corpus}")
    per_job = -(-args.cases // args.jobs)
    t0 = time.perf_counter()
    procs = []
    for j in range(args.jobs):
        log = (work / f"worker-{j}.log").open("w")
        argv = [sys.executable, __file__, "--worker", "--runs", str(per_job),
                "--seed", str(args.seed + j), "--corpus", str(corpus), "--findings",
                str(findings), "--max-len", str(args.max_len),
                "--case-timeout", str(args.case_timeout)]
        procs.append((subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), log, j))
    stats: list[dict[str, float]] = []
    crashes: list[str] = []
    for proc, log, j in procs:
        rc = proc.wait()
        log.close()
        text = (work / f"worker-{j}.log").read_text(errors="replace")
        stats.append(stats_of(text))
        if rc != 0:
            # libFuzzer itself stopped the worker: a timeout, an out-of-memory, a crash
            # (a native abort), each with the input it saved.
            reason = re.findall(r"==\d+== ERROR: libFuzzer: (.*)", text) or \
                re.findall(r"(ALARM: .*|out-of-memory.*|deadly signal)", text) or [f"exit {rc}"]
            crashes.append(f"worker {j}: {reason[-1]} (see {work / f'worker-{j}.log'})")
    wall = time.perf_counter() - t0
    found = []
    if (findings / "findings.jsonl").exists():
        found = [json.loads(line) for line in (findings / "findings.jsonl").read_text()
                 .splitlines() if line.strip()]
    cases = sum(s.get("cases", 0) for s in stats)
    return {"engine": "atheris (libFuzzer)", "cases": int(cases), "wall_s": round(wall, 1),
            "cases_per_s": round(cases / wall, 1) if wall else 0.0,
            "coverage_edges": int(max((s.get("cov", 0) for s in stats), default=0)),
            "features": int(max((s.get("ft", 0) for s in stats), default=0)),
            "findings": sorted({f["key"]: f for f in found}.values(), key=lambda f: f["key"]),
            "worker_stops": crashes, "work_dir": str(work)}


def run_hypothesis(args: argparse.Namespace) -> dict[str, Any]:
    # The CI files run ~700 cases at scale 1 (parser and decoders together).
    scale = max(1, round(args.cases / 700))
    env = {**os.environ, "GPUSLO_FUZZ_SCALE": str(scale)}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *HYPOTHESIS_FILES], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    cases = 700 * scale
    return {"engine": f"hypothesis (GPUSLO_FUZZ_SCALE={scale}, not coverage-guided)",
            "cases": cases, "wall_s": round(wall, 1), "cases_per_s": round(cases / wall, 1),
            "coverage_edges": None, "findings": [] if done.returncode == 0
            else [{"key": "pytest failed", "error": done.stdout[-3000:]}]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=1_000_000, help="Cases in all (default 10^6).")
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="Worker processes.")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-len", type=int, default=8192, help="Longest case in bytes.")
    p.add_argument("--case-timeout", type=int, default=30,
                   help="Seconds one case may take before it is a finding (a hang).")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="Keep the corpus, logs and findings here (default: a temp dir).")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--runs", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--corpus", default="", help=argparse.SUPPRESS)
    p.add_argument("--findings", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    try:
        # Optional dependency: atheris builds only where libFuzzer does (CPython with
        # clang runtime); its absence falls back to hypothesis.
        import atheris  # noqa: F401
        have_atheris = True
    except ImportError as exc:
        print(f"atheris is not available ({exc}); falling back to a long hypothesis run")
        have_atheris = False
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gpuslo-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    result = run_atheris(args, work) if have_atheris else run_hypothesis(args)
    print(json.dumps(result, indent=2))
    print(f"\n{result['engine']}: {result['cases']:,} cases in {result['wall_s']} s "
          f"= {result['cases_per_s']:,} cases/s; coverage edges {result['coverage_edges']}; "
          f"findings {len(result['findings'])}"
          + (f"; workers stopped: {len(result.get('worker_stops', []))}"
             if result.get("worker_stops") else ""))
    if result["findings"] or result.get("worker_stops"):
        sys.exit(1)


if __name__ == "__main__":
    main()
