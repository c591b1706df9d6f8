"""A multivariate detector: an isolation forest per entity kind over the entity's z-scores.

Per-series baselines see one signal at a time; a GPU whose temperature,
clock and power each moved a little, together, is unusual as a whole.  Each
minute every entity of a kind (GPUs, ports, pods...) becomes one feature
vector: its signals' robust z-scores (clipped), one slot per signal name.
A forest per kind is fitted on the last ``window_minutes`` of those vectors
(every entity, every minute: the fleet is its own training set), refitted
every ``refit_minutes``, and each minute's vectors are scored in one batched
``score_samples`` call.  Scores are reported on the same footing as a z-score:
``(score - median) / IQR-sigma`` of the training scores.

Why an isolation forest: on the evaluation harness's entity-minutes it
separates faulted entities from the rest as well as the alternatives tried
(local outlier factor, robust covariance, the max |z| itself), fits in tens
of milliseconds on thousands of rows and needs no distance metric across
signals of different meaning (``benchmarks/rca_eval.py --detector-study``
prints the figures).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt
import polars as pl

if TYPE_CHECKING:
    from sklearn.ensemble import IsolationForest

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]



def isolation_forest(**params: Any) -> IsolationForest:
    """A new ``sklearn.ensemble.IsolationForest``; scikit-learn is loaded by the first.

    Why not imported at the top like everything else: scikit-learn (with SciPy) is about
    a hundred MiB of resident memory, and every gpuslo process imports this module through
    the CLI, the DaemonSet's collector included, which never fits a forest.
    """
    ensemble = import_module("sklearn.ensemble")
    return cast("IsolationForest", ensemble.IsolationForest(**params))

@dataclass(frozen=True)
class ModelSettings:
    """Window, refit cadence and forest size of :class:`EntityModel`."""

    window_minutes: int = 60
    refit_minutes: int = 15
    n_estimators: int = 32
    max_samples: int = 256
    min_rows: int = 40
    threshold: float = 5.0
    clip: float = 10.0


@dataclass
class _KindModel:
    slots: dict[str, int] = field(default_factory=dict)
    rows: deque[tuple[int, I64, F64]] = field(default_factory=deque)
    forest: IsolationForest | None = None
    fitted_at: int = -(10**9)
    fitted_width: int = 0
    centre: float = 0.0
    scale: float = 1.0


class EntityModel:
    """Isolation forests per entity kind, refitted on a rolling window (see module doc)."""

    def __init__(self, settings: ModelSettings | None = None, *, seed: int = 0) -> None:
        self.settings = settings or ModelSettings()
        self.seed = seed
        self._kinds: dict[str, _KindModel] = {}

    def reset(self) -> None:
        """Forget every window and forest."""
        self._kinds = {}

    def _matrix(self, km: _KindModel, eids: I64, names: Sequence[str],
                values: F64) -> tuple[I64, F64]:
        for n in names:
            if n not in km.slots:
                km.slots[n] = len(km.slots)
        uniq, row = np.unique(eids, return_inverse=True)
        x = np.zeros((uniq.size, len(km.slots)))
        col = np.fromiter((km.slots[n] for n in names), np.int64, len(names))
        v = np.clip(np.nan_to_num(values), -self.settings.clip, self.settings.clip)
        # keep the value of largest magnitude when an entity has several series of a signal
        order = np.argsort(np.abs(v))
        x[row[order], col[order]] = v[order]
        return uniq, x

    def update(self, kind: str, minute: int, eids: I64, names: Sequence[str],
               values: F64) -> tuple[I64, F64] | None:
        """Add one minute of an entity kind's z-scores; their model strengths (or None).

        ``eids``, ``names`` and ``values`` are parallel (one entry per scored series).
        """
        st = self.settings
        km = self._kinds.setdefault(kind, _KindModel())
        ids, x = self._matrix(km, eids, names, values)
        km.rows.append((minute, ids, x))
        if (km.forest is None or minute - km.fitted_at >= st.refit_minutes
                or km.fitted_width != len(km.slots)):
            self._fit(km, minute)
        if km.forest is None:
            return None
        xs = self._pad(x, len(km.slots))
        score = -km.forest.score_samples(xs)
        return ids, (score - km.centre) / km.scale

    @staticmethod
    def _pad(x: F64, width: int) -> F64:
        if x.shape[1] == width:
            return x
        out = np.zeros((x.shape[0], width))
        out[:, : x.shape[1]] = x
        return out

    def _fit(self, km: _KindModel, minute: int) -> None:
        # the window ends at this minute; rows older than it are no longer needed
        while km.rows and km.rows[0][0] <= minute - self.settings.window_minutes:
            km.rows.popleft()
        width = len(km.slots)
        train = [self._pad(x, width) for _, _, x in km.rows]
        if not train or width == 0:
            return
        xt = np.vstack(train)
        if xt.shape[0] < self.settings.min_rows:
            return
        forest = isolation_forest(n_estimators=self.settings.n_estimators,
                                  max_samples=min(self.settings.max_samples, xt.shape[0]),
                                  random_state=self.seed)
        forest.fit(xt)
        s = -forest.score_samples(xt)
        q25, q50, q75 = np.percentile(s, [25.0, 50.0, 75.0])
        km.forest = forest
        km.fitted_at = minute
        km.fitted_width = width
        km.centre = float(q50)
        km.scale = max(float(q75 - q25) / 1.349, 1e-3)

    # -- checkpoints ----------------------------------------------------------------------

    def snapshot(self, entity_keys: Sequence[str]) -> dict[str, pl.DataFrame]:
        """The training windows, slot layouts and fit times, as frames.

        ``model_rows``: one row per (kind, minute, entity) with its feature vector;
        ``model_slots``: each kind's signal per feature slot; ``model_fits``: when each
        kind's forest was fitted (a restore refits on exactly that window, so a
        restored scorer scores as the original would have).
        """
        kinds, minutes, ents, vectors = [], [], [], []
        slot_kind, slot_index, slot_signal = [], [], []
        fit_kind, fit_minute = [], []
        for kind, km in self._kinds.items():
            for name, idx in km.slots.items():
                slot_kind.append(kind)
                slot_index.append(idx)
                slot_signal.append(name)
            if km.forest is not None:
                fit_kind.append(kind)
                fit_minute.append(km.fitted_at)
            for minute, ids, x in km.rows:
                for r, eid in enumerate(ids):
                    kinds.append(kind)
                    minutes.append(minute)
                    ents.append(entity_keys[int(eid)])
                    vectors.append(x[r].tolist())
        return {
            "model_rows": pl.DataFrame(
                {"kind": kinds, "minute": minutes, "entity": ents, "values": vectors},
                schema={"kind": pl.String(), "minute": pl.Int64(), "entity": pl.String(),
                        "values": pl.List(pl.Float64)}),
            "model_slots": pl.DataFrame(
                {"kind": slot_kind, "slot": slot_index, "signal": slot_signal},
                schema={"kind": pl.String(), "slot": pl.Int64(), "signal": pl.String()}),
            "model_fits": pl.DataFrame({"kind": fit_kind, "minute": fit_minute},
                                       schema={"kind": pl.String(), "minute": pl.Int64()}),
        }

    def restore(self, frames: Mapping[str, pl.DataFrame], entity_keys: Sequence[str]) -> None:
        """Rebuild from :meth:`snapshot`; each forest is refitted on the window it had."""
        self._kinds = {}
        index = {k: i for i, k in enumerate(entity_keys)}
        for kind, slot, signal in frames["model_slots"].sort("kind", "slot").iter_rows():
            self._kinds.setdefault(kind, _KindModel()).slots[signal] = slot
        rows = frames["model_rows"]
        for (kind, minute), part in rows.group_by(["kind", "minute"], maintain_order=True):
            km = self._kinds.setdefault(str(kind), _KindModel())
            ids = np.array([index.get(e, -1) for e in part["entity"]], np.int64)
            x = np.array(part["values"].to_list(), np.float64).reshape(part.height, -1)
            keep = ids >= 0
            km.rows.append((cast(int, minute), ids[keep], x[keep]))
        for kind, fitted in frames["model_fits"].iter_rows():
            found = self._kinds.get(kind)
            if found is None:
                continue
            later = [r for r in found.rows if r[0] > fitted]
            found.rows = deque(r for r in found.rows if r[0] <= fitted)
            self._fit(found, int(fitted))
            found.rows.extend(later)
