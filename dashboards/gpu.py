"""GPU health from dcgm-exporter's own series, per node and GPU.

Names and labels as dcgm-exporter's default counters file exposes them
(``DCGM_FI_*``, labels ``Hostname``, ``gpu``, ``UUID``, ``modelName``, and
``pod``/``namespace`` for GPUs assigned to a pod).  Three fields are not in the
default file and need a custom counters file (as ``simulator/formats/dcgm.py``
serves them): ``DCGM_FI_DEV_CLOCKS_EVENT_REASONS``, ``DCGM_FI_DEV_POWER_VIOLATION``
and ``DCGM_FI_DEV_THERMAL_VIOLATION``.  The ECC volatile/aggregate counters are
commented out in the default file too; ECC shows here as the ECC XIDs (48, 63,
64, 94, 95) and remapped rows, which the default file does export.

dcgm-exporter's ``main`` renamed ``Hostname`` to ``hostname`` (after 4.5.3-4.8.2);
every release so far uses ``Hostname``, which these queries match.
"""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dm

from gpuslo.dashboards import common as g
from gpuslo.dashboards.common import instant, q

_SEL = 'Hostname=~"$node", gpu=~"$gpu"'
_LEGEND = "{{Hostname}} gpu{{gpu}}"

# DCGM_CLOCKS_EVENT_REASON_* bits (dcgm_fields.h) worth a line each.
_CLOCK_REASONS = (
    ("power cap", 0x4),
    ("hw slowdown", 0x8),
    ("sw thermal", 0x20),
    ("hw thermal", 0x40),
    ("hw power brake", 0x80),
)


def _bit(expr: str, bit: int) -> str:
    """1 where bit ``bit`` of the gauge is set, else 0 (PromQL has no bit operators)."""
    return f"floor({expr} / {bit}) % 2"


