"""RDMA port counters as the kernel exposes them, and as node_exporter re-exports them.

sysfs is the source of truth: ``counters/port_{xmit,rcv}_data`` count octets
divided by 4, the PortCounters error fields are narrow and *saturate* at their
maximum, the mlx5 Q counters in ``hw_counters/`` are 32 bits and *wrap*.
node_exporter reads those files, so it inherits pegged and wrapped values and
multiplies the data counters back by 4.
"""

# ruff: noqa: E501  (upstream help texts are kept on one line, verbatim)

from __future__ import annotations

from gpuslo.simulator.entities import Port
from gpuslo.simulator.fleet import Fleet
from gpuslo.simulator.formats.exposition import Family, go_float, render

# File name -> width in bits; error counters saturate.
COUNTER_WIDTHS: dict[str, int] = {
    "VL15_dropped": 16, "excessive_buffer_overrun_errors": 4, "link_downed": 8,
    "link_error_recovery": 8, "local_link_integrity_errors": 4,
    "multicast_rcv_packets": 64, "multicast_xmit_packets": 64,
    "port_rcv_constraint_errors": 8, "port_rcv_data": 64, "port_rcv_errors": 16,
    "port_rcv_packets": 64, "port_rcv_remote_physical_errors": 16,
    "port_rcv_switch_relay_errors": 16, "port_xmit_constraint_errors": 8,
    "port_xmit_data": 64, "port_xmit_discards": 16, "port_xmit_packets": 64,
    "port_xmit_wait": 32, "symbol_error": 16, "unicast_rcv_packets": 64,
    "unicast_xmit_packets": 64,
}
# hw_counters file -> width; 32-bit Q counters wrap, 64-bit congestion counters do not.
HW_WIDTHS: dict[str, int] = {
    "duplicate_request": 32, "implied_nak_seq_err": 32, "local_ack_timeout_err": 32,
    "np_cnp_sent": 64, "np_ecn_marked_roce_packets": 64, "out_of_buffer": 32,
    "out_of_sequence": 32, "packet_seq_err": 32, "req_cqe_error": 32,
    "req_cqe_flush_error": 32, "req_remote_access_errors": 32,
    "req_remote_invalid_request": 32, "resp_cqe_error": 32, "resp_cqe_flush_error": 32,
    "resp_local_length_error": 32, "resp_remote_access_errors": 32, "rnr_nak_retry_err": 32,
    "roce_adp_retrans": 32, "roce_adp_retrans_to": 32, "roce_slow_restart": 32,
    "roce_slow_restart_cnps": 32, "roce_slow_restart_trans": 32, "rp_cnp_handled": 64,
    "rp_cnp_ignored": 64, "rx_atomic_requests": 32, "rx_dct_connect": 32,
    "rx_icrc_encapsulated": 64, "rx_read_requests": 32, "rx_write_requests": 32,
}
_SATURATING = {k for k, w in COUNTER_WIDTHS.items() if w < 64}


def counter_values(p: Port) -> dict[str, int]:
    """Each ``counters/`` file's value, with the 4-octet units and saturation applied."""
    out: dict[str, int] = {}
    for name, width in COUNTER_WIDTHS.items():
        v = int(p.counters.get(name, 0.0))
        if name in ("port_xmit_data", "port_rcv_data"):
            v //= 4
        if name in _SATURATING:
            v = min(v, (1 << width) - 1)
        else:
            v %= 1 << 64
        out[name] = v
    return out


def hw_values(p: Port) -> dict[str, int]:
    """Each ``hw_counters/`` file's value (32-bit ones wrap), plus ``lifespan`` in ms."""
    out = {name: int(p.hw.get(name, 0.0)) % (1 << width) for name, width in HW_WIDTHS.items()}
    out["lifespan"] = 10
    return out


def port_state(p: Port) -> tuple[str, str]:
    """``state`` and ``phys_state`` file contents."""
    return ("4: ACTIVE", "5: LinkUp") if p.up else ("1: DOWN", "2: Polling")


