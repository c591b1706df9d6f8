"""``gpuslo replay`` on OpenMetrics exported from a Prometheus: same report as from Parquet.

The same recorded fleet is written twice: as the OpenMetrics a Prometheus
exports (timestamped points, histograms, ``job``/``instance``/``node`` labels)
and as the Parquet the collectors would have produced.  Replaying either must
give the same SLO reports and alert episodes, which checks the inference of
source, node and entity end to end on the default catalog.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from history_fleet import Series, collector_frame, fleet_series, write_openmetrics
from servers import backfill
from typer.testing import CliRunner

from gpuslo.collectors.history import (
    ExpositionReader,
    InputWarning,
    OpenMetricsInputError,
    is_exposition_file,
    read_exposition,
)
from gpuslo.pipeline.app.cli.main import app
from gpuslo.pipeline.schema import SAMPLE_SCHEMA
from gpuslo.slo.catalog import CATALOG_DIR

CATALOG = CATALOG_DIR
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
runner = CliRunner()


@pytest.fixture(scope="module")
def fleet() -> list[Series]:
    return fleet_series(T0)


def _replay(samples: Path, out: Path) -> dict[str, Any]:
    result = runner.invoke(app, ["replay", str(CATALOG), "--samples", str(samples),
                                 "--json", str(out), "--step", "5m"])
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def test_openmetrics_export_replays_to_the_same_report_as_the_parquet(
    fleet: list[Series], tmp_path: Path
) -> None:
    om = tmp_path / "fleet.om"
    write_openmetrics(fleet, om)
    pq = tmp_path / "fleet.parquet"
    collector_frame(fleet).write_parquet(pq)
    from_om = _replay(om, tmp_path / "om.json")
    from_pq = _replay(pq, tmp_path / "pq.json")
    assert from_om["slos"] == from_pq["slos"]
    assert from_om["alerts"] == from_pq["alerts"]
    assert from_om["timeline"] == from_pq["timeline"]
    # The replay saw real data: every catalog SLO with data has a scope, and the burst paged.
    slos = {r["slo"] for r in from_om["slos"]}
    assert {"request-success", "ttft", "gpu-thermal-headroom", "rdma-port-health"} <= slos
    assert any(a["slo"] == "request-success" for a in from_om["alerts"])


def test_source_node_and_entity_are_inferred_as_the_collectors_would(
    fleet: list[Series], tmp_path: Path
) -> None:
    om = tmp_path / "fleet.om"
    write_openmetrics(fleet, om)
    frame = read_exposition(om)
    upstream = frame.filter(~pl.col("metric").str.starts_with("gpuslo_"))
    expected = collector_frame(fleet)
    key = ["metric", "node", "source", "entity", "ts", "value"]
    assert upstream.select(key).sort(key).equals(expected.select(key).sort(key))
    # The collectors' normalised signals come along, for specs that select them.
    assert frame.filter(pl.col("metric") == "gpuslo_gpu_temperature_celsius").height


def test_small_chunks_never_split_a_histogram_point_and_give_the_same_frame(
    fleet: list[Series], tmp_path: Path
) -> None:
    om = tmp_path / "fleet.om"
    write_openmetrics(fleet, om)
    seen: list[tuple[int, int]] = []
    whole = read_exposition(om)
    chunked = read_exposition(om, chunk_bytes=32768, progress=lambda d, t: seen.append((d, t)))
    assert len(seen) > 10 and seen[-1][0] == seen[-1][1] == om.stat().st_size
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    cols = ["ts", "node", "source", "metric", "entity", "value"]
    assert chunked.select(cols).sort(cols).equals(whole.select(cols).sort(cols))


def test_formats_are_detected_by_extension_or_content(tmp_path: Path) -> None:
    text = tmp_path / "export"  # no extension: content says exposition text
    text.write_text('# TYPE up gauge\nup{job="x",instance="h:1"} 1 1772452800000\n')
    assert is_exposition_file(text)
    frame = read_exposition(text)  # no # EOF: text 0.0.4, timestamps in milliseconds
    assert frame["ts"][0] == datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    assert frame["source"][0] == "x" and frame["node"][0] == "h"
    pq = tmp_path / "samples"
    frame.write_parquet(pq)
    assert not is_exposition_file(pq)


def test_samples_without_timestamps_are_rejected_with_the_file_named(tmp_path: Path) -> None:
    path = tmp_path / "scrape.om"
    path.write_text("# TYPE up gauge\nup 1\n# EOF\n")
    with pytest.raises(OpenMetricsInputError, match="without a timestamp"):
        read_exposition(path)
    # Only the families the specs read must parse: a live scrape of another family is
    # "nothing to replay", naming the file.
    result = runner.invoke(app, ["replay", str(CATALOG), "--samples", str(path)])
    assert result.exit_code == 2
    assert f"{path}: no samples of the metrics the specs read" in result.output
    path.write_text(f"# TYPE DCGM_FI_DEV_GPU_TEMP gauge\n{TEMP} 61\n# EOF\n")
    result = runner.invoke(app, ["replay", str(CATALOG), "--samples", str(path)])
    assert result.exit_code == 2
    assert "without a timestamp" in result.output


def test_the_generated_export_is_what_promtool_backfills(
    fleet: list[Series], tmp_path: Path
) -> None:
    """The test input is a real Prometheus export shape, not one only our reader accepts."""
    om = tmp_path / "fleet.om"
    write_openmetrics(fleet, om)
    backfill(om, tmp_path / "tsdb", timeout_s=60)


# --- Input as promtool accepts it (issue 15): each bad input, its message and its line -------

NOW = datetime(2026, 4, 1, tzinfo=UTC)
TS = 1772452800  # 2026-03-02 12:00:00 UTC
TEMP = 'DCGM_FI_DEV_GPU_TEMP{UUID="GPU-a",gpu="0",instance="10.0.1.1:9400",job="dcgm"}'
NVLINK = 'DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL{UUID="GPU-a",gpu="0",instance="10.0.1.1:9400"}'


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _temps(n: int, unit: str = "s") -> list[str]:
    stamp = (lambda i: f"{TS + 15 * i}.000") if unit == "s" else (
        lambda i: str((TS + 15 * i) * 1000))
    return ["# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature.",
            "# TYPE DCGM_FI_DEV_GPU_TEMP gauge",
            *[f"{TEMP} {60 + i} {stamp(i)}" for i in range(n)]]


def _read(path: Path, metrics: set[str] | None = None,
          **kw: Any) -> tuple[pl.DataFrame, list[InputWarning]]:
    reader = ExpositionReader(path, metrics=metrics, now=NOW, **kw)
    frames = list(reader.frames())
    frame = pl.concat(frames) if frames else pl.DataFrame(schema=SAMPLE_SCHEMA)
    return frame, reader.warnings


def test_a_counter_without_total_is_a_warning_with_its_first_line_and_replays(
    tmp_path: Path
) -> None:
    # dcgm-exporter's counters have no _total; Prometheus exports them as scraped and
    # promtool ingests the file.  A family no SLO reads must not sink the replay.
    path = _write(tmp_path / "dcgm.om", [
        *_temps(3),
        "# HELP DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL NVLink bandwidth.",
        "# TYPE DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL counter",
        f"{NVLINK} 100 {TS}.000",                # line 8: the first bad one
        f"{NVLINK} 250 {TS + 15}.000",
        "# TYPE DCGM_FI_DEV_XID_ERRORS gauge",     # the next family's TYPE line
        f'DCGM_FI_DEV_XID_ERRORS{{UUID="GPU-a",gpu="0"}} 0 {TS}.000',
        "# EOF",
    ])
    frame, warnings = _read(path, {"DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_XID_ERRORS"})
    assert sorted(frame["metric"].unique()) == ["DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_XID_ERRORS"]
    assert [str(w) for w in warnings] == [
        "line 8: counter 'DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL' has samples without the _total "
        "suffix; read as DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL_total, as gpuslo's collectors "
        "name counters"]
    # A spec that does read it gets counter samples, named as the collectors name them.
    frame, _ = _read(path, {"DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL_total"})
    assert frame["value"].to_list() == [100.0, 250.0]
    assert set(frame["kind"].cast(pl.String)) == {"counter"}
    backfill(path, tmp_path / "tsdb", timeout_s=60)


def test_a_malformed_line_names_itself_and_only_stops_the_families_read(
    tmp_path: Path
) -> None:
    lines = [
        *_temps(2),
        "# TYPE node_load1 gauge",                       # line 5
        f'node_load1{{instance="h:9100"}} 0.5 {TS}.000',
        'node_load1{instance="h:9100" 0.9',              # line 7: not a sample line
        'node_load1{instance="h:9100"} 0.7 17724528',    # line 8: cut short, nobody reads it
        f"{TEMP} 61 {TS + 30}.000",
    ]
    frame, warnings = _read(_write(tmp_path / "ok.om", [*lines, "# EOF"]),
                            {"DCGM_FI_DEV_GPU_TEMP"})
    assert frame["value"].to_list() == [60.0, 61.0, 61.0]
    assert [str(w) for w in warnings] == [
        "line 7: malformed line of 'node_load1', a family no spec reads; skipped"]
    bad = _write(tmp_path / "bad.om", [
        *lines,
        f"{TEMP} hot {TS + 45}.000",                     # line 10: the first bad line read
        f"{TEMP} 62",                                    # line 11
        "# EOF",
    ])
    with pytest.raises(OpenMetricsInputError) as err:
        _read(bad, {"DCGM_FI_DEV_GPU_TEMP"})
    assert str(err.value) == (
        f"{bad}: line 10: value 'hot' is not a number: '{TEMP} hot {TS + 45}.000'")
    with pytest.raises(OpenMetricsInputError) as err:
        _read(_write(tmp_path / "nots.om", [*lines, f"{TEMP} 62", "# EOF"]),
              {"DCGM_FI_DEV_GPU_TEMP"})
    assert ": line 10: sample without a timestamp (a replay needs the time of every point, " \
           "as Prometheus exports it)" in str(err.value)


def test_format_and_unit_come_from_the_content_not_from_eof(tmp_path: Path) -> None:
    # An OpenMetrics export cut at a line boundary: no # EOF, timestamps in seconds
    # with a fraction.  Read as text format (milliseconds), three hours landed in 1970.
    path = _write(tmp_path / "export.om.txt", _temps(720))
    frame, warnings = _read(path)
    assert frame["ts"].min() == datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    assert frame["ts"].max() == datetime(2026, 3, 2, 14, 59, 45, tzinfo=UTC)
    assert [str(w) for w in warnings] == [
        "line 722: no # EOF at the end of an OpenMetrics file (cut short?); every complete "
        "line was read"]
    # Integer seconds are seconds too; thirteen digits are milliseconds.
    seconds = _write(tmp_path / "s.txt", [f"{TEMP} 60 {TS}"])
    millis = _write(tmp_path / "ms.txt", [f"{TEMP} 60 {TS * 1000}"])
    assert _read(seconds)[0]["ts"][0] == _read(millis)[0]["ts"][0] == datetime(
        2026, 3, 2, 12, 0, tzinfo=UTC)


def test_a_file_cut_inside_a_timestamp_is_refused_at_that_line(tmp_path: Path) -> None:
    lines = _temps(4)
    lines[-1] = lines[-1][: lines[-1].rindex(" ") + 6]  # "... 63 17724"
    path = _write(tmp_path / "cut.om", lines)
    with pytest.raises(OpenMetricsInputError) as err:
        _read(path)
    assert str(err.value) == (
        f"{path}: line 6: timestamp 1970-01-01 04:55:24 UTC is before 2000 (a file cut inside "
        f"a timestamp, or milliseconds read as seconds?): '{TEMP} 63 17724'")


def test_a_timestamp_in_the_future_is_refused_at_its_line(tmp_path: Path) -> None:
    lines = _temps(3)
    lines.append(f"{TEMP} 70 {int(NOW.timestamp()) + 3600}.000")
    path = _write(tmp_path / "future.om", lines)
    with pytest.raises(OpenMetricsInputError) as err:
        _read(path)
    assert str(err.value) == (
        f"{path}: line 6: timestamp 2026-04-01 01:00:00 UTC is in the future: "
        f"'{TEMP} 70 {int(NOW.timestamp()) + 3600}.000'")


def test_other_metadata_mismatches_are_warnings_with_their_first_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "meta.om", [
        *_temps(2),
        "# TYPE node_load1 loadavg",                     # line 5: unknown type
        f'node_load1{{instance="h:9100"}} 0.5 {TS}.000',
        "",                                              # line 7: blank in OpenMetrics
        f"{TEMP} 61 {TS + 30}.000",
        "# EOF",
        f"{TEMP} 99 {TS + 45}.000",                      # line 10: after # EOF
    ])
    frame, warnings = _read(path)
    assert frame.filter(pl.col("metric") == "DCGM_FI_DEV_GPU_TEMP")["value"].to_list() == [
        60.0, 61.0, 61.0]
    assert set(frame.filter(pl.col("metric") == "node_load1")["kind"].cast(pl.String)) == {
        "untyped"}
    assert [str(w) for w in warnings] == [
        "line 5: unknown type 'loadavg' for 'node_load1'; its samples are read as untyped",
        "line 7: blank lines, skipped",
        "line 10: lines after # EOF are ignored, as promtool ignores them",
    ]


def test_start_and_end_bound_what_is_read(tmp_path: Path) -> None:
    path = _write(tmp_path / "temps.om", [*_temps(8), "# EOF"])
    frame, _ = _read(path, {"DCGM_FI_DEV_GPU_TEMP"},
                     not_before=datetime(2026, 3, 2, 12, 0, 30, tzinfo=UTC),
                     not_after=datetime(2026, 3, 2, 12, 1, 15, tzinfo=UTC))
    assert frame["value"].to_list() == [62.0, 63.0, 64.0, 65.0]


def test_a_replay_over_one_sample_in_1970_ends_at_once_with_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "epoch.txt", [f"{TEMP} 60 1234"])
    started = time.monotonic()
    result = runner.invoke(app, ["replay", str(CATALOG), "--samples", str(path)])
    assert result.exit_code == 2, result.output
    assert "is before 2000" in result.output
    assert time.monotonic() - started < 30
