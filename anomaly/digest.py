"""The digest: a node's top deviations and events of one minute, the unit RCA ranks.

Scoring runs next to the samples (partitioned by node); ranking runs where an
alert fires.  What crosses between them is this small frame, with a fixed
schema so it encodes as Arrow (one Kafka record per scorer and minute, keyed
by node) and merges by concatenation: digests of any number of scorers, in any
order, are one ranking input.  Re-delivered digests are harmless: the ranker
keeps one row per (minute, node, entity, signal, metric, series, detector).

Rows, one per deviating series, event or model score:

| column | meaning |
|---|---|
| ``minute`` | the closed minute the row describes (its start, UTC) |
| ``node`` | node of the entity ("" for fleet-wide things: storage, models, jobs) |
| ``kind`` | entity kind: gpu, port, disk, osd, storage, pod, replica, job, node, target, other |
| ``entity`` | the source's own identifier: GPU UUID, ``mlx5_0/1``, ``nvme0n1``, ``namespace/pod`` |
| ``signal`` | signal name (:mod:`anomaly.signals`), or the metric's base name when unknown |
| ``metric`` | the upstream metric the value comes from |
| ``series`` | the labels that tell this series from its siblings (``finished_reason=error``) |
| ``role`` | cause, symptom or context |
| ``detector`` | baseline, peer, event, vanished, model |
| ``direction`` | up or down (events: the direction that is bad) |
| ``z`` | robust z-score (events and model: an equivalent strength) |
| ``value`` | the minute's value (rate per second for counters) |
| ``baseline`` | baseline median (peer median for ``peer`` rows) |
| ``scale`` | the robust scale the z-score divides by |
| ``onset`` | first minute of the deviation run this row belongs to |
| ``peers`` | peers compared with (0 when none) |
| ``peer_value`` | median of the peers this minute (null when none) |
| ``detail`` | event detail: XID code, clock-event bits, counts, vanished series |
"""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl

from gpuslo.anomaly.topology import ENTITY_SCHEMA
from gpuslo.pipeline.schema import SchemaError, read_framed, write_framed

DIGEST_VERSION = 1
DIGEST_MAGIC = b"GSLD"
ENTITIES_MAGIC = b"GSLE"
_TS = pl.Datetime("ms", "UTC")

DIGEST_SCHEMA: pl.Schema = pl.Schema(
    {
        "minute": _TS,
        "node": pl.String(),
        "kind": pl.String(),
        "entity": pl.String(),
        "signal": pl.String(),
        "metric": pl.String(),
        "series": pl.String(),
        "role": pl.String(),
        "detector": pl.String(),
        "direction": pl.String(),
        "z": pl.Float64(),
        "value": pl.Float64(),
        "baseline": pl.Float64(),
        "scale": pl.Float64(),
        "onset": _TS,
        "peers": pl.Int32(),
        "peer_value": pl.Float64(),
        "detail": pl.String(),
    }
)
DIGEST_KEY: tuple[str, ...] = ("minute", "node", "kind", "entity", "signal", "metric", "series",
                               "detector")
DETECTORS: tuple[str, ...] = ("baseline", "peer", "event", "vanished", "model")


class DigestError(SchemaError):
    """Bytes or a frame that are not a digest of a known version."""


def empty_digest() -> pl.DataFrame:
    """A zero-row digest."""
    return pl.DataFrame(schema=DIGEST_SCHEMA)


def validate_digest(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` checked against :data:`DIGEST_SCHEMA` and put in its column order."""
    problems = [f"missing column {n!r}" for n in DIGEST_SCHEMA.names() if n not in frame.columns]
    problems += [f"column {n!r} is {frame.schema[n]}, expected {t}"
                 for n, t in DIGEST_SCHEMA.items()
                 if n in frame.columns and frame.schema[n] != t]
    if problems:
        raise DigestError("not a digest: " + "; ".join(problems))
    return frame.select(DIGEST_SCHEMA.names())


def merge_digests(frames: Iterable[pl.DataFrame]) -> pl.DataFrame:
    """Digests of any number of scorers as one frame, duplicates (re-deliveries) removed."""
    parts = [validate_digest(f) for f in frames if f.height]
    if not parts:
        return empty_digest()
    return pl.concat(parts).unique(subset=list(DIGEST_KEY), keep="last", maintain_order=True)


def encode_digest(frame: pl.DataFrame) -> bytes:
    """``GSLD`` + version + Arrow IPC stream: one Kafka record's value."""
    return write_framed(validate_digest(frame), DIGEST_MAGIC, DIGEST_VERSION)


def decode_digest(data: bytes) -> pl.DataFrame:
    """The digest inside bytes made by :func:`encode_digest`; raises :class:`DigestError`."""
    return validate_digest(read_framed(data, DIGEST_MAGIC, DIGEST_VERSION, what="digest",
                                       error=DigestError,
                                       foreign={b"GSLO": "a sample frame, not a digest",
                                                ENTITIES_MAGIC: "an entity table, not a digest"}))


def encode_entities(frame: pl.DataFrame) -> bytes:
    """A scorer's entity table (:data:`anomaly.topology.ENTITY_SCHEMA`) as ``GSLE`` bytes:
    what the ranking side merges into its topology."""
    return write_framed(_entities(frame), ENTITIES_MAGIC, DIGEST_VERSION)


def decode_entities(data: bytes) -> pl.DataFrame:
    """The entity table inside bytes made by :func:`encode_entities`."""
    return _entities(read_framed(data, ENTITIES_MAGIC, DIGEST_VERSION, what="entity table",
                                 error=DigestError,
                                 foreign={DIGEST_MAGIC: "a digest, not an entity table",
                                          b"GSLO": "a sample frame, not an entity table"}))


def decode_digest_record(data: bytes) -> pl.DataFrame:
    """A record of the digests topic: a digest (``GSLD``) or an entity table (``GSLE``),
    told apart afterwards by :func:`is_digest`."""
    if data[: len(ENTITIES_MAGIC)] == ENTITIES_MAGIC:
        return decode_entities(data)
    return decode_digest(data)


def is_digest(frame: pl.DataFrame) -> bool:
    """Whether a frame from :func:`decode_digest_record` is a digest (else an entity table)."""
    return "minute" in frame.columns


def _entities(frame: pl.DataFrame) -> pl.DataFrame:
    missing = [n for n in ENTITY_SCHEMA.names() if n not in frame.columns]
    if missing:
        raise DigestError(f"not an entity table: missing columns {missing}")
    return frame.select(ENTITY_SCHEMA.names()).cast(dict(ENTITY_SCHEMA))  # type: ignore[arg-type]
