"""The demo's one HTTP port: 9464 when free, any free port when something holds it."""

from __future__ import annotations

import socket

from gpuslo.pipeline.app.demo import demo_config, free_or_any


def test_a_taken_port_falls_back_to_any_and_a_free_one_is_kept() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        assert free_or_any(taken) == 0
        cfg = demo_config("/tmp/unused", (), taken)  # an explicit port is used as given
        assert cfg.exporters.prometheus.port == taken
    assert free_or_any(taken) == taken


def test_the_demo_serves_metrics_and_the_page_by_default() -> None:
    cfg = demo_config("/tmp/unused", (), None)
    assert cfg.exporters.prometheus.enabled and cfg.exporters.web.enabled
    assert cfg.exporters.prometheus.host == "127.0.0.1"
