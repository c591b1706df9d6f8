"""dcgm-exporter mapping: payloads rendered from the real counters CSV.

No upstream-attributable real dcgm-exporter capture exists, so each test
renders a payload the way dcgm-exporter does (``# HELP``/``# TYPE`` from the
CSV line, labels in render order: gpu, UUID, pci_bus_id, device, modelName,
[GPU_I_PROFILE, GPU_I_ID], host label, label-type fields, k8s attributes)
from the fields enabled in the real ``default-counters.csv``.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from gpuslo.collectors.mappings import dcgm
from gpuslo.collectors.mappings.normalise import default_parse
from gpuslo.pipeline.schema import Kind, label

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
TS = 1_700_000_000_000
UUID0 = "GPU-8d5a4a43-5e0c-2ab7-1b2e-6f0c3b4f9e10"
UUID1 = "GPU-1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718"


def csv_fields(name: str = "default-counters.csv") -> list[tuple[str, str, str]]:
    """(field, type, help) of every enabled line of a dcgm-exporter counters CSV."""
    out = []
    for line in (FIXTURES / "dcgm-exporter" / name).read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        field, typ, help_ = (p.strip() for p in line.split(",", 2))
        out.append((field, typ, help_))
    return out


def render(values: dict[str, float], gpus: list[dict[str, str]]) -> str:
    """A dcgm-exporter style payload with ``values[field]`` for every GPU."""
    fields = csv_fields()
    label_fields = {f: "550.54.15" for f, t, _ in fields if t == "label"}
    lines = []
    for field, typ, help_ in fields:
        if typ == "label" or field not in values:
            continue
        lines.append(f"# HELP {field} {help_}")
        lines.append(f"# TYPE {field} {typ}")
        for g in gpus:
            labs = {**g, **label_fields}
            body = ",".join(f'{k}="{v}"' for k, v in labs.items())
            lines.append(f"{field}{{{body}}} {values[field]:f}")
    return "\n".join(lines) + "\n"


OLD_LABELS = [
    {"gpu": "0", "UUID": UUID0, "pci_bus_id": "00000000:1A:00.0", "device": "nvidia0",
     "modelName": "NVIDIA H100 80GB HBM3", "Hostname": "gpu-node-1",
     "container": "trainer", "namespace": "ml", "pod": "train-0"},
    {"gpu": "1", "UUID": UUID1, "pci_bus_id": "00000000:1B:00.0", "device": "nvidia1",
     "modelName": "NVIDIA H100 80GB HBM3", "Hostname": "gpu-node-1"},
]

VALUES = {
    "DCGM_FI_DEV_SM_CLOCK": 1980.0,
    "DCGM_FI_DEV_GPU_TEMP": 61.0,
    "DCGM_FI_DEV_POWER_USAGE": 412.377,
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": 9876543210.0,
    "DCGM_FI_DEV_GPU_UTIL": 87.0,
    "DCGM_FI_DEV_XID_ERRORS": 0.0,
    "DCGM_FI_DEV_FB_FREE": 2000.0,
    "DCGM_FI_DEV_FB_USED": 79000.0,
    "DCGM_FI_DEV_FB_RESERVED": 559.0,
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": 0.4321,
    "DCGM_FI_PROF_PCIE_TX_BYTES": 123456789.0,
}


def mapped(text: str) -> dcgm.DcgmResult:
    return dcgm.parse(text, node="gpu-node-1", scrape_ts_ms=TS)


def norm_value(frame: pl.DataFrame, metric: str, entity: str) -> float:
    got = frame.filter((pl.col("metric") == metric) & (pl.col("entity") == entity))
    assert got.height == 1, (metric, entity, got)
    return float(got["value"][0])


def test_every_enabled_csv_field_renders_parses_and_keeps_its_upstream_name() -> None:
    fields = [(f, t) for f, t, _ in csv_fields() if t != "label"]
    values = {f: 1.0 for f, _ in fields}
    out = mapped(render(values, OLD_LABELS)).frame
    upstream = set(out.filter(~pl.col("metric").str.starts_with("gpuslo_"))["metric"])
    # The reference parser spells a counter declared without "_total" as
    # "<name>_total"; everything else is the DCGM field name verbatim.
    assert upstream == {f + "_total" if t == "counter" else f for f, t in fields}
    # The label-type CSV field became a label on every series.
    assert out.select(label("DCGM_FI_DRIVER_VERSION").is_not_null().all()).item()


def test_units_become_base_units() -> None:
    out = mapped(render(VALUES, OLD_LABELS)).frame
    # framebuffer MiB -> bytes: 79000 MiB * 1048576
    assert norm_value(out, "gpuslo_gpu_memory_used_bytes", UUID0) == 79000 * 1048576
    assert norm_value(out, "gpuslo_gpu_memory_free_bytes", UUID0) == 2000 * 1048576
    # energy mJ -> J: 9876543210 mJ / 1000
    assert norm_value(out, "gpuslo_gpu_energy_joules_total", UUID1) == pytest.approx(9876543.21)
    # GPU_UTIL percent -> ratio: 87 / 100; the PROF ratios are already 0-1
    assert norm_value(out, "gpuslo_gpu_utilization_ratio", UUID0) == pytest.approx(0.87)
    assert norm_value(out, "gpuslo_gpu_tensor_active_ratio", UUID0) == pytest.approx(0.4321)
    # SM clock MHz -> Hz; PCIe bytes is already a rate (gauge)
    assert norm_value(out, "gpuslo_gpu_sm_clock_hertz", UUID0) == 1980e6
    pcie = out.filter(pl.col("metric") == "gpuslo_gpu_pcie_tx_bytes_per_second")
    assert set(pcie["kind"]) == {"gauge"}
    energy = out.filter(pl.col("metric") == "gpuslo_gpu_energy_joules_total")
    assert set(energy["kind"]) == {"counter"}


def test_violation_counters_in_ns_become_seconds() -> None:
    text = (
        "# TYPE DCGM_FI_DEV_POWER_VIOLATION counter\n"
        f'DCGM_FI_DEV_POWER_VIOLATION{{gpu="0",UUID="{UUID0}"}} 2500000000\n'
    )
    # 2.5e9 ns = 2.5 s
    assert norm_value(mapped(text).frame, "gpuslo_gpu_power_violation_seconds_total",
                      UUID0) == pytest.approx(2.5)


def test_old_and_new_label_spellings_give_the_same_entities_and_aliases() -> None:
    new_labels = [
        {"gpu": "0", "UUID": UUID0, "modelName": "NVIDIA H100 80GB HBM3",
         "hostname": "gpu-node-1", "container": "trainer", "namespace": "ml", "pod": "train-0"},
    ]
    old_ns_labels = [
        {"gpu": "0", "uuid": UUID0, "modelName": "NVIDIA H100 80GB HBM3",
         "Hostname": "gpu-node-1", "container_name": "trainer", "pod_namespace": "ml",
         "pod_name": "train-0"},
    ]
    a = mapped(render(VALUES, new_labels)).frame
    b = mapped(render(VALUES, old_ns_labels)).frame
    assert set(a["entity"]) == set(b["entity"]) == {UUID0}
    attrs_a = dcgm.canonical_attributes(a).drop("metric").unique()
    attrs_b = dcgm.canonical_attributes(b).drop("metric").unique()
    assert attrs_a.to_dicts() == attrs_b.to_dicts()
    row = attrs_a.to_dicts()[0]
    assert (row["hostname"], row["pod"], row["namespace"], row["container"]) == (
        "gpu-node-1", "train-0", "ml", "trainer")
    # Upstream labels are untouched: the old spelling is still there.
    assert "pod_name" in {lab["name"] for lab in b["labels"][0]}


def test_nvlink_entities_use_gpu_uuid_and_model_name() -> None:
    text = (
        "# TYPE DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL counter\n"
        'DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL{nvlink="3",gpu="0",'
        f'gpu_uuid="{UUID0}",model_name="NVIDIA H100"}} 42\n'
    )
    out = mapped(text).frame
    assert out["entity"].to_list() == [UUID0]
    assert dcgm.canonical_attributes(out)["model_name"].to_list() == ["NVIDIA H100"]


def test_mig_instances_are_separate_entities() -> None:
    text = "# TYPE DCGM_FI_PROF_GR_ENGINE_ACTIVE gauge\n" + "".join(
        f'DCGM_FI_PROF_GR_ENGINE_ACTIVE{{gpu="0",UUID="{UUID0}",GPU_I_PROFILE="1g.10gb",'
        f'GPU_I_ID="{gi}",Hostname="h"}} 0.{gi}\n'
        for gi in (7, 8)
    )
    out = mapped(text).frame.filter(pl.col("metric") == "gpuslo_gpu_graphics_engine_active_ratio")
    assert sorted(out["entity"]) == [f"{UUID0}/7", f"{UUID0}/8"]


def test_blank_sentinels_are_kept_raw_but_not_normalised_and_are_counted() -> None:
    text = (
        "# TYPE DCGM_FI_DEV_MEMORY_TEMP gauge\n"
        f'DCGM_FI_DEV_MEMORY_TEMP{{gpu="0",UUID="{UUID0}"}} 9223372036854775794\n'
        "# TYPE DCGM_FI_DEV_GPU_TEMP gauge\n"
        f'DCGM_FI_DEV_GPU_TEMP{{gpu="0",UUID="{UUID0}"}} 55\n'
    )
    res = mapped(text)
    assert res.blank_samples == 1
    assert "DCGM_FI_DEV_MEMORY_TEMP" in set(res.frame["metric"])
    assert "gpuslo_gpu_memory_temperature_celsius" not in set(res.frame["metric"])
    assert norm_value(res.frame, "gpuslo_gpu_temperature_celsius", UUID0) == 55


def xid_payload(codes: dict[str, float], ts_ms: int | None = None) -> pl.DataFrame:
    lines = ["# TYPE DCGM_FI_DEV_XID_ERRORS gauge"]
    for uuid, code in codes.items():
        msg = "Graphics Engine Exception" if code == 13 else "unknownErr"
        lines.append(
            f'DCGM_FI_DEV_XID_ERRORS{{gpu="0",UUID="{uuid}",Hostname="h",err_code="{code}",'
            f'err_msg="{msg}"}} {code}'
        )
    frame = default_parse("\n".join(lines) + "\n", node="h", source="dcgm",
                          scrape_ts_ms=ts_ms or TS)
    return dcgm.derive_entities(frame)


def test_xid_gauge_changes_become_events_once() -> None:
    tracker = dcgm.XidTracker()
    # First sight is a baseline, even with an old XID in the gauge.
    assert tracker.apply(xid_payload({UUID0: 79, UUID1: 0})).height == 0
    # Unchanged: nothing.
    assert tracker.apply(xid_payload({UUID0: 79, UUID1: 0})).height == 0
    # GPU1 gets XID 13: one event for GPU1 only.
    ev = tracker.apply(xid_payload({UUID0: 79, UUID1: 13}, TS + 15_000))
    assert ev.height == 1
    row = ev.row(0, named=True)
    assert (row["metric"], row["kind"], row["value"], row["entity"]) == (
        dcgm.XID_EVENT_METRIC, Kind.EVENT.value, 13.0, UUID1)
    labs = {lab["name"]: lab["value"] for lab in row["labels"]}
    assert labs["xid"] == "13" and labs["previous_xid"] == "0"
    assert labs["err_msg"] == "Graphics Engine Exception"
    assert [lab["name"] for lab in row["labels"]] == sorted(labs)
    # Cleared back to 0: not an event.  Then 13 again: an event.
    assert tracker.apply(xid_payload({UUID1: 0})).height == 0
    assert tracker.apply(xid_payload({UUID1: 13})).height == 1


def test_an_infinite_xid_gauge_is_an_event_not_a_crash() -> None:
    # int(inf) raised OverflowError, failing the scrape of every GPU on the page.
    tracker = dcgm.XidTracker()
    tracker.apply(xid_payload({UUID0: 0}))
    ev = tracker.apply(xid_payload({UUID0: float("inf")}))
    labs = {lab["name"]: lab["value"] for lab in ev.row(0, named=True)["labels"]}
    assert (labs["xid"], labs["previous_xid"]) == ("inf", "0")


def test_xid_tracker_can_emit_on_first_sight_and_forget() -> None:
    tracker = dcgm.XidTracker(emit_on_first_sight=True)
    assert tracker.apply(xid_payload({UUID0: 48})).height == 1
    assert tracker.apply(xid_payload({UUID0: 0})).height == 0
    tracker = dcgm.XidTracker()
    tracker.apply(xid_payload({UUID0: 48}))
    tracker.forget("h", UUID0)
    assert tracker.apply(xid_payload({UUID0: 31})).height == 0  # baseline again


def test_malformed_payload_is_a_value_error_not_a_crash() -> None:
    with pytest.raises(ValueError):
        mapped('DCGM_FI_DEV_GPU_UTIL{gpu="0" 12\n')
