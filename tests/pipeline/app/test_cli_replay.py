"""``gpuslo replay``'s outputs and options: the table, --start/--end, --json, --parquet/--csv."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from gpuslo.pipeline.app.cli import replay as replay_cli
from gpuslo.pipeline.app.cli.main import app
from gpuslo.pipeline.app.cli.replay import parse_instant
from gpuslo.pipeline.errors import InputError
from gpuslo.pipeline.schema import frame_from_rows
from gpuslo.slo.backtest import replay
from gpuslo.slo.catalog import CATALOG_DIR
from gpuslo.slo.spec import load_specs

SPEC = CATALOG_DIR / "request-success.yaml"
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
LONG_MODEL = "meta-llama-3.1-405b-instruct-fp8-with-a-name-longer-than-any-terminal"
runner = CliRunner()


def _samples(tmp_path: Path) -> Path:
    """One hour every 15 s of one model; errors from minute 20 to 30 (a page that resolves,
    a ticket still firing at the end)."""
    rows = []
    ok = err = 0.0
    for i in range(4 * 60 + 1):
        ts = T0 + timedelta(seconds=15 * i)
        if i:
            ok += 20
            err += 5 if 80 <= i < 120 else 0
        lab = {"model_name": LONG_MODEL}
        rows.append((ts, "n1", "vllm", "vllm:request_success_total", "counter", ok, "",
                     {**lab, "finished_reason": "stop"}))
        rows.append((ts, "n1", "vllm", "vllm:request_success_total", "counter", err, "",
                     {**lab, "finished_reason": "error"}))
    path = tmp_path / "samples.parquet"
    frame_from_rows(rows).write_parquet(path)
    return path


def _run(*args: str, columns: int = 80) -> tuple[int, str, str]:
    result = runner.invoke(app, ["replay", str(SPEC), *args], env={"COLUMNS": str(columns)})
    return result.exit_code, result.stdout, result.stderr


def test_the_table_shows_the_date_and_what_fires_at_the_end_whatever_the_terminal(
    tmp_path: Path,
) -> None:
    samples = _samples(tmp_path)
    code, narrow, err = _run("--samples", str(samples), columns=60)
    assert code == 0, err
    code, wide, _ = _run("--samples", str(samples), columns=300)
    assert narrow == wide  # piped: the width does not depend on the terminal
    assert "SLOs at 2026-03-02 13:00:00 UTC" in narrow
    (row,) = [line for line in narrow.splitlines() if "request-success" in line
              and "│" in line]
    assert f"model_name={LONG_MODEL}" in row  # never cut
    assert row.rstrip(" │").endswith("ticket")  # the alerts column: firing at the end
    assert ("page request-success {model_name=" + LONG_MODEL + "} fired 2026-03-02 12:21:00, "
            "resolved 2026-03-02 12:59:00 (page-5m-1h, page-30m-6h)") in narrow
    assert "still firing at the end" in narrow


def test_json_parquet_and_csv_carry_windows_tiers_and_episodes(tmp_path: Path) -> None:
    samples = _samples(tmp_path)
    out = tmp_path / "out"
    code, _, err = _run("--samples", str(samples), "--json", f"{out}.json",
                        "--parquet", f"{out}.parquet", "--csv", f"{out}.csv")
    assert code == 0, err
    doc = json.loads(Path(f"{out}.json").read_text())
    # Streamed a scope at a time, it is the report's own JSON form.
    whole = replay(load_specs([SPEC]), [pl.read_parquet(samples)])
    assert doc == json.loads(json.dumps(whole.to_dict()))
    assert not list(tmp_path.glob(".gpuslo-replay-*"))  # its side file is gone
    (tl,) = doc["timeline"]
    assert set(tl["windows"]) == {"5m", "30m", "1h", "2h", "6h", "1d", "3d", "period"}
    assert set(tl["tiers"]) == {"page-5m-1h", "page-30m-6h", "ticket-2h-1d", "ticket-6h-3d"}
    assert [(a["severity"], a["tiers"], a["fired_at"], a["resolved_at"])
            for a in doc["alerts"]] == [
        ("ticket", ["ticket-2h-1d", "ticket-6h-3d"], "2026-03-02T12:20:00+00:00", None),
        ("page", ["page-5m-1h", "page-30m-6h"], "2026-03-02T12:21:00+00:00",
         "2026-03-02T12:59:00+00:00")]
    assert [a["severity"] for a in doc["firing_at_end"]] == ["ticket"]

    frame = pl.read_parquet(f"{out}.parquet")
    assert frame.height == len(tl["times"])
    assert frame["evaluated_at"].dt.to_string("%Y-%m-%dT%H:%M:%S+00:00").to_list() == \
        tl["times"]
    assert frame["burn_rate_1h"].to_list() == tl["windows"]["1h"]["burn_rate"]
    assert frame["tier_page-5m-1h"].to_list() == tl["tiers"]["page-5m-1h"]
    # The page's condition holds from the step it fired until the one it resolved at.
    fired = frame.filter(pl.col("firing_page"))["evaluated_at"]
    assert (fired.min(), fired.max()) == (T0 + timedelta(minutes=21),
                                         T0 + timedelta(minutes=58))
    csv = pl.read_csv(f"{out}.csv")
    assert csv.columns == frame.columns and csv.height == frame.height
    assert csv["burn_rate_1h"].to_list() == pytest.approx(frame["burn_rate_1h"].to_list())

    episodes = pl.read_parquet(f"{out}.episodes.parquet")
    assert episodes.select("severity", "fired_at", "resolved_at").rows() == [
        ("ticket", T0 + timedelta(minutes=20), None),
        ("page", T0 + timedelta(minutes=21), T0 + timedelta(minutes=59))]
    assert episodes["tiers"].to_list()[1] == ["page-5m-1h", "page-30m-6h"]
    assert pl.read_csv(f"{out}.episodes.csv")["tiers"].to_list()[1] == \
        "page-5m-1h page-30m-6h"


def test_timelines_written_a_slice_of_steps_at_a_time_are_the_whole_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    samples = _samples(tmp_path)
    monkeypatch.setattr(replay_cli, "STEPS_PER_WRITE", 7)
    code, _, err = _run("--samples", str(samples), "--parquet", str(tmp_path / "t.parquet"))
    assert code == 0, err
    whole = replay(load_specs([SPEC]), [pl.read_parquet(samples)])
    written = pl.read_parquet(tmp_path / "t.parquet")
    assert written.height == whole.timeline.height == 60  # each minute 12:01 .. 13:00, once
    assert written.select(whole.timeline.columns).equals(
        whole.timeline.with_columns(pl.col("evaluated_at").cast(written["evaluated_at"].dtype)))


def test_html_report_has_every_episode_without_keeping_timelines(tmp_path: Path) -> None:
    code, _, err = _run("--samples", str(_samples(tmp_path)), "--html",
                        str(tmp_path / "r.html"))
    assert code == 0, err
    html = (tmp_path / "r.html").read_text()
    for fired in ("2026-03-02 12:20:00 UTC", "2026-03-02 12:21:00 UTC"):
        assert fired in html
    assert '<rect class="episode page"' in html


def test_start_and_end_bound_the_replay(tmp_path: Path) -> None:
    samples = _samples(tmp_path)
    out = tmp_path / "r.json"
    code, _, err = _run("--samples", str(samples), "--start", "2026-03-02T12:30Z",
                        "--end", "2026-03-02 12:45", "--json", str(out))
    assert code == 0, err
    doc = json.loads(out.read_text())
    assert (doc["start"], doc["end"]) == ("2026-03-02T12:30:00+00:00",
                                         "2026-03-02T12:45:00+00:00")
    (slo,) = doc["slos"]
    # Only samples in [12:30, 12:45] are read: 60 increases of 20 good, no errors.
    assert slo["period"]["total"] == pytest.approx(60 * 20)
    assert slo["period"]["good"] == pytest.approx(60 * 20)
    assert doc["alerts"] == []


@pytest.mark.parametrize(("args", "message"), [
    ((), "give one input: --samples FILE or --prometheus URL"),
    (("--prometheus", "http://127.0.0.1:1"), "--prometheus needs --start"),
    (("--start", "2026-03-02T13:00Z", "--end", "2026-03-02T12:00Z"),
     "--end 2026-03-02 12:00:00 is before --start 2026-03-02 13:00:00"),
    (("--start", "yesterday"), "--start 'yesterday': not a time"),
    (("--prometheus", "ftp://x", "--start", "now-1h"),
     "url: must start with http:// or https://"),
    (("--prometheus", "http://x", "--start", "now-1h", "--username", "u"),
     "--username needs --password-file"),
    (("--step", "90"), "cannot replay"),
])
def test_bad_options_are_one_line_naming_the_option(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    if args and "--prometheus" not in args:
        args = ("--samples", str(_samples(tmp_path)), *args)
    code, _, err = _run(*args)
    assert code == 2, err
    assert message in err


def test_instants() -> None:
    now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    assert parse_instant("now-30d", now, "--start") == now - timedelta(days=30)
    assert parse_instant("now", now, "--end") == now
    assert parse_instant("1772452800", now, "--start") == now
    assert parse_instant("2026-03-02T13:00+01:00", now, "--start") == now
    assert parse_instant("2026-03-02", now, "--start") == now - timedelta(hours=12)
    with pytest.raises(InputError, match="--end 'later'"):
        parse_instant("later", now, "--end")


def test_json_to_stdout_is_the_whole_report_and_the_table_goes_to_stderr(
    tmp_path: Path,
) -> None:
    code, out, err = _run("--samples", str(_samples(tmp_path)), "--json", "-")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["timeline"][0]["windows"]["1h"]["burn_rate"]
    assert "SLOs at 2026-03-02 13:00:00 UTC" in err


def test_help_says_what_a_value_at_t_counts() -> None:
    result = runner.invoke(app, ["replay", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "What a value at time t counts" in text
    assert "(t - W, t], the minute in progress included" in text
    for option in ("--prometheus", "--start", "--end", "--parquet", "--csv", "--json",
                   "--bearer-token-file", "--ca-file"):
        assert option in text
