"""The detectors as pure array functions, against NumPy's own statistics and by hand."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gpuslo.anomaly import detectors as det

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 12), st.integers(1, 40)),
              elements=st.one_of(finite, st.just(np.nan))),
       st.integers(1, 10))
def test_robust_baseline_is_numpys_median_and_iqr(history: np.ndarray, min_points: int) -> None:
    med, sig, lo, hi, n = det.robust_baseline(history, min_points)
    for i, row in enumerate(history):
        vals = row[np.isfinite(row)]
        assert n[i] == vals.size
        if vals.size < min_points:
            assert np.isnan(med[i]) and np.isnan(sig[i])
            continue
        q25, q50, q75 = np.percentile(vals, [25, 50, 75])
        assert np.isclose(med[i], q50) and np.isclose(sig[i], (q75 - q25) / det.IQR_TO_SIGMA)
        assert lo[i] == vals.min() and hi[i] == np.abs(vals).max()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.one_of(finite, st.just(np.nan))),
                min_size=1, max_size=40))
def test_peers_are_the_other_members_of_the_group(pairs: list[tuple[int, float]]) -> None:
    group = np.array([g for g, _ in pairs], np.int64)
    value = np.array([v for _, v in pairs], np.float64)
    med, sig, cnt = det.peer_compare(value, group, min_peers=3)
    for i, (g, v) in enumerate(pairs):
        others = [value[j] for j in range(len(pairs))
                  if j != i and group[j] == g and np.isfinite(value[j])]
        if not np.isfinite(v) or len(others) < 3:
            assert cnt[i] == 0 and np.isnan(med[i])
            continue
        q25, q50, q75 = np.percentile(others, [25, 50, 75])
        assert cnt[i] == len(others)
        assert np.isclose(med[i], q50) and np.isclose(sig[i], (q75 - q25) / det.IQR_TO_SIGMA)


def test_a_flat_series_is_measured_against_its_floor_not_zero() -> None:
    # A clock that never moved (IQR 0) dropping 3 %: z = 1 with a 3 % relative floor,
    # not infinity.
    scale = det.floored_scale(np.array([0.0]), np.array([1980.0]), np.array([0.0]),
                              np.array([0.03]))
    z = det.robust_z(np.array([1980.0 * 0.97]), np.array([1980.0]), scale)
    assert np.isclose(z[0], -1.0)
    # and a huge jump is clipped: size beyond the cap says nothing more
    assert det.robust_z(np.array([1e9]), np.array([0.0]), np.array([1.0]))[0] == det.Z_CAP


def test_step_up_and_step_down_have_opposite_signs() -> None:
    history = np.tile(np.r_[10.0, 10.5, 9.5, 10.0, 10.2, 9.8], (2, 3))
    med, sig, _, _, _ = det.robust_baseline(history, 5)
    scale = det.floored_scale(sig, med, np.zeros(2), np.zeros(2))
    z = det.robust_z(np.array([20.0, 0.0]), med, scale)
    assert z[0] > 10 and z[1] < -10


def test_a_normally_zero_counter_that_moves_is_an_event() -> None:
    strength = det.emergence(np.array([0.0, 1.0, 500.0, 3.0]), np.array([0.0, 0.0, 0.0, 2.0]))
    assert np.isnan(strength[0])  # nothing happened
    assert 6.0 <= strength[1] < strength[2]  # one error is already strong; more, a bit more
    assert np.isnan(strength[3])  # the baseline moved too: a z-score's job, not an event


def test_xid_events_are_changes_to_a_nonzero_code() -> None:
    last = np.array([0.0, 79.0, 79.0, 48.0, np.nan])
    prev = np.array([0.0, 0.0, 79.0, 79.0, 0.0])
    assert det.xid_changes(last, prev).tolist() == [False, True, False, True, False]


def test_throttle_bits_new_since_usual_and_not_idle() -> None:
    # 0x20 thermal newly set; idle (0x1) never counts; a GPU always power-capped is usual.
    bits = det.new_throttle_bits(np.array([0x21, 0x1, 0x4, 0x24]), np.array([0x1, 0x0, 0x4,
                                                                              0x4]))
    assert bits.tolist() == [0x20, 0, 0, 0x20]


def test_saturated_counters_are_pegged_at_their_width() -> None:
    raw = np.array([65535.0, 65534.0, 255.0, 2.0**32 - 1])
    width = np.array([16, 16, 8, 0])
    assert det.saturated(raw, width).tolist() == [True, False, True, False]


def test_stalled_counters_always_moved_before() -> None:
    out = det.stalled(np.array([0.0, 0.0, 0.0, 5.0]), np.array([10.0, 10.0, 0.0, 10.0]),
                      np.array([8.0, 0.0, 0.0, 8.0]))
    assert out.tolist() == [True, False, False, False]


def test_vanished_needs_most_of_an_established_entity_gone() -> None:
    present = np.array([0, 1, 4, 0])
    established = np.array([5, 5, 5, 1])
    assert det.vanished(present, established).tolist() == [True, True, False, False]
