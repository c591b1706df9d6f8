"""A ranked root-cause candidate of an alert, and the texts made from it.

Apart from :mod:`anomaly.rca` so that what shows or exports causes (the
exporters, the views, the alert sender) imports a dataclass, not the ranking
and its model (scikit-learn takes a second to import).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from gpuslo.slo import conventions as cv

CauseKind = Literal["cause", "symptom"]


@dataclass(frozen=True)
class Cause:
    """One ranked root-cause candidate of an alert, with its evidence."""

    rank: int
    entity: str
    node: str
    entity_kind: str
    signal: str
    kind: CauseKind
    score: float
    onset: datetime
    baseline: float | None
    observed: float | None
    direction: str
    evidence: str

    def export_labels(self) -> dict[str, str]:
        """The cause's labels on ``gpuslo_slo_alert_cause`` (added to the alert's labels)."""
        return {
            cv.EXPORT_LABEL_CAUSE_RANK: str(self.rank),
            cv.EXPORT_LABEL_CAUSE_ENTITY: self.entity,
            cv.EXPORT_LABEL_CAUSE_NODE: self.node,
            cv.EXPORT_LABEL_CAUSE_SIGNAL: self.signal,
            cv.EXPORT_LABEL_CAUSE_KIND: self.kind,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``onset`` in ISO 8601)."""
        return {
            "rank": self.rank, "entity": self.entity, "node": self.node,
            "entity_kind": self.entity_kind, "signal": self.signal, "kind": self.kind,
            "score": round(self.score, 4), "onset": self.onset.isoformat(),
            "baseline": self.baseline, "observed": self.observed,
            "direction": self.direction, "evidence": self.evidence,
        }


def format_rca_annotation(causes: Sequence[Cause], top: int = 3) -> str:
    """The Alertmanager ``rca`` annotation: the top causes, one line each."""
    return "\n".join(f"{c.rank}. [{c.kind}] {c.evidence}" for c in causes[:top])


def top_cause_line(rca: str | None) -> str | None:
    """The first cause of an ``rca`` annotation, without its rank: what a one-line view
    shows beside an alert."""
    if not rca:
        return None
    first = rca.splitlines()[0]
    return first.split(". ", 1)[1] if first[:1].isdigit() and ". " in first else first


def cause_from_dict(d: Mapping[str, Any]) -> Cause:
    """Inverse of :meth:`Cause.to_dict` (a cause read back from JSON)."""
    return Cause(
        rank=int(d["rank"]), entity=str(d["entity"]), node=str(d["node"]),
        entity_kind=str(d.get("entity_kind", "")), signal=str(d["signal"]),
        kind="cause" if d["kind"] == "cause" else "symptom", score=float(d["score"]),
        onset=datetime.fromisoformat(str(d["onset"])),
        baseline=None if d.get("baseline") is None else float(d["baseline"]),
        observed=None if d.get("observed") is None else float(d["observed"]),
        direction=str(d.get("direction", "")), evidence=str(d["evidence"]),
    )


__all__ = ["Cause", "CauseKind", "cause_from_dict", "format_rca_annotation", "top_cause_line"]
