"""NVIDIA dcgm-exporter: label aliases, GPU entities, units, XID events.

dcgm-exporter (``:9400/metrics``) exposes DCGM field names as metric names
(``DCGM_FI_DEV_GPU_UTIL``) in the units DCGM uses, which are not base units:

* framebuffer ``DCGM_FI_DEV_FB_{FREE,USED,RESERVED}``: **MiB**;
* ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION``: **mJ** since boot (counter);
* ``DCGM_FI_DEV_*_VIOLATION`` throttling durations: **ns** (counter);
* ``DCGM_FI_DEV_GPU_UTIL`` and the other ``_UTIL`` fields: percent 0-100,
  whereas ``DCGM_FI_PROF_*_ACTIVE`` are already ratios 0-1;
* ``DCGM_FI_PROF_PCIE_{TX,RX}_BYTES``: a **rate** in bytes/s (gauge), not a
  byte counter, despite the name.

Labels changed across releases, so every reader accepts all spellings
(:data:`LABEL_ALIASES`): ``Hostname``/``hostname``, ``UUID``/``uuid``/
``gpu_uuid`` (NVLink entities), ``modelName``/``model_name``, and the
Kubernetes ``pod``/``namespace``/``container`` or the older
``pod_name``/``pod_namespace``/``container_name``.

``DCGM_FI_DEV_XID_ERRORS`` is a gauge holding the *last* XID code, not a
count; :class:`XidTracker` turns changes of it into point events.  A repeat of
the same XID code between two scrapes cannot be seen in that gauge; the
windowed ``DCGM_EXP_XID_ERRORS_COUNT`` (when enabled in the CSV) can, but it is
a sliding-window count that goes down, so it is kept raw and not normalised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl

from gpuslo.collectors.base import ScrapeTarget
from gpuslo.collectors.exposition import ShapeCache
from gpuslo.collectors.mappings.normalise import (
    Derivation,
    ParseFn,
    Signal,
    default_parse,
    first_label,
    layout_derivation,
    normalised_derivation,
    normalised_rows,
    ref,
    row_wise,
    signal,
    with_entity,
)
from gpuslo.collectors.mappings.prometheus import PrometheusMapping
from gpuslo.pipeline.config import DcgmCollectorConfig
from gpuslo.pipeline.schema import COLUMNS, KIND_DTYPE, Kind, empty_frame, label

SOURCE = "dcgm"

# canonical name -> accepted upstream spellings, newest first.
LABEL_ALIASES: dict[str, tuple[str, ...]] = {
    "hostname": ("hostname", "Hostname"),
    "gpu_uuid": ("UUID", "uuid", "gpu_uuid"),
    "model_name": ("modelName", "model_name"),
    "pod": ("pod", "pod_name"),
    "namespace": ("namespace", "pod_namespace"),
    "container": ("container", "container_name"),
    "gpu_instance_id": ("GPU_I_ID",),
    "gpu_instance_profile": ("GPU_I_PROFILE",),
}

# Old dcgm-exporter versions printed DCGM "blank" sentinels (e.g.
# 9223372036854775794 for an unsupported MEMORY_TEMP) instead of omitting the
# series.  Anything this large is not a measurement.
BLANK_THRESHOLD = 9.0e18

MIB = 1024.0 * 1024.0
XID_METRIC = "DCGM_FI_DEV_XID_ERRORS"
XID_EVENT_METRIC = "gpuslo_gpu_xid_event"

SIGNALS: tuple[Signal, ...] = (
    signal("gpuslo_gpu_utilization_ratio", "ratio", Kind.GAUGE,
           ref("DCGM_FI_DEV_GPU_UTIL", scale=0.01),
           help="Fraction of the sample period a kernel ran (DCGM percent / 100)."),
    signal("gpuslo_gpu_memory_copy_utilization_ratio", "ratio", Kind.GAUGE,
           ref("DCGM_FI_DEV_MEM_COPY_UTIL", scale=0.01)),
    signal("gpuslo_gpu_graphics_engine_active_ratio", "ratio", Kind.GAUGE,
           "DCGM_FI_PROF_GR_ENGINE_ACTIVE"),
    signal("gpuslo_gpu_sm_active_ratio", "ratio", Kind.GAUGE, "DCGM_FI_PROF_SM_ACTIVE"),
    signal("gpuslo_gpu_tensor_active_ratio", "ratio", Kind.GAUGE,
           "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"),
    signal("gpuslo_gpu_dram_active_ratio", "ratio", Kind.GAUGE, "DCGM_FI_PROF_DRAM_ACTIVE"),
    signal("gpuslo_gpu_memory_used_bytes", "bytes", Kind.GAUGE,
           ref("DCGM_FI_DEV_FB_USED", scale=MIB), help="Framebuffer used (DCGM MiB x 2^20)."),
    signal("gpuslo_gpu_memory_free_bytes", "bytes", Kind.GAUGE,
           ref("DCGM_FI_DEV_FB_FREE", scale=MIB)),
    signal("gpuslo_gpu_memory_reserved_bytes", "bytes", Kind.GAUGE,
           ref("DCGM_FI_DEV_FB_RESERVED", scale=MIB)),
    signal("gpuslo_gpu_temperature_celsius", "celsius", Kind.GAUGE, "DCGM_FI_DEV_GPU_TEMP"),
    signal("gpuslo_gpu_memory_temperature_celsius", "celsius", Kind.GAUGE,
           "DCGM_FI_DEV_MEMORY_TEMP"),
    signal("gpuslo_gpu_power_watts", "watts", Kind.GAUGE, "DCGM_FI_DEV_POWER_USAGE"),
    signal("gpuslo_gpu_energy_joules_total", "joules", Kind.COUNTER,
           ref("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", scale=1e-3),
           help="Energy since driver load (DCGM mJ / 1000)."),
    signal("gpuslo_gpu_sm_clock_hertz", "hertz", Kind.GAUGE,
           ref("DCGM_FI_DEV_SM_CLOCK", scale=1e6)),
    signal("gpuslo_gpu_memory_clock_hertz", "hertz", Kind.GAUGE,
           ref("DCGM_FI_DEV_MEM_CLOCK", scale=1e6)),
    signal("gpuslo_gpu_pcie_replays_total", "retries", Kind.COUNTER,
           "DCGM_FI_DEV_PCIE_REPLAY_COUNTER"),
    signal("gpuslo_gpu_pcie_tx_bytes_per_second", "bytes/second", Kind.GAUGE,
           "DCGM_FI_PROF_PCIE_TX_BYTES", help="Already a rate upstream (gauge)."),
    signal("gpuslo_gpu_pcie_rx_bytes_per_second", "bytes/second", Kind.GAUGE,
           "DCGM_FI_PROF_PCIE_RX_BYTES"),
    signal("gpuslo_gpu_remapped_rows_uncorrectable_total", "rows", Kind.COUNTER,
           "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS"),
    signal("gpuslo_gpu_remapped_rows_correctable_total", "rows", Kind.COUNTER,
           "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS"),
    signal("gpuslo_gpu_row_remap_failure", "bool", Kind.GAUGE, "DCGM_FI_DEV_ROW_REMAP_FAILURE"),
    signal("gpuslo_gpu_ecc_sbe_volatile_total", "errors", Kind.COUNTER,
           "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL"),
    signal("gpuslo_gpu_ecc_dbe_volatile_total", "errors", Kind.COUNTER,
           "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"),
    signal("gpuslo_gpu_power_violation_seconds_total", "seconds", Kind.COUNTER,
           ref("DCGM_FI_DEV_POWER_VIOLATION", scale=1e-9), help="Throttled time (DCGM ns)."),
    signal("gpuslo_gpu_thermal_violation_seconds_total", "seconds", Kind.COUNTER,
           ref("DCGM_FI_DEV_THERMAL_VIOLATION", scale=1e-9)),
    signal("gpuslo_gpu_sync_boost_violation_seconds_total", "seconds", Kind.COUNTER,
           ref("DCGM_FI_DEV_SYNC_BOOST_VIOLATION", scale=1e-9)),
    signal("gpuslo_gpu_board_limit_violation_seconds_total", "seconds", Kind.COUNTER,
           ref("DCGM_FI_DEV_BOARD_LIMIT_VIOLATION", scale=1e-9)),
    signal("gpuslo_gpu_low_util_violation_seconds_total", "seconds", Kind.COUNTER,
           ref("DCGM_FI_DEV_LOW_UTIL_VIOLATION", scale=1e-9)),
    signal("gpuslo_gpu_reliability_violation_seconds_total", "seconds", Kind.COUNTER,
           ref("DCGM_FI_DEV_RELIABILITY_VIOLATION", scale=1e-9)),
    signal("gpuslo_gpu_nvlink_crc_flit_errors_total", "errors", Kind.COUNTER,
           "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL"),
    signal("gpuslo_gpu_nvlink_replay_errors_total", "errors", Kind.COUNTER,
           "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL"),
    signal("gpuslo_gpu_nvlink_recovery_errors_total", "errors", Kind.COUNTER,
           "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL"),
)


def alias(canonical: str) -> pl.Expr:
    """Expression for a canonical DCGM label, whichever spelling the exporter used."""
    return first_label(*LABEL_ALIASES[canonical])


def entity_expr() -> pl.Expr:
    """GPU UUID, or ``UUID/GPU_I_ID`` for a MIG instance; "" when no UUID label exists.

    MIG instances of one GPU share its UUID label in dcgm-exporter, so the GPU
    instance id is what keeps them apart.  (dcgm-exporter renders no compute
    instance label; if one appears later it stays in ``labels``.)
    """
    uuid = alias("gpu_uuid")
    gi = alias("gpu_instance_id")
    return pl.when(gi.is_not_null()).then(pl.concat_str([uuid, pl.lit("/"), gi])).otherwise(uuid)


def derive_entities(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with ``entity`` set to the GPU (or MIG instance) of each row."""
    return with_entity(frame, entity_expr())


