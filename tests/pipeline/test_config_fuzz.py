"""Fuzz the config loader: any YAML and any GPUSLO_* environment is a config or a ConfigError.

Seeds are a config that sets every section, and the deployment's own
configs; they are mutated as text (byte- and line-wise) and as trees (values
replaced, keys dropped or added), and overlaid with generated ``GPUSLO_*``
variables.  The promise: :func:`load_config` returns a validated config or
raises :class:`ConfigError` whose message starts with the file it read and
lists each problem with its path; nothing else escapes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from fuzzing import fuzz_settings, mutated_bytes, mutated_lines, mutated_tree, only_input_errors
from hypothesis import given
from hypothesis import strategies as st

from gpuslo.pipeline.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
FULL: dict[str, Any] = {
    "node": "node-1",
    "log_level": "INFO",
    "kafka": {
        "bootstrap_servers": "k1:9093,k2:9093", "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "gpuslo", "sasl_password": "pw",
        "ssl_cafile": "/etc/ca.pem", "partitions": 12, "replication_factor": 3,
        "topics": {"samples": "s", "sli": "l", "dlq": "d"},
    },
    "consumer": {"group_id": "g", "max_records": 100, "poll_timeout_ms": 500},
    "collectors": [
        {"type": "dcgm", "interval_s": 5, "timeout_s": 2,
         "targets": [{"url": "http://127.0.0.1:9400/metrics", "node": "n"}]},
        {"type": "kubelet", "url": "https://10.0.0.1:10250", "ca_file": "/ca.pem"},
        {"type": "kvcache", "discovery": {"mode": "sidecar", "ports": [8000]}},
        {"type": "storage", "diskstats": [{"path": "/proc/diskstats"}], "device_exclude": "^x"},
        {"type": "rdma", "sysfs": [{"path": "/sys"}], "devices": ["mlx5_0"]},
        {"type": "prometheus", "discovery": {"mode": "kubernetes", "url": "https://k:6443",
                                             "api": "apiserver"}},
    ],
    "slo": {"specs": ["slo/catalog"], "checkpoint_dir": "/var/lib/gpuslo", "tick_interval_s": 5},
    "alerts": {
        "alertmanager": {"urls": ["https://am:9093"], "bearer_token": "t",
                         "tls": {"ca_file": "/ca.pem"}, "resend_interval_s": 30},
        "receiver": {"host": "0.0.0.0", "port": 9095, "token": "r"},
    },
    "exporters": {"prometheus": {"host": "127.0.0.1", "port": 9464},
                  "otlp": {"enabled": True, "endpoint": "https://otel:4318",
                           "headers": {"api-key": "x"}}},
}
SEED_TEXTS = [
    yaml.safe_dump(FULL),
    (REPO / "deploy/kustomize/overlays/daemonset/config.yaml").read_text(),
    (REPO / "deploy/kustomize/components/sidecar/config.yaml").read_text(),
]
WORK = Path(tempfile.mkdtemp(prefix="gpuslo-fuzz-config-"))
CONFIG_FILE = WORK / "config.yaml"

_env_names = st.one_of(
    st.sampled_from([
        "GPUSLO_KAFKA__BOOTSTRAP_SERVERS", "GPUSLO_KAFKA__PARTITIONS", "GPUSLO_KAFKA__TOPICS",
        "GPUSLO_KAFKA__SASL_PASSWORD", "GPUSLO_COLLECTORS__0__INTERVAL_S",
        "GPUSLO_COLLECTORS__0__TARGETS__0__URL", "GPUSLO_COLLECTORS__7__TYPE",
        "GPUSLO_COLLECTORS__99999999", "GPUSLO_COLLECTORS__-1__TYPE", "GPUSLO_NODE",
        "GPUSLO_", "GPUSLO___", "GPUSLO_KAFKA", "GPUSLO_KAFKA____X", "GPUSLO_COLLECTORS",
        "GPUSLO_ALERTS__ALERTMANAGER__URLS__0", "GPUSLO_SLO__SPECS__0",
        "GPUSLO_NODE__X", "GPUSLO_KAFKA__TOPICS__SAMPLES__X",
    ]),
    st.from_regex(r"GPUSLO_[A-Z0-9_]{0,30}", fullmatch=True),
)
_env_values = st.one_of(
    st.sampled_from(["", "1", "-1", "true", "null", "[1, 2]", "{a: 1}", "- x", "k:9092", "{",
                     "9" * 30, "5m", "&a [*a]", "!!python/object:os.system x", "\x00"]),
    st.text(max_size=20),
)
ENVIRONS = st.dictionaries(_env_names, _env_values, max_size=4)


def check(text: str | bytes, environ: dict[str, str]) -> None:
    CONFIG_FILE.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "replace"))
    only_input_errors(lambda: load_config(CONFIG_FILE, environ=environ), ConfigError,
                      lambda m: m.startswith(f"{CONFIG_FILE}: "))


@fuzz_settings(120)
@given(mutated_bytes([t.encode() for t in SEED_TEXTS]), ENVIRONS)
def test_byte_mutated_configs_load_or_list_their_problems(text: bytes, env: dict[str, str]) -> None:
    check(text, env)


@fuzz_settings(120)
@given(mutated_lines(SEED_TEXTS), ENVIRONS)
def test_line_mutated_configs_load_or_list_their_problems(text: str, env: dict[str, str]) -> None:
    check(text, env)


@fuzz_settings(150)
@given(mutated_tree(FULL, [("kafka",), ("collectors", 0), ("collectors",), ("alerts",),
                           ("exporters", "otlp"), ("slo",)]), ENVIRONS)
def test_tree_mutated_configs_load_or_list_their_problems(tree: Any, env: dict[str, str]) -> None:
    check(yaml.safe_dump(tree, allow_unicode=True), env)


@fuzz_settings(100)
@given(ENVIRONS)
def test_the_environment_alone_loads_or_lists_its_problems(env: dict[str, str]) -> None:
    only_input_errors(lambda: load_config(None, environ=env), ConfigError,
                      lambda m: m.startswith("<defaults>: "))
