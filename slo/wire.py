"""The ``gpuslo.sli`` record: a partial-count frame as bytes, and back.

Stage 1 and stage 2 may run different builds during a rolling upgrade, so the
bytes carry their own version: ``MAGIC + version byte + Arrow IPC stream``, the
same framing as the sample frame (:mod:`pipeline.schema`) with its own magic,
so a sample frame produced to the wrong topic is named as such instead of
failing deep inside Arrow.  :class:`PartialsError` is a
:class:`~pipeline.schema.SchemaError`, so a consumer that dead-letters
undecodable sample records dead-letters undecodable partial records the same
way.
"""

from __future__ import annotations

import polars as pl

from gpuslo.pipeline.schema import MAGIC as SAMPLE_MAGIC
from gpuslo.pipeline.schema import SchemaError, read_framed, write_framed
from gpuslo.slo.sli import PARTIAL_SCHEMA

PARTIALS_VERSION = 1
PARTIALS_MAGIC = b"GSLP"


class PartialsError(SchemaError):
    """Bytes that are not a partial-count frame of a version this build reads."""


def encode_partials(frame: pl.DataFrame) -> bytes:
    """Serialise a :data:`~slo.sli.PARTIAL_SCHEMA` frame (columns reordered, types checked)."""
    missing = [c for c in PARTIAL_SCHEMA.names() if c not in frame.columns]
    if missing:
        raise PartialsError(f"not a partial-count frame: missing columns {missing}")
    try:
        frame = frame.select(PARTIAL_SCHEMA.names()).cast(
            dict(PARTIAL_SCHEMA)  # type: ignore[arg-type]
        )
    except Exception as exc:  # polars raises several error types for a bad cast
        raise PartialsError(f"not a partial-count frame: {exc}") from exc
    return write_framed(frame, PARTIALS_MAGIC, PARTIALS_VERSION)


def decode_partials(data: bytes | bytearray | memoryview) -> pl.DataFrame:
    """Parse bytes made by :func:`encode_partials`.

    Raises:
        PartialsError: empty, a sample frame, not gpuslo's, an unknown version,
            truncated or corrupt, or a frame with other columns or types.
    """
    frame = read_framed(
        data, PARTIALS_MAGIC, PARTIALS_VERSION, what="partial-count frame", error=PartialsError,
        foreign={SAMPLE_MAGIC: "a sample frame, not a partial-count frame (wrong topic?)"},
        expected=PARTIAL_SCHEMA,
    )
    problems = [
        f"column {n!r} is {frame.schema.get(n)}, expected {t}"
        for n, t in PARTIAL_SCHEMA.items()
        if frame.schema.get(n) != t
    ]
    extra = [c for c in frame.columns if c not in PARTIAL_SCHEMA]
    if extra:
        problems.append(f"unexpected columns {extra}")
    if problems:
        raise PartialsError("not a partial-count frame: " + "; ".join(problems))
    return frame.select(PARTIAL_SCHEMA.names())
