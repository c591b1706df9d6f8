"""The RDMA fabric (InfiniBand / RoCE) from node_exporter's ``infiniband`` collector.

node_exporter re-exports ``/sys/class/infiniband/<device>/ports/<port>``: the
PortCounters (``counters/``, error counters narrow and saturating) and the mlx5
``hw_counters/`` (CNP, ECN, out_of_buffer; 32-bit ones wrap, which ``rate``
treats as a counter reset).  The node is the ``instance`` label, which
kube-prometheus-stack's node-exporter relabels to the node name.

PFC pause frames are Ethernet-level counters (ethtool ``rx_prio*_pause``) that
node_exporter's infiniband collector does not read; ``port_xmit_wait`` (ticks
with data to send but no credit) is the back-pressure those pauses cause, and
stands in for them here.
"""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dm

from gpuslo.dashboards import common as g
from gpuslo.dashboards.common import instant, q

_SEL = 'instance=~"$node", device=~"$device"'
_LEGEND = "{{instance}} {{device}}/{{port}}"
_RATE = "[$__rate_interval]"

_ERRORS = (
    ("symbol_error_total", "symbol errors"),
    ("port_errors_received_total", "receive errors"),
    ("link_error_recovery_total", "link error recoveries"),
    ("link_downed_total", "link downed"),
    ("local_link_integrity_errors_total", "local link integrity errors"),
    ("port_receive_remote_physical_errors_total", "remote physical errors"),
    ("port_discards_transmitted_total", "transmit discards"),
    ("excessive_buffer_overrun_errors_total", "buffer overruns"),
)
_CONGESTION = (
    ("np_ecn_marked_roce_packets_received_total", "ECN-marked packets received"),
    ("np_cnp_packets_sent_total", "CNPs sent (notification point)"),
    ("rp_cnp_packets_handled_total", "CNPs handled (reaction point)"),
    ("out_of_buffer_drops_total", "out_of_buffer drops"),
    ("out_of_sequence_packets_received_total", "out-of-sequence packets"),
)

_PORT_STATE = g.value_text({
    "1": ("down", "red"), "2": ("init", "orange"), "3": ("armed", "yellow"),
    "4": ("active", "green"), "5": ("active defer", "yellow"),
})


def _per_port(metric: str) -> str:
    return f"sum by (instance, device, port) (rate(node_infiniband_{metric}{{{_SEL}}}{_RATE}))"


def build() -> dm.Dashboard:
    """RDMA fabric."""
    d = g.dashboard(
        g.UID_RDMA, "gpuslo / RDMA fabric", tags=["rdma", "infiniband", "roce"], source=True,
        description="InfiniBand / RoCE ports from node_exporter: throughput, link state, error "
                    "counter rates and RoCE congestion (ECN, CNP, out_of_buffer, transmit "
                    "wait).",
    )
    d = d.with_variable(g.query_variable(
        "node", "label_values(node_infiniband_info, instance)", label="Node", multi=True))
    d = d.with_variable(g.query_variable(
        "device", 'label_values(node_infiniband_info{instance=~"$node"}, device)',
        label="Device", multi=True))

    d = d.with_row(g.row("Ports now"))
    d = d.with_panel(g.stat("Ports", [instant(
        f"count(node_infiniband_state_id{{{_SEL}}})")], w=6))
    d = d.with_panel(g.stat("Ports not active", [instant(
        f"sum(node_infiniband_state_id{{{_SEL}}} != bool 4)")], w=6,
        thresholds=g.steps((None, "green"), (1, "red"))))
    d = d.with_panel(g.stat("Receive throughput", [instant(
        f"sum(rate(node_infiniband_port_data_received_bytes_total{{{_SEL}}}{_RATE})) * 8")],
        unit="bps", w=6))
    d = d.with_panel(g.stat("Link downs in range", [instant(
        f"sum(increase(node_infiniband_link_downed_total{{{_SEL}}}[$__range]))")], w=6,
        thresholds=g.steps((None, "green"), (1, "red"))))

    d = d.with_row(g.row("Throughput"))
    d = d.with_panel(g.timeseries("Receive", [q(
        f"{_per_port('port_data_received_bytes_total')} * 8", _LEGEND)], unit="bps"))
    d = d.with_panel(g.timeseries("Transmit", [q(
        f"{_per_port('port_data_transmitted_bytes_total')} * 8", _LEGEND)], unit="bps"))
    d = d.with_panel(g.state_timeline("Link state", [q(
        f"node_infiniband_state_id{{{_SEL}}}", _LEGEND)], mappings=[_PORT_STATE],
        description="Logical port state (4 active); a flapping link shows as red stripes."))
    d = d.with_panel(g.timeseries("Link rate", [q(
        f"node_infiniband_rate_bytes_per_second{{{_SEL}}} * 8", _LEGEND)], unit="bps",
        description="Negotiated signalling rate; a port that retrained at a lower width or "
                    "speed drops here."))

    d = d.with_row(g.row("Errors"))
    d = d.with_panel(g.timeseries(
        "Error counters", [q(_per_port(m), f"{title} {_LEGEND}") for m, title in _ERRORS],
        unit="cps", w=24, h=9,
        description="Rates of the PortCounters error fields. They saturate at their width "
                    "(symbol_error at 65535) rather than wrap, so a pegged counter reads as "
                    "rate 0: check the table below."))
    d = d.with_panel(g.table("Ports that went down in the range", [instant(
        f"sum by (instance, device, port) "
        f"(increase(node_infiniband_link_downed_total{{{_SEL}}}[$__range])) > 0")],
        w=12, rename={"Value": "link downs"}, sort_by="link downs", sort_desc=True))
    d = d.with_panel(g.table("Ports with symbol errors in the range", [instant(
        f"sum by (instance, device, port) "
        f"(increase(node_infiniband_symbol_error_total{{{_SEL}}}[$__range])) > 0")],
        w=12, rename={"Value": "symbol errors"}, sort_by="symbol errors", sort_desc=True,
        description="Bad cable or optic: physical errors, retransmits."))

    d = d.with_row(g.row("RoCE congestion"))
    d = d.with_panel(g.timeseries(
        "Congestion notification (ECN / CNP)",
        [q(_per_port(m), f"{title} {_LEGEND}") for m, title in _CONGESTION[:3]], unit="pps",
        description="ECN marks seen by the receiver, CNPs it sends back, and CNPs the sender "
                    "acts on by slowing down (DCQCN)."))
    d = d.with_panel(g.timeseries(
        "Receive drops", [q(_per_port(m), f"{title} {_LEGEND}") for m, title in _CONGESTION[3:]],
        unit="pps", description="out_of_buffer: no receive WQE posted in time."))
    d = d.with_panel(g.timeseries("Transmit wait (PFC / credit back-pressure)", [q(
        _per_port("port_transmit_wait_total"), _LEGEND)], unit="cps", w=24,
        description="Ticks the port had data to send but could not; with RoCE, the effect "
                    "of PFC pause frames (which node_exporter does not export)."))
    return g.finish(d)