def drop_blanks(frame: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Rows whose value is a DCGM blank sentinel removed, and how many there were."""
    keep = frame.filter(~(pl.col("value") >= BLANK_THRESHOLD).fill_null(False))
    return keep, frame.height - keep.height


@dataclass(frozen=True)
class DcgmResult:
    """One scrape after mapping: upstream rows + normalised rows, and what was skipped."""

    frame: pl.DataFrame
    blank_samples: int


def map_frame(frame: pl.DataFrame) -> DcgmResult:
    """Entities, then normalised signals, for a parsed dcgm-exporter frame.

    Blank sentinels are kept in the upstream rows (they are what the exporter
    said) but are not normalised, and are counted.
    """
    with_entities = derive_entities(frame)
    clean, blanks = drop_blanks(with_entities)
    out = pl.concat([with_entities.select(COLUMNS), normalised_rows(clean, SIGNALS)])
    return DcgmResult(out, blanks)


@dataclass(frozen=True)
class DcgmLayout:
    """:func:`map_frame` of one layout, less its numbers (see :class:`Derivation`).

    Blank sentinels are values, so they are found per scrape; a blank upstream
    row drops its normalised rows (``normal_src`` names each one's upstream row),
    which is what normalising the clean rows alone gives because every DCGM
    signal is row-wise (:func:`row_wise`).
    """

    mapped: Derivation
    normal_src: pl.Series
    xid_at: pl.Series  # the XID gauge's rows (upstream rows, which blanks never drop)
    xid_keys: tuple[tuple[str, str], ...] = ()  # their (node, entity), as the tracker keys them

    def map(self, frame: pl.DataFrame) -> DcgmResult:
        out = self.mapped.apply(frame)
        # Null where the value is null, which sum() skips: no fill_null (a query) per scrape.
        blank = frame.get_column("value") >= BLANK_THRESHOLD
        blanks = int(blank.sum() or 0)
        if blanks:
            keep = pl.concat([pl.repeat(True, self.mapped.upstream_rows, eager=True),
                              ~blank.fill_null(False)[self.normal_src]])
            out = out.filter(keep)
        return DcgmResult(out, blanks)


def dcgm_layout(frame: pl.DataFrame) -> DcgmLayout:
    """:func:`map_frame`'s output for ``frame``'s layout, blanks aside."""
    with_entities = derive_entities(frame)
    mapped = Derivation.upstream(with_entities).then(
        normalised_derivation(with_entities, SIGNALS))
    upstream = mapped.series.slice(0, mapped.upstream_rows)
    xid_at = (upstream.get_column("metric") == XID_METRIC).arg_true()
    xid_keys = tuple(upstream[xid_at].select("node", "entity").iter_rows())
    return DcgmLayout(mapped, mapped.rows.slice(mapped.upstream_rows), xid_at, xid_keys)


# Whether map_frame may be derived per layout (every signal row-wise; checked, not assumed).
_ROW_WISE = row_wise(SIGNALS)


def parse(
    text: str,
    *,
    node: str,
    scrape_ts_ms: int,
    source: str = SOURCE,
    parser: ParseFn = default_parse,
) -> DcgmResult:
    """Parse a dcgm-exporter payload and map it (the whole pure path of one scrape)."""
    return map_frame(parser(text, node=node, source=source, scrape_ts_ms=scrape_ts_ms))


@dataclass
class XidTracker:
    """Turns the last-XID gauge into XID events, one per change per GPU.

    State is the last code seen per ``(node, entity)``.  The first observation
    of a GPU only sets the baseline (by default), because the gauge may hold an
    XID from long before this process started and re-emitting it on every
    restart would page people twice.  A change to 0 (cleared) is not an event.
    """

    emit_on_first_sight: bool = False
    last: dict[tuple[str, str], float] = field(default_factory=dict)

    def apply(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Events (``Kind.EVENT`` rows) for the XID changes in ``frame``; updates state.

        ``frame`` must already carry entities (:func:`derive_entities`).  The
        event's value is the new XID code; its labels are the upstream
        labels plus ``xid`` (the code) and ``previous_xid``.
        """
        xids = (
            frame.filter(
                (pl.col("metric") == XID_METRIC) & pl.col("value").is_not_nan()
            )
            .sort("ts")
            .select(COLUMNS)
        )
        events: list[dict[str, object]] = []
        for row in xids.iter_rows(named=True):
            key = (row["node"], row["entity"])
            code = float(row["value"])
            prev = self.last.get(key)
            self.last[key] = code
            if prev is None and not self.emit_on_first_sight:
                continue
            if code == prev or code == 0:
                continue
            labels = [lab for lab in row["labels"] if lab["name"] not in ("xid", "previous_xid")]
            labels.append({"name": "xid", "value": _code(code)})
            previous = _code(prev) if prev is not None else ""
            labels.append({"name": "previous_xid", "value": previous})
            labels.sort(key=lambda lab: lab["name"])
            events.append(
                {**row, "metric": XID_EVENT_METRIC, "kind": Kind.EVENT.value, "labels": labels}
            )
        if not events:
            return empty_frame()
        out = pl.DataFrame(events, schema=empty_frame().schema)
        return out.with_columns(pl.col("kind").cast(KIND_DTYPE))

    def unchanged(self, keys: Sequence[tuple[str, str]], codes: Sequence[float]) -> bool:
        """Whether XID rows of these ``(node, entity)`` keys and codes would neither
        emit an event nor change the state (:meth:`apply` would return no rows).

        Why: the gauge rarely changes, and :meth:`apply` costs a frame query per
        scrape; a layout knows its XID rows' keys, so the codes alone decide.
        """
        last = self.last
        return all(code != code or last.get(key) == code  # NaN: not observed, skipped
                   for key, code in zip(keys, codes, strict=True))

    def forget(self, node: str, entity: str) -> None:
        """Drop the state of a GPU that left (so a re-added GPU starts from a baseline)."""
        self.last.pop((node, entity), None)


def _code(v: float) -> str:
    # An infinite gauge is nonsense from upstream, but must not fail the whole scrape.
    return str(int(v)) if math.isfinite(v) and v == int(v) else repr(v)


def canonical_attributes(frame: pl.DataFrame) -> pl.DataFrame:
    """Per row, the canonical attribute columns (``hostname``, ``gpu_uuid``, ``pod``...).

    For joins and display; the frame's own ``labels`` keep the upstream spelling.
    """
    return frame.select(
        pl.col("metric"), *[alias(name).alias(name) for name in LABEL_ALIASES], label("gpu")
    )


class DcgmMapping(PrometheusMapping):
    """dcgm-exporter: upstream rows with GPU entities, normalised signals, XID events.

    XID state lives in this object (one per collector), so an agent restart sets a
    new baseline rather than re-reporting the XID a GPU showed before (see
    :class:`XidTracker`).  Not ``structural``: blank sentinels (values) decide
    which rows are normalised, and XID events depend on state.
    """

    structural = False

    def __init__(self, *, source: str = SOURCE, xid_events: bool = True,
                 xid_on_first_sight: bool = False) -> None:
        super().__init__(source)
        self.xid_events = xid_events
        self.xids = XidTracker(emit_on_first_sight=xid_on_first_sight)
        self.blank_samples = 0  # DCGM blank sentinels seen, cumulative

    @classmethod
    def from_config(cls, config: DcgmCollectorConfig) -> DcgmMapping:
        return cls(source=config.source, xid_events=config.xid_events,
                   xid_on_first_sight=config.xid_on_first_sight)

    def transform(self, frame: pl.DataFrame, target: ScrapeTarget,
                  shape_cache: ShapeCache | None = None) -> pl.DataFrame:
        kept = layout_derivation(shape_cache, frame, dcgm_layout, DcgmLayout) if _ROW_WISE \
            else None
        result = map_frame(frame) if kept is None else kept.map(frame)
        self.blank_samples += result.blank_samples
        if not self.xid_events:
            return result.frame
        if kept is not None and self.xids.unchanged(
                kept.xid_keys, frame.get_column("value")[kept.xid_at].to_list()):
            return result.frame
        xids = (result.frame.filter(pl.col("metric") == XID_METRIC) if kept is None
                else result.frame[kept.xid_at])
        events = self.xids.apply(xids)
        return pl.concat([result.frame, events]) if events.height else result.frame


__all__ = [
    "LABEL_ALIASES",
    "SIGNALS",
    "DcgmMapping",
    "DcgmResult",
    "XidTracker",
    "alias",
    "canonical_attributes",
    "derive_entities",
    "drop_blanks",
    "entity_expr",
    "map_frame",
    "parse",
]