def sysfs_files(fleet: Fleet, node: str) -> dict[str, str]:
    """``class/infiniband/**`` of ``node`` as ``{relative path: file content}``."""
    files: dict[str, str] = {}
    for p in fleet.node_by_name[node].ports:
        dev = f"class/infiniband/{p.device}"
        files[f"{dev}/board_id"] = p.board_id + "\n"
        files[f"{dev}/fw_ver"] = p.fw_ver + "\n"
        files[f"{dev}/hca_type"] = p.hca_type + "\n"
        files[f"{dev}/node_guid"] = p.node_guid + "\n"
        port = f"{dev}/ports/{p.port}"
        state, phys = port_state(p)
        files[f"{port}/state"] = state + "\n"
        files[f"{port}/phys_state"] = phys + "\n"
        files[f"{port}/link_layer"] = p.link_layer + "\n"
        files[f"{port}/rate"] = f"{p.rate_gbps} Gb/sec (4X NDR)\n"
        for name, v in counter_values(p).items():
            files[f"{port}/counters/{name}"] = f"{v}\n"
        for name, v in hw_values(p).items():
            files[f"{port}/hw_counters/{name}"] = f"{v}\n"
    return files


# node_exporter name (without node_infiniband_) -> (sysfs dir, file, help).
_NE_COUNTERS: tuple[tuple[str, str, str, str], ...] = (
    ("excessive_buffer_overrun_errors_total", "c", "excessive_buffer_overrun_errors",
     "Number of times that OverrunErrors consecutive flow control update periods occurred, each having at least one overrun error."),
    ("link_downed_total", "c", "link_downed",
     "Number of times the link failed to recover from an error state and went down"),
    ("link_error_recovery_total", "c", "link_error_recovery",
     "Number of times the link successfully recovered from an error state"),
    ("local_link_integrity_errors_total", "c", "local_link_integrity_errors",
     "Number of times that the count of local physical errors exceeded the threshold specified by LocalPhyErrors."),
    ("multicast_packets_received_total", "c", "multicast_rcv_packets",
     "Number of multicast packets received (including errors)"),
    ("multicast_packets_transmitted_total", "c", "multicast_xmit_packets",
     "Number of multicast packets transmitted (including errors)"),
    ("port_constraint_errors_received_total", "c", "port_rcv_constraint_errors",
     "Number of packets received on the switch physical port that are discarded"),
    ("port_constraint_errors_transmitted_total", "c", "port_xmit_constraint_errors",
     "Number of packets not transmitted from the switch physical port"),
    ("port_data_received_bytes_total", "c", "port_rcv_data",
     "Number of data octets received on all links"),
    ("port_data_transmitted_bytes_total", "c", "port_xmit_data",
     "Number of data octets transmitted on all links"),
    ("port_discards_transmitted_total", "c", "port_xmit_discards",
     "Number of outbound packets discarded by the port because the port is down or congested"),
    ("port_errors_received_total", "c", "port_rcv_errors",
     "Number of packets containing an error that were received on this port"),
    ("port_packets_received_total", "c", "port_rcv_packets",
     "Number of packets received on all VLs by this port (including errors)"),
    ("port_packets_transmitted_total", "c", "port_xmit_packets",
     "Number of packets transmitted on all VLs from this port (including errors)"),
    ("port_receive_remote_physical_errors_total", "c", "port_rcv_remote_physical_errors",
     "Number of packets marked with the EBP (End of Bad Packet) delimiter received on the port."),
    ("port_receive_switch_relay_errors_total", "c", "port_rcv_switch_relay_errors",
     "Number of packets that could not be forwarded by the switch."),
    ("port_transmit_wait_total", "c", "port_xmit_wait",
     "Number of ticks during which the port had data to transmit but no data was sent during the entire tick"),
    ("symbol_error_total", "c", "symbol_error",
     "Number of minor link errors detected on one or more physical lanes."),
    ("unicast_packets_received_total", "c", "unicast_rcv_packets",
     "Number of unicast packets received (including errors)"),
    ("unicast_packets_transmitted_total", "c", "unicast_xmit_packets",
     "Number of unicast packets transmitted (including errors)"),
    ("vl15_dropped_total", "c", "VL15_dropped",
     "Number of incoming VL15 packets dropped due to resource limitations."),
    ("duplicate_requests_packets_total", "h", "duplicate_request",
     "The number of received packets. A duplicate request is a request that had been previously executed."),
    ("implied_nak_seq_errors_total", "h", "implied_nak_seq_err",
     "The number of time the requested decided an ACK. with a PSN larger than the expected PSN for an RDMA read or response."),
    ("local_ack_timeout_errors_total", "h", "local_ack_timeout_err",
     "The number of times QP's ack timer expired for RC, XRC, DCT QPs at the sender side. The QP retry limit was not exceed, therefore it is still recoverable error."),
    ("np_cnp_packets_sent_total", "h", "np_cnp_sent",
     "The number of CNP packets sent by the Notification Point when it noticed congestion experienced in the RoCEv2 IP header (ECN bits). The counters was added in MLNX_OFED 4.1"),
    ("np_ecn_marked_roce_packets_received_total", "h", "np_ecn_marked_roce_packets",
     "The number of RoCEv2 packets received by the notification point which were marked for experiencing the congestion (ECN bits where '11' on the ingress RoCE traffic) . The counters was added in MLNX_OFED 4.1"),
    ("out_of_buffer_drops_total", "h", "out_of_buffer",
     "The number of drops occurred due to lack of WQE for the associated QPs."),
    ("out_of_sequence_packets_received_total", "h", "out_of_sequence",
     "The number of out of sequence packets received."),
    ("packet_sequence_errors_total", "h", "packet_seq_err",
     "The number of received NAK sequence error packets. The QP retry limit was not exceeded."),
    ("roce_adp_retransmits_total", "h", "roce_adp_retrans",
     "The number of adaptive retransmissions for RoCE traffic. The counter was added in MLNX_OFED rev 5.0-1.0.0.0 and kernel v5.6.0"),
    ("rp_cnp_packets_handled_total", "h", "rp_cnp_handled",
     "The number of CNP packets handled by the Reaction Point HCA to throttle the transmission rate. The counters was added in MLNX_OFED 4.1"),
    ("rx_read_requests_total", "h", "rx_read_requests",
     "The number of received READ requests for the associated QPs."),
    ("rx_write_requests_total", "h", "rx_write_requests",
     "The number of received WRITE requests for the associated QPs."),
)


