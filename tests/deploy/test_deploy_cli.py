"""Every command a manifest or the image runs is a real gpuslo invocation, and every config
a manifest mounts passes ``gpuslo validate`` with the environment the pod gives it.

Commands run through the installed ``gpuslo`` console script next to this interpreter,
as the container's entry point does.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path, PurePosixPath

import pytest
from deploy_render import (
    GPUSLO,
    KUSTOMIZE,
    REPO,
    Obj,
    Pod,
    all_renderings,
    config_arg,
    container_environ,
    gpuslo_containers,
    instructions,
    mounted_file,
    render,
)

from gpuslo.pipeline.app.cli.collect import HARD_STOP_MARGIN_S as COLLECT_HARD_STOP_MARGIN_S
from gpuslo.pipeline.app.cli.slo import HARD_STOP_MARGIN_S as AGGREGATE_HARD_STOP_MARGIN_S
from gpuslo.pipeline.config import (
    GpusloConfig,
    KubeletCollectorConfig,
    LocalSource,
    load_config,
)

RENDERINGS = all_renderings()
CONTAINERS = [(name, pod, c) for name, objs in RENDERINGS.items()
              for pod, c in gpuslo_containers(objs, name)]
IDS = [f"{pod.where}/{c['name']}" for _, pod, c in CONTAINERS]
SA_DIR = PurePosixPath("/var/run/secrets/kubernetes.io/serviceaccount")


def _entrypoint() -> list[str]:
    (ep,) = [json.loads(arg) for kw, arg in instructions() if kw == "ENTRYPOINT"]
    return list(ep)


def _argv(c: Obj) -> list[str]:
    """What the container runs: its command (else the image's ENTRYPOINT) and args."""
    return list(c.get("command") or _entrypoint()) + list(c.get("args") or [])


def _help(args: list[str]) -> subprocess.CompletedProcess[str]:
    """``gpuslo ARGS --help``: click parses ARGS first, so an unknown command or option
    fails with exit 2 instead of printing the help."""
    return subprocess.run([str(GPUSLO), *args, "--help"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})


def test_the_image_entrypoint_and_cmd_run() -> None:
    kws = dict(instructions())
    assert _entrypoint() == ["gpuslo"]
    cmd = json.loads(kws["CMD"])
    done = subprocess.run([str(GPUSLO), *cmd], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "collect" in done.stdout and "aggregate" in done.stdout


@pytest.mark.parametrize(("where", "pod", "c"), CONTAINERS, ids=IDS)
def test_container_invocation_is_a_real_cli_call(where: str, pod: Pod, c: Obj) -> None:
    argv = _argv(c)
    assert argv[0] == "gpuslo", f"{where}: runs {argv[0]!r}, not the gpuslo entry point"
    done = _help(argv[1:])
    assert done.returncode == 0, f"{where}: gpuslo {' '.join(argv[1:])}: {done.stderr}"
    assert f"Usage: gpuslo {argv[1]}" in done.stdout


def test_a_wrong_invocation_is_caught() -> None:
    """The check above can fail: an option the command lacks is an error, not help."""
    assert _help(["collect", "--configg", "x.yaml"]).returncode == 2
    assert _help(["colect", "--config", "x.yaml"]).returncode == 2


# ------------------------------------------------------------------ mounted configs


def _config(objs: tuple[Obj, ...], pod: Pod, c: Obj, tmp: Path,
            secrets: dict[str, dict[str, str]] | None = None
            ) -> tuple[Path, dict[str, str]]:
    path = tmp / "config.yaml"
    path.write_text(mounted_file(objs, pod, c, config_arg(c)))
    return path, container_environ(objs, c, secrets)


def _validate(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GPUSLO_")}
    return subprocess.run([str(GPUSLO), "validate", str(path)], capture_output=True,
                          text=True, timeout=120, env={**base, **env})


@pytest.mark.parametrize(("where", "pod", "c"), CONTAINERS, ids=IDS)
def test_mounted_config_passes_gpuslo_validate(where: str, pod: Pod, c: Obj,
                                               tmp_path: Path) -> None:
    path, env = _config(RENDERINGS[where], pod, c, tmp_path)
    done = _validate(path, env)
    assert done.returncode == 0, f"{where}: {done.stdout}{done.stderr}"


def test_validate_rejects_a_broken_mounted_config(tmp_path: Path) -> None:
    objs = render(KUSTOMIZE / "overlays" / "daemonset")
    ((pod, c),) = gpuslo_containers(objs)
    path, env = _config(objs, pod, c, tmp_path)
    env["GPUSLO_COLLECTORS__0__URL"] = "10.20.30.40:10250"  # no scheme
    done = _validate(path, env)
    assert done.returncode == 1 and "collectors[0].url" in done.stdout + done.stderr


def test_kafka_tls_and_sasl_as_the_readme_says(tmp_path: Path) -> None:
    """kafka.env switched to SASL_SSL plus the credentials Secret: a valid config."""
    objs = render(KUSTOMIZE / "overlays" / "aggregator")
    ((pod, c),) = gpuslo_containers(objs)
    secret = {"gpuslo-kafka-credentials": {"GPUSLO_KAFKA__SASL_USERNAME": "gpuslo",
                                           "GPUSLO_KAFKA__SASL_PASSWORD": "s3cret"}}
    path, env = _config(objs, pod, c, tmp_path, secret)
    env.update({"GPUSLO_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
                "GPUSLO_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
                "GPUSLO_KAFKA__SSL_CAFILE": "/etc/gpuslo/kafka-ca/ca.crt"})
    assert _validate(path, env).returncode == 0
    cfg = load_config(path, env)
    assert cfg.kafka.sasl_password is not None
    assert cfg.kafka.sasl_password.get_secret_value() == "s3cret"
    assert _mount_of(c, str(cfg.kafka.ssl_cafile)) is not None
    # Without the Secret the same settings are refused, naming what is missing.
    path, env2 = _config(objs, pod, c, tmp_path)
    env2.update({k: v for k, v in env.items() if k.startswith("GPUSLO_KAFKA__S")
                 and "SASL_USERNAME" not in k and "SASL_PASSWORD" not in k})
    done = _validate(path, env2)
    assert done.returncode == 1 and "sasl_password" in done.stdout + done.stderr


# ------------------------------------------------------------------ paths in the configs


def _mount_of(c: Obj, path: str) -> Obj | None:
    p = PurePosixPath(path)
    for m in c.get("volumeMounts") or []:
        if p == PurePosixPath(m["mountPath"]) or PurePosixPath(m["mountPath"]) in p.parents:
            return dict(m)
    return None


def _image_paths() -> set[PurePosixPath]:
    """Paths the image provides: the catalog link the Dockerfile makes."""
    out = set()
    for kw, arg in instructions():
        if kw != "RUN":
            continue
        words = shlex.split(arg)
        for i in range(len(words) - 3):
            if words[i : i + 2] == ["ln", "-s"]:
                out.add(PurePosixPath(words[i + 3]))  # ln -s TARGET LINK
    return out


def _files_read(cfg: GpusloConfig) -> list[str]:
    out: list[str] = []
    for col in cfg.collectors:
        d = col.discovery
        if d is not None:
            out += [str(p) for p in (d.token_file, d.ca_file) if p is not None]
        if isinstance(col, KubeletCollectorConfig):
            out += [str(p) for p in (col.token_file, col.ca_file) if p is not None]
        sources: list[LocalSource] = []
        if col.type == "rdma":
            sources = col.sysfs_sources()
        elif col.type == "storage":
            sources = col.diskstats_sources()
        out += [str(s.path) for s in sources]
    if cfg.kafka.ssl_cafile is not None:
        out.append(str(cfg.kafka.ssl_cafile))
    return out


@pytest.mark.parametrize(("where", "pod", "c"), CONTAINERS, ids=IDS)
def test_every_path_a_config_reads_is_in_the_pod(where: str, pod: Pod, c: Obj,
                                                 tmp_path: Path) -> None:
    """Files the config reads are mounted (or the service-account token, which only the
    collector gets); the checkpoint directory is on a writable volume; the SLO specs are
    in the image."""
    path, env = _config(RENDERINGS[where], pod, c, tmp_path)
    cfg = load_config(path, env)
    for f in _files_read(cfg):
        if PurePosixPath(f).parent == SA_DIR:
            assert pod.spec.get("automountServiceAccountToken") is not False, f
            continue
        assert _mount_of(c, f) is not None, f"{where}: {f} is not mounted"
    if "aggregate" in _argv(c):
        state = _mount_of(c, str(cfg.slo.checkpoint_dir))
        assert state is not None and not state.get("readOnly"), cfg.slo.checkpoint_dir
        images = _image_paths()
        assert cfg.slo.specs and all(PurePosixPath(str(s)) in images for s in cfg.slo.specs)


def test_per_node_settings_come_from_the_downward_api(tmp_path: Path) -> None:
    objs = render(KUSTOMIZE / "overlays" / "daemonset")
    ((pod, c),) = gpuslo_containers(objs)
    path, env = _config(objs, pod, c, tmp_path)
    cfg = load_config(path, env)
    assert cfg.node == "gpu-node-17"  # spec.nodeName
    kubelet = cfg.collectors[0]
    assert isinstance(kubelet, KubeletCollectorConfig)
    assert kubelet.url == "https://10.20.30.40:10250"  # status.hostIP
    assert str(kubelet.ca_file) == str(SA_DIR / "ca.crt")
    sources = {col.type for col in cfg.collectors}
    assert sources == {"kubelet", "dcgm", "kvcache", "prometheus", "rdma", "storage"}
    for col in cfg.collectors:
        if col.discovery is not None:
            assert col.discovery.node_name in (None, cfg.node)


def test_sidecar_names_its_replica(tmp_path: Path) -> None:
    objs = render(KUSTOMIZE / "overlays" / "sidecar")
    ((pod, c),) = gpuslo_containers(objs)
    path, env = _config(objs, pod, c, tmp_path)
    cfg = load_config(path, env)
    (col,) = cfg.collectors
    (target,) = col.targets
    assert target.url.startswith("http://127.0.0.1:")
    assert target.replica == "ns-under-test/pod-0"
    engine_ports = {p["containerPort"] for ct in pod.spec["containers"]
                    for p in ct.get("ports") or []}
    assert int(target.url.split(":")[2].split("/")[0]) in engine_ports


def test_metrics_port_is_the_probed_port(tmp_path: Path) -> None:
    """/metrics, /healthz and /readyz share exporters.prometheus.port: the probes and the
    Service must use that port."""
    for where, pod, c in CONTAINERS:
        path, env = _config(RENDERINGS[where], pod, c, tmp_path)
        cfg = load_config(path, env)
        assert cfg.exporters.prometheus.enabled and cfg.exporters.prometheus.host == "0.0.0.0"
        port = next(p for p in c["ports"] if p["name"] == "gpuslo-metrics")
        assert port["containerPort"] == cfg.exporters.prometheus.port
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_the_drain_fits_in_the_pods_grace_period(tmp_path: Path) -> None:
    """SIGTERM drains within the config's shutdown limits (and the command's hard stop a
    little after them): that must end before the kubelet's SIGKILL."""
    for where, pod, c in CONTAINERS:
        path, env = _config(RENDERINGS[where], pod, c, tmp_path)
        cfg = load_config(path, env)
        mode = _argv(c)[1]
        hard_stop = {"collect": cfg.shutdown.collect_grace_s + COLLECT_HARD_STOP_MARGIN_S,
                     "aggregate": cfg.shutdown.aggregate_grace_s + AGGREGATE_HARD_STOP_MARGIN_S}
        grace = pod.spec.get("terminationGracePeriodSeconds", 30)
        assert hard_stop[mode] < grace, (where, mode, hard_stop[mode], grace)


def test_catalog_in_the_image_is_valid() -> None:
    done = subprocess.run([str(GPUSLO), "validate-specs", str(REPO / "slo" / "catalog")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