def build() -> dm.Dashboard:
    """GPU health (DCGM)."""
    d = g.dashboard(
        g.UID_GPU, "gpuslo / GPU health (DCGM)", tags=["gpu", "dcgm"], source=True,
        description="dcgm-exporter per node and GPU: utilisation, clocks and clock-event "
                    "reasons, temperature, power, framebuffer, XID errors, ECC and remapped "
                    "rows, NVLink and PCIe.",
    )
    d = d.with_variable(g.query_variable(
        "node", "label_values(DCGM_FI_DEV_GPU_UTIL, Hostname)", label="Node", multi=True))
    d = d.with_variable(g.query_variable(
        "gpu", 'label_values(DCGM_FI_DEV_GPU_UTIL{Hostname=~"$node"}, gpu)', label="GPU",
        multi=True, sort=dm.VariableSort.NATURAL_ASC))

    d = d.with_row(g.row("Fleet"))
    d = d.with_panel(g.stat("GPUs reporting", [instant(
        f"count(DCGM_FI_DEV_GPU_UTIL{{{_SEL}}})")], w=4,
        description="A GPU that fell off the bus (XID 79) has no series at all."))
    d = d.with_panel(g.stat("Mean utilisation", [instant(
        f"avg(DCGM_FI_DEV_GPU_UTIL{{{_SEL}}})")], unit="percent", w=4))
    d = d.with_panel(g.stat("Hottest GPU", [instant(
        f"max(DCGM_FI_DEV_GPU_TEMP{{{_SEL}}})")], unit="celsius", w=4,
        thresholds=g.steps((None, "green"), (80, "orange"), (87, "red"))))
    d = d.with_panel(g.stat("Total power draw", [instant(
        f"sum(DCGM_FI_DEV_POWER_USAGE{{{_SEL}}})")], unit="watt", w=4))
    d = d.with_panel(g.stat("GPUs with an XID", [instant(
        f"sum(DCGM_FI_DEV_XID_ERRORS{{{_SEL}}} > bool 0)")], w=4,
        thresholds=g.steps((None, "green"), (1, "red"))))
    d = d.with_panel(g.stat("GPUs clock-throttled", [instant(
        f"sum(DCGM_FI_DEV_CLOCKS_EVENT_REASONS{{{_SEL}}} > bool 1)")], w=4,
        thresholds=g.steps((None, "green"), (1, "orange")),
        description="Any clock-event reason but GPU idle (bit 0x1)."))

    d = d.with_row(g.row("Utilisation"))
    d = d.with_panel(g.timeseries("GPU utilisation", [
        q(f"DCGM_FI_DEV_GPU_UTIL{{{_SEL}}}", _LEGEND)], unit="percent", min_val=0,
        max_val=100))
    d = d.with_panel(g.timeseries("Tensor pipe active", [
        q(f"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{{{_SEL}}}", _LEGEND)], unit="percentunit",
        min_val=0, max_val=1, description="Profiling field: needs SYS_ADMIN in the exporter."))

    d = d.with_row(g.row("Clocks and throttling"))
    d = d.with_panel(g.timeseries("SM clock", [
        q(f"DCGM_FI_DEV_SM_CLOCK{{{_SEL}}}", _LEGEND)], unit="rotmhz"))
    d = d.with_panel(g.timeseries(
        "Clock-event reasons (GPUs affected)",
        [q(f"sum({_bit(f'DCGM_FI_DEV_CLOCKS_EVENT_REASONS{{{_SEL}}}', bit)})", name)
         for name, bit in _CLOCK_REASONS],
        unit="short", min_val=0,
        description="GPUs with each DCGM clock-event reason bit set "
                    "(DCGM_FI_DEV_CLOCKS_EVENT_REASONS, a bitmask gauge)."))
    d = d.with_panel(g.timeseries("Time throttled by power and thermal limits", [
        q(f"rate(DCGM_FI_DEV_POWER_VIOLATION{{{_SEL}}}[$__rate_interval]) / 1e9",
          "power " + _LEGEND),
        q(f"rate(DCGM_FI_DEV_THERMAL_VIOLATION{{{_SEL}}}[$__rate_interval]) / 1e9",
          "thermal " + _LEGEND)],
        unit="percentunit", min_val=0,
        description="Share of time under each violation (the counters are nanoseconds)."))
    d = d.with_panel(g.table(
        "GPUs throttled now", [instant(
            f"DCGM_FI_DEV_CLOCKS_EVENT_REASONS{{{_SEL}}} > 1")],
        w=12, rename={"Value": "reasons (bitmask)"},
        hide=["DCGM_FI_DRIVER_VERSION", "pci_bus_id", "device", "instance"],
        description="0x4 power cap, 0x8 hw slowdown, 0x20 sw thermal, 0x40 hw thermal, "
                    "0x80 power brake."))

    d = d.with_row(g.row("Temperature and power"))
    d = d.with_panel(g.timeseries("GPU temperature", [
        q(f"DCGM_FI_DEV_GPU_TEMP{{{_SEL}}}", _LEGEND)], unit="celsius",
        thresholds=g.steps((None, "green"), (85, "red"))))
    d = d.with_panel(g.timeseries("Memory temperature", [
        q(f"DCGM_FI_DEV_MEMORY_TEMP{{{_SEL}}}", _LEGEND)], unit="celsius"))
    d = d.with_panel(g.timeseries("Power draw", [
        q(f"DCGM_FI_DEV_POWER_USAGE{{{_SEL}}}", _LEGEND)], unit="watt"))
    d = d.with_panel(g.timeseries("Energy per GPU", [
        q(f"rate(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{_SEL}}}[$__rate_interval]) / 1000",
          _LEGEND)], unit="watt",
        description="From the energy counter (mJ since boot): average power over the rate "
                    "window, a cross-check of the sampled power draw."))

    d = d.with_row(g.row("Framebuffer"))
    d = d.with_panel(g.timeseries("Framebuffer used", [
        q(f"DCGM_FI_DEV_FB_USED{{{_SEL}}} / (DCGM_FI_DEV_FB_USED{{{_SEL}}} + "
          f"DCGM_FI_DEV_FB_FREE{{{_SEL}}} + DCGM_FI_DEV_FB_RESERVED{{{_SEL}}})", _LEGEND)],
        unit="percentunit", min_val=0, max_val=1))
    d = d.with_panel(g.timeseries("Framebuffer used (bytes)", [
        q(f"DCGM_FI_DEV_FB_USED{{{_SEL}}} * 1048576", _LEGEND)], unit="bytes",
        description="dcgm-exporter reports MiB."))

    d = d.with_row(g.row("Errors: XID, ECC, remapped rows"))
    d = d.with_panel(g.table(
        "GPUs whose last XID is not 0", [instant(f"DCGM_FI_DEV_XID_ERRORS{{{_SEL}}} > 0")],
        w=12, rename={"Value": "XID"},
        hide=["DCGM_FI_DRIVER_VERSION", "pci_bus_id", "device", "instance"],
        description="DCGM_FI_DEV_XID_ERRORS is the last XID seen, not a count. 48, 63, 64, "
                    "94, 95 are ECC; 74 NVLink; 79 fell off the bus (and then has no row)."))
    d = d.with_panel(g.timeseries("Remapped rows", [
        q(f"DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS{{{_SEL}}}", "uncorrectable " + _LEGEND),
        q(f"DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS{{{_SEL}}}", "correctable " + _LEGEND),
        q(f"DCGM_FI_DEV_ROW_REMAP_FAILURE{{{_SEL}}}", "remap failure " + _LEGEND)],
        unit="short",
        description="Rows remapped after ECC errors; a remap failure means the GPU needs "
                    "service."))

    d = d.with_row(g.row("NVLink and PCIe"))
    d = d.with_panel(g.timeseries("NVLink bandwidth counter rate", [
        q(f"rate(DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL{{{_SEL}}}[$__rate_interval])", _LEGEND)],
        unit="short", w=8,
        description="All lanes; dcgm-exporter does not state the counter's unit."))
    d = d.with_panel(g.timeseries("PCIe throughput", [
        q(f"DCGM_FI_PROF_PCIE_RX_BYTES{{{_SEL}}}", "rx " + _LEGEND),
        q(f"DCGM_FI_PROF_PCIE_TX_BYTES{{{_SEL}}}", "tx " + _LEGEND)],
        unit="Bps", w=8, description="Already a rate (bytes per second), not a counter."))
    d = d.with_panel(g.timeseries("PCIe replays", [
        q(f"rate(DCGM_FI_DEV_PCIE_REPLAY_COUNTER{{{_SEL}}}[$__rate_interval])", _LEGEND)],
        unit="ops", w=8))
    return g.finish(d)
