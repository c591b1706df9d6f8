"""Config loading: every problem at once, with its path; environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuslo.pipeline.config import ConfigError, load_config

GOOD = """
node: gpu-node-1
kafka:
  bootstrap_servers: kafka-0:9092,kafka-1:9092
  enable_idempotence: true
  replication_factor: 3
collectors:
  - type: prometheus
    name: dcgm
    source: dcgm
    interval_s: 15
    timeout_s: 5
    targets:
      - url: http://127.0.0.1:9400/metrics
"""

THREE_MISTAKES = """
kafka:
  partitions: 0
collectors:
  - type: prometheus
    targets: [{url: "http://a/metrics"}]
  - type: prometheus
    targets: [{url: "http://b/metrics"}]
  - type: prometheus
    interval_s: -1
    targets: [{url: "ftp://c/metrics"}]
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "gpuslo.yaml"
    p.write_text(text)
    return p


def test_good_file_loads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), environ={})
    assert cfg.node == "gpu-node-1"
    assert cfg.kafka.enable_idempotence is True
    assert cfg.collectors[0].targets[0].url == "http://127.0.0.1:9400/metrics"


def test_three_mistakes_are_all_reported_with_their_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, THREE_MISTAKES), environ={})
    problems = info.value.problems
    assert len(problems) == 3, problems
    assert "kafka.partitions: must be > 0" in problems
    assert "collectors[2].interval_s: must be > 0" in problems
    assert any(p.startswith("collectors[2].targets[0].url:") for p in problems)


def test_unknown_field_and_unknown_collector_type_are_named(tmp_path: Path) -> None:
    text = "kafak: {}\ncollectors:\n  - type: nosuch\n"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    joined = "\n".join(info.value.problems)
    assert "kafak: unknown field" in joined
    assert "collectors[0]" in joined and "nosuch" in joined


def test_environment_overrides_nested_fields(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, GOOD),
        environ={
            "GPUSLO_KAFKA__BOOTSTRAP_SERVERS": "other:9093",
            "GPUSLO_KAFKA__ENABLE_IDEMPOTENCE": "false",
            "GPUSLO_COLLECTORS__0__INTERVAL_S": "30",
            "UNRELATED": "x",
        },
    )
    assert cfg.kafka.bootstrap_servers == "other:9093"
    assert cfg.kafka.enable_idempotence is False
    assert cfg.collectors[0].interval_s == 30


def test_bad_environment_value_is_reported_like_a_file_mistake(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"kafka\.partitions: must be > 0"):
        load_config(write(tmp_path, GOOD), environ={"GPUSLO_KAFKA__PARTITIONS": "0"})


@pytest.mark.parametrize(
    ("text", "message"),
    [("a: [unclosed", "not valid YAML"), ("- just\n- a list\n", "top level must be a mapping")],
)
def test_unreadable_yaml_is_a_config_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), environ={})


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    # Fuzz finding: a UnicodeDecodeError escaped load_config.
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\x80lerts: {}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: 1 problem.*\n  not UTF-8 text: invalid start "
                                          r"byte at byte 0"):
        load_config(path, environ={})


@pytest.mark.parametrize(("env", "problem"), [
    # Fuzz finding: this variable made a list of 10^8 empty mappings (minutes, gigabytes).
    ({"GPUSLO_COLLECTORS__99999999": "x"},
     "GPUSLO_COLLECTORS__99999999: list index 99999999 is too large (at most 1023)"),
    # Fuzz finding: "invalid literal for int() with base 10: 'x'" escaped (a ValueError
    # naming no variable).
    ({"GPUSLO_KAFKA": "[1]", "GPUSLO_KAFKA__X": "1"},
     "GPUSLO_KAFKA__X: 'x' is not a list index (a number)"),
])
def test_an_environment_variable_naming_no_usable_place_is_named(
    env: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ=env)
    assert info.value.problems == [problem]


def test_a_variable_below_a_list_item_that_is_a_scalar_replaces_it() -> None:
    # Fuzz finding: TypeError "'str' object does not support item assignment" escaped.
    with pytest.raises(ConfigError, match=r"alerts\.alertmanager\.urls\[0\]: Input should be a "
                                          "valid string"):
        load_config(None, environ={"GPUSLO_ALERTS__ALERTMANAGER__URLS__0": "http://a",
                                   "GPUSLO_ALERTS__ALERTMANAGER__URLS__0__X": "1"})


def test_a_yaml_error_names_line_and_column_but_never_quotes_the_line(tmp_path: Path) -> None:
    # Found by the secrets test: PyYAML's message quoted the offending line, here the
    # password, into the error every command prints.
    path = tmp_path / "c.yaml"
    path.write_text('kafka:\n  sasl_password: "hunter2-pw\n  partitions: 2\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.problems == [
        "not valid YAML: while scanning a quoted scalar (line 2, column 18), found unexpected "
        "end of stream (line 4, column 1)"]
    assert "hunter2-pw" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
