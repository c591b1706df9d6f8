"""The evaluation baselines, as RCAEval and BARO ship them: N-Sigma and RobustScorer.

Both rank *series* by how far their values after the anomaly time lie from
those before it; an entity's rank is the rank of its first series in that
list (RCAEval's coarse-grained ranking).  They are here, not in the
benchmark, so they are tested like the rest and run on exactly the inputs the
RCA ranking gets.

* N-Sigma: ``max over the anomalous window of (x - mean) / std`` with mean and
  standard deviation of the normal window (scikit-learn's ``StandardScaler``
  semantics: a zero deviation scales by 1).
* RobustScorer (BARO, FSE'24): the same with median and IQR (25-75 %) of the
  normal window, a zero IQR scaling by 1.

The shipped code of both keeps the sign (only upward deviations rank high);
``absolute=True`` scores ``|z|`` as BARO's paper writes it, which suits GPU
faults whose indicators go down (clocks, throughput, hit ratios).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from gpuslo.anomaly.detectors import IQR_TO_SIGMA, robust_baseline

F64 = npt.NDArray[np.float64]


def _split(values: F64, times: npt.NDArray[np.int64], t_anomaly: int,
           normal_s: int, anomalous_s: int) -> tuple[F64, F64]:
    normal = (times >= t_anomaly - normal_s * 1000) & (times < t_anomaly)
    anomalous = (times >= t_anomaly) & (times <= t_anomaly + anomalous_s * 1000)
    return values[:, normal], values[:, anomalous]


def _scores(z: F64, absolute: bool) -> F64:
    z = np.abs(z) if absolute else z
    with np.errstate(invalid="ignore"):
        out = np.nanmax(np.where(np.isfinite(z), z, -np.inf), axis=1)
    return np.where(np.isfinite(out), out, -np.inf)


def nsigma(values: F64, times: npt.NDArray[np.int64], t_anomaly: int, *,
           normal_s: int = 1800, anomalous_s: int = 300, absolute: bool = False) -> F64:
    """N-Sigma score of each series (row of ``values``, columns at ``times`` in ms)."""
    normal, anomalous = _split(values, times, t_anomaly, normal_s, anomalous_s)
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(np.where(np.isfinite(normal), normal, np.nan), axis=1)
        std = np.nanstd(np.where(np.isfinite(normal), normal, np.nan), axis=1)
    std = np.where((std > 0) & np.isfinite(std), std, 1.0)
    return _scores((anomalous - mean[:, None]) / std[:, None], absolute)


def robust_scorer(values: F64, times: npt.NDArray[np.int64], t_anomaly: int, *,
                  normal_s: int = 1800, anomalous_s: int = 300, absolute: bool = False) -> F64:
    """BARO's RobustScorer score of each series (median/IQR of the normal window)."""
    normal, anomalous = _split(values, times, t_anomaly, normal_s, anomalous_s)
    finite = np.where(np.isfinite(normal), normal, np.nan)
    # median and IQR per row (NumPy's "linear" quantiles, vectorised over rows)
    med, sigma, _, _, _ = robust_baseline(finite, 1)
    iqr = sigma * IQR_TO_SIGMA
    iqr = np.where((iqr > 0) & np.isfinite(iqr), iqr, 1.0)
    return _scores((anomalous - med[:, None]) / iqr[:, None], absolute)


def entity_ranking(scores: F64, entities: Sequence[str]) -> list[str]:
    """Entities in order of their best series' score (ties: input order), each once."""
    order = np.argsort(-scores, kind="stable")
    seen: dict[str, None] = {}
    for i in order:
        if not np.isfinite(scores[i]) or scores[i] == -np.inf:
            break
        seen.setdefault(entities[i], None)
    return list(seen)
