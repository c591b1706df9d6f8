"""Benchmark: ``collectors.exposition.parse_exposition`` vs ``prometheus_client``.

Why: the fast parser exists for speed (target >= 20x the reference's
``text_string_to_metric_families``), so the ratio is measured here, in one
process, on the same payloads: a large DCGM-shaped payload (8 nodes x 8 GPUs,
~50 families, dcgm-exporter's label set with Kubernetes attribution) and the
cAdvisor fixture.  Best of N runs each; prints samples/s and the ratio.

The fast parser keeps the shape of recent payloads (names, kinds, labels: all
but values and timestamps) between calls, as a scraper re-parses the same
targets; the headline ratio is that steady state, and the ratio of a first
scrape (shape cache cleared before every call) is printed next to it.

Run: ``python benchmarks/bench_parser.py`` (under a minute).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gpuslo.collectors.exposition import clear_shape_cache, parse_exposition
from gpuslo.collectors.prometheus import parse_text_reference
from gpuslo.simulator.synthetic import dcgm_payload

ROOT = Path(__file__).resolve().parent.parent
CADVISOR = ROOT / "tests" / "fixtures" / "cadvisor" / "prometheus_metrics"

def _value_variants(text: str, count: int) -> list[str]:
    """``count`` copies of ``text`` whose sample values differ, as successive scrapes do.

    The fast parser caches a target's structure (names, labels), never its
    values, so the steady state is timed on payloads whose values change.
    """
    out = []
    for k in range(1, count + 1):
        lines = []
        for line in text.splitlines():
            if not line or line.startswith("#"):
                lines.append(line)
                continue
            start = line.rfind("}") + 2 if "{" in line else line.find(" ") + 1
            value, _, rest = line[start:].partition(" ")
            try:
                bumped = float(value) + k
            except ValueError:
                bumped = None
            if bumped is not None and bumped == bumped and abs(bumped) != float("inf"):
                value = repr(bumped)
            lines.append(line[:start] + value + (" " + rest if rest else ""))
        out.append("\n".join(lines) + "\n")
    return out


def _best(fn: Callable[[], object], repeat: int,
          setup: Callable[[], object] | None = None) -> float:
    best = float("inf")
    for _ in range(repeat):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench(label: str, text: str, repeat: int) -> tuple[float, float]:
    """Time the reference and the fast parser on one payload; return the ratios.

    ``(steady state, first scrape)``: the fast parser with its shape cache
    warm (the same target scraped again, its values changed) and cleared before
    every call.
    """
    kw = {"node": "n", "source": "bench", "scrape_ts_ms": 1_700_000_000_000}
    fast = parse_exposition(text, openmetrics=False, **kw)
    if not fast.equals(parse_text_reference(text, **kw)):
        raise SystemExit(f"{label}: fast parser disagrees with the reference")
    n = fast.height

    def ref() -> None:
        for fam in text_string_to_metric_families(text):
            _ = fam.samples

    t_ref = _best(ref, max(2, repeat // 4))
    t_frame = _best(lambda: parse_text_reference(text, **kw), max(2, repeat // 4))
    variants = _value_variants(text, repeat)
    for v in variants[:3]:
        if not parse_exposition(v, openmetrics=False, **kw).equals(parse_text_reference(v, **kw)):
            raise SystemExit(f"{label}: fast parser disagrees with the reference on new values")
    turn = iter(range(10**9))
    t_fast = _best(
        lambda: parse_exposition(variants[next(turn) % len(variants)], openmetrics=False, **kw),
        repeat,
    )
    t_cold = _best(lambda: parse_exposition(text, openmetrics=False, **kw), repeat,
                   setup=clear_shape_cache)
    ratio = t_ref / t_fast
    print(f"{label}: {n} samples, {len(text) / 1e6:.2f} MB")
    print(f"  prometheus_client text_string_to_metric_families: {n / t_ref:>12,.0f} samples/s")
    print(f"  prometheus.parse_text_reference (ref + frame):   {n / t_frame:>12,.0f} samples/s")
    print(f"  collectors.exposition.parse_exposition:          {n / t_fast:>12,.0f} samples/s")
    print(f"    same, first scrape (shape cache cleared):     {n / t_cold:>12,.0f} samples/s")
    print(f"  ratio vs text_string_to_metric_families: {ratio:.1f}x "
          f"(vs parse_text_reference: {t_frame / t_fast:.1f}x; "
          f"first scrape: {t_ref / t_cold:.1f}x)")
    return ratio, t_ref / t_cold


def main() -> int:
    repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    ratios = [bench("DCGM-shaped, 8 nodes x 8 GPUs x 50 families", dcgm_payload(), repeat),
              bench("cAdvisor fixture", CADVISOR.read_text(), repeat)]
    print(f"min ratio: {min(r for r, _ in ratios):.1f}x (target >= 20x); "
          f"first scrape: {min(c for _, c in ratios):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
