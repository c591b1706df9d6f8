"""Cumulative histograms fed with whole batches of requests at once.

Sampling every simulated request would make a 64-node day slow; instead each
tick adds ``n`` observations spread over the buckets by a log-normal CDF.  The
result is integer, monotonic and deterministic, which is what the exposition
format (and a reset-aware rate) needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# vLLM v1 buckets (vllm/v1/metrics/loggers.py).
TTFT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)
ITL_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)
REQUEST_LATENCY_BUCKETS: tuple[float, ...] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)
# SGLang's default TTFT / latency buckets (srt/observability/metrics_collector.py).
SGLANG_TTFT_BUCKETS: tuple[float, ...] = (
    0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0,
    80.0, 100.0, 200.0, 400.0,
)
SGLANG_LATENCY_BUCKETS: tuple[float, ...] = (
    0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0,
    80.0, 100.0, 200.0, 400.0, 800.0,
)
# Triton's first-response histogram, in milliseconds.
TRITON_FIRST_RESPONSE_MS_BUCKETS: tuple[float, ...] = (
    100.0, 500.0, 2000.0, 5000.0,
)


@dataclass
class Histogram:
    """Cumulative bucket counts (one per bound, ``+Inf`` implied by ``count``)."""

    bounds: tuple[float, ...]
    cumulative: list[int] = field(default_factory=list)
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.cumulative:
            self.cumulative = [0] * len(self.bounds)

    def observe_batch(self, n: int, median: float, sigma: float = 0.45) -> None:
        """Add ``n`` observations from a log-normal with this median and shape."""
        if n <= 0:
            return
        median = max(median, 1e-6)
        log_median = math.log(median)
        denom = sigma * math.sqrt(2.0)
        previous = 0
        for i, bound in enumerate(self.bounds):
            share = 0.5 * (1.0 + math.erf((math.log(bound) - log_median) / denom))
            added = max(previous, min(n, round(n * share)))
            self.cumulative[i] += added
            previous = added
        self.count += n
        self.sum += n * median * math.exp(sigma * sigma / 2.0)

    def reset(self) -> None:
        """Start again from zero: the owning process restarted."""
        self.cumulative = [0] * len(self.bounds)
        self.sum = 0.0
        self.count = 0
