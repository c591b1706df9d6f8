"""N-Sigma and RobustScorer as RCAEval and BARO ship them, on hand-built series."""

from __future__ import annotations

import numpy as np

from gpuslo.anomaly import baselines

TIMES = np.arange(40, dtype=np.int64) * 30_000
T_A = int(TIMES[30])


def matrix() -> np.ndarray:
    rng = np.random.default_rng(1)
    v = rng.normal(100.0, 1.0, size=(4, 40))
    v[1, 30:] += 10.0  # a step up
    v[2, 30:] -= 20.0  # a bigger step down
    v[3] = 5.0  # flat: IQR and std are 0
    v[3, 30:] = 6.0
    return v


def test_signed_scores_only_see_steps_up() -> None:
    for fn in (baselines.nsigma, baselines.robust_scorer):
        s = fn(matrix(), TIMES, T_A)
        # the flat series' step of 1 is scaled by 1 (a zero spread scales by 1, as shipped)
        assert np.argsort(-s).tolist()[:2] == [1, 3] or np.argmax(s) == 1
        assert s[2] < 0  # a drop is no anomaly to the signed scorers


def test_absolute_scores_rank_the_biggest_step_first() -> None:
    for fn in (baselines.nsigma, baselines.robust_scorer):
        s = fn(matrix(), TIMES, T_A, absolute=True)
        assert int(np.argmax(s)) == 2


def test_robust_scorer_uses_median_and_iqr_of_the_normal_window() -> None:
    v = np.zeros((1, 40))
    v[0, :30] = np.tile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 5)
    v[0, 30:] = 11.0
    q25, q50, q75 = np.percentile(v[0, :30], [25, 50, 75])
    s = baselines.robust_scorer(v, TIMES, T_A)
    assert np.isclose(s[0], (11.0 - q50) / (q75 - q25))


def test_entities_rank_by_their_best_series_each_once() -> None:
    scores = np.array([3.0, 9.0, 7.0, 8.0, -np.inf])
    ents = ["a", "b", "a", "c", "d"]
    assert baselines.entity_ranking(scores, ents) == ["b", "c", "a"]