def infiniband_families(fleet: Fleet, node: str) -> list[Family]:
    """node_exporter's ``node_infiniband_*`` families for ``node``, unsorted."""
    ports = fleet.node_by_name[node].ports
    fams: list[Family] = []
    info = Family("node_infiniband_info", "gauge",
                  "Non-numeric data from /sys/class/infiniband/<device>, value is always 1.")
    for p in ports:
        info.add([("board_id", p.board_id), ("device", p.device),
                  ("firmware_version", p.fw_ver), ("hca_type", p.hca_type)], "1")
    fams.append(info)
    per_port = [(p, counter_values(p), hw_values(p)) for p in ports]
    for name, where, file, help_ in _NE_COUNTERS:
        fam = Family(f"node_infiniband_{name}", "counter", help_)
        for p, cv, hv in per_port:
            v = cv[file] if where == "c" else hv[file]
            if file in ("port_rcv_data", "port_xmit_data"):
                v *= 4
            fam.add([("device", p.device), ("port", str(p.port))], go_float(v))
        fams.append(fam)
    for name, help_, fn in (
        ("state_id", "State of the InfiniBand port (0: no change, 1: down, 2: init, 3: armed, 4: active, 5: act defer)",
         lambda p: 4 if p.up else 1),
        ("physical_state_id", "Physical state of the InfiniBand port (0: no change, 1: sleep, 2: polling, 3: disable, 4: shift, 5: link up, 6: link error recover, 7: phytest)",
         lambda p: 5 if p.up else 2),
        ("rate_bytes_per_second", "Maximum signal transfer rate", lambda p: p.rate_gbps * 125_000_000),
        ("lifespan_seconds", "The maximum period in ms which defines the aging of the counter reads. Two consecutive reads within this period might return the same values.",
         lambda p: 0),
    ):
        fam = Family(f"node_infiniband_{name}", "gauge", help_)
        for p in ports:
            fam.add([("device", p.device), ("port", str(p.port))], go_float(fn(p)))
        fams.append(fam)
    return fams


def render_infiniband(fleet: Fleet, node: str, ts_ms: int | None = None) -> str:
    """Only the ``node_infiniband_*`` part of node_exporter's page."""
    return render(sorted(infiniband_families(fleet, node), key=lambda f: f.name), ts_ms)
