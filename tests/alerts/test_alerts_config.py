"""The alerts/exporters config sections: defaults, env overrides, secrets, every problem at once."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from gpuslo.pipeline.app.cli.main import app
from gpuslo.pipeline.config import ConfigError, load_config


def test_defaults_follow_the_alertmanager_contract() -> None:
    cfg = load_config(environ={})
    am = cfg.alerts.alertmanager
    assert am.urls == [] and am.resend_interval_s == 60 and am.resolved_retention_s >= 300
    assert cfg.exporters.prometheus.enabled and not cfg.exporters.prometheus.sloth_compat
    assert not cfg.exporters.otlp.enabled and cfg.exporters.otlp.interval_s == 60


def test_secrets_come_from_the_environment_and_are_never_printed() -> None:
    cfg = load_config(environ={
        "GPUSLO_ALERTS__ALERTMANAGER__URLS": '["https://am-0:9093"]',
        "GPUSLO_ALERTS__ALERTMANAGER__BEARER_TOKEN": "am-secret",
        "GPUSLO_ALERTS__RECEIVER__TOKEN": "rx-secret",
    })
    assert cfg.alerts.alertmanager.bearer_token is not None
    assert cfg.alerts.alertmanager.bearer_token.get_secret_value() == "am-secret"
    assert "am-secret" not in repr(cfg) and "rx-secret" not in repr(cfg)


def test_every_problem_is_listed_with_its_path() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(environ={
            "GPUSLO_ALERTS__ALERTMANAGER__URLS": '["am-0:9093"]',
            "GPUSLO_ALERTS__ALERTMANAGER__RESOLVED_RETENTION_S": "60",
            "GPUSLO_EXPORTERS__OTLP__INTERVAL_S": "0",
            "GPUSLO_EXPORTERS__PROMETHEUS__SLOTH": "true",
        })
    text = "\n".join(exc.value.problems)
    assert "alerts.alertmanager.urls[0]" in text
    assert "alerts.alertmanager.resolved_retention_s: must be >= 300" in text
    assert "exporters.otlp.interval_s: must be > 0" in text
    assert "exporters.prometheus.sloth: unknown field" in text


def test_the_receiver_command_needs_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPUSLO_ALERTS__RECEIVER__TOKEN", raising=False)
    result = CliRunner().invoke(app, ["receiver", "--duration", "0.1"])
    assert result.exit_code == 2
    assert "token_file is required" in result.output


def test_the_receiver_command_serves_until_the_duration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUSLO_ALERTS__RECEIVER__TOKEN", "t")
    monkeypatch.setenv("GPUSLO_ALERTS__RECEIVER__PORT", "0")
    result = CliRunner().invoke(app, ["receiver", "--duration", "0.2"])
    assert result.exit_code == 0, result.output
    assert "receiving Alertmanager webhooks on http://127.0.0.1:" in result.output
