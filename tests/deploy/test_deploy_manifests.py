"""The rendered manifests: they render, validate strictly, reference what exists, are locked down.

Everything is read from ``kubectl kustomize`` output (deploy_render), for every overlay,
every other applicable kustomization, and the optional components on top of an overlay.
"""

from __future__ import annotations

import copy
import tomllib
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deploy_render import (
    KUSTOMIZE,
    REPO,
    Obj,
    Pod,
    all_renderings,
    config_arg,
    container_environ,
    find,
    gpuslo_containers,
    is_gpuslo,
    mounted_file,
    one,
    overlay_dirs,
    pods,
    render,
)

from gpuslo.pipeline.config import KUBELET_ENDPOINTS, KafkaConfig, TopicsConfig, load_config

K8S_VERSION = kubernetes_validate.latest_version()
# API groups of custom resources; anything else must be a built-in kind with a schema.
CUSTOM_GROUPS = frozenset({"monitoring.coreos.com", "kafka.strimzi.io"})

RENDERINGS = all_renderings()
ALL = [(name, o) for name, objs in RENDERINGS.items() for o in objs]
ALL_PODS = [p for name, objs in RENDERINGS.items() for p in pods(objs, name)]


def _id(o: Obj) -> str:
    return f"{o['kind']}/{o['metadata']['name']}"


def _group(o: Obj) -> str:
    api = o["apiVersion"]
    return api.split("/")[0] if "/" in api else ""


def test_every_overlay_renders() -> None:
    overlays = overlay_dirs()
    assert {d.name for d in overlays} >= {"daemonset", "sidecar", "aggregator"}
    for d in overlays:
        objs = render(d)
        assert any(o["kind"] in ("DaemonSet", "StatefulSet", "Deployment") for o in objs), d


@pytest.mark.parametrize(("where", "obj"),
                         [(n, o) for n, o in ALL if _group(o) not in CUSTOM_GROUPS],
                         ids=lambda v: v if isinstance(v, str) else _id(v))
def test_builtin_resource_validates_strictly(where: str, obj: Obj) -> None:
    """Every built-in object against the current Kubernetes schema, unknown fields rejected."""
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_strict_validation_rejects_a_misspelt_field() -> None:
    ds = copy.deepcopy(one(render(KUSTOMIZE / "overlays" / "daemonset"), "DaemonSet"))
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"][
        "readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSION, strict=True)


def test_only_known_custom_resources() -> None:
    custom = {(_group(o), o["kind"]) for _, o in ALL if _group(o) in CUSTOM_GROUPS}
    assert custom == {("monitoring.coreos.com", "ServiceMonitor"),
                      ("monitoring.coreos.com", "PrometheusRule"),
                      ("kafka.strimzi.io", "KafkaTopic")}


# ------------------------------------------------------------------ references resolve


def _volume_refs(pod: Pod) -> list[tuple[str, str, bool]]:
    out = []
    for v in pod.spec.get("volumes") or []:
        if "configMap" in v:
            out.append(("ConfigMap", v["configMap"]["name"], bool(v["configMap"].get("optional"))))
        if "secret" in v:
            out.append(("Secret", v["secret"]["secretName"], bool(v["secret"].get("optional"))))
        if "persistentVolumeClaim" in v:
            out.append(("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"], False))
    return out


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_every_reference_resolves(name: str) -> None:
    """ConfigMaps, Secrets, claims, accounts, classes and ports that a pod names exist.

    Secrets are created by the user (credentials), so they must be optional.
    """
    objs = RENDERINGS[name]
    for pod in pods(objs, name):
        refs = _volume_refs(pod)
        for c in pod.containers():
            for src in c.get("envFrom") or []:
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if key in src:
                        refs.append((kind, src[key]["name"], bool(src[key].get("optional"))))
        claim_templates = {t["metadata"]["name"]
                           for t in pod.owner["spec"].get("volumeClaimTemplates") or []}
        for kind, ref, optional in refs:
            if kind == "Secret":
                assert optional, f"{pod.where}: Secret {ref} must be optional (user-created)"
            else:
                assert find(objs, kind, ref) or optional, f"{pod.where}: {kind} {ref} missing"
        volumes = {v["name"] for v in pod.spec.get("volumes") or []} | claim_templates
        for c in pod.containers():
            for m in c.get("volumeMounts") or []:
                assert m["name"] in volumes, f"{pod.where}: mount of unknown volume {m['name']}"
            ports = {p["name"] for p in c.get("ports") or [] if "name" in p}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                if isinstance(port, str):
                    assert port in ports, f"{pod.where}: {probe} on unknown port {port}"
        sa = pod.spec.get("serviceAccountName")
        if sa:
            assert find(objs, "ServiceAccount", sa), f"{pod.where}: no ServiceAccount {sa}"
        pc = pod.spec.get("priorityClassName")
        if pc and not pc.startswith("system-"):
            assert find(objs, "PriorityClass", pc), f"{pod.where}: no PriorityClass {pc}"


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_services_select_pods_and_ports(name: str) -> None:
    objs = RENDERINGS[name]
    for svc in find(objs, "Service"):
        sel = svc["spec"]["selector"]
        matched = [p for p in pods(objs, name) if all(p.labels.get(k) == v for k, v in sel.items())]
        assert matched, f"{name}: Service {svc['metadata']['name']} selects no pod template"
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if isinstance(target, str):
                for p in matched:
                    names = {cp.get("name") for c in p.containers() for cp in c.get("ports") or []}
                    assert target in names, f"{name}: {p.where} has no port {target}"


# ------------------------------------------------------------------ security context


def _effective(pod: Pod, c: Obj, key: str) -> Any:
    """A container's security setting, falling back to the pod's (as Kubernetes does)."""
    sc = c.get("securityContext") or {}
    if key in sc:
        return sc[key]
    return (pod.spec.get("securityContext") or {}).get(key)


@pytest.mark.parametrize("pod", ALL_PODS, ids=lambda p: p.where)
def test_security_context_everywhere(pod: Pod) -> None:
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.spec.get(flag), f"{pod.where}: {flag}"
    for c in pod.containers():
        who = f"{pod.where}/{c['name']}"
        sc = c.get("securityContext") or {}
        assert _effective(pod, c, "runAsNonRoot") is True, who
        uid = _effective(pod, c, "runAsUser")
        assert uid is not None and uid != 0, f"{who}: needs a numeric non-root runAsUser"
        assert sc.get("readOnlyRootFilesystem") is True, who
        assert sc.get("allowPrivilegeEscalation") is False, who
        assert sc.get("privileged") in (None, False), who
        caps = sc.get("capabilities") or {}
        assert caps.get("drop") == ["ALL"] and not caps.get("add"), f"{who}: capabilities {caps}"
        seccomp = _effective(pod, c, "seccompProfile") or {}
        assert seccomp.get("type") == "RuntimeDefault", f"{who}: seccomp {seccomp}"


@pytest.mark.parametrize("pod", ALL_PODS, ids=lambda p: p.where)
def test_host_paths_only_read_only_in_the_collector(pod: Pod) -> None:
    host = {v["name"]: v["hostPath"]["path"] for v in pod.spec.get("volumes") or []
            if "hostPath" in v}
    if pod.owner["kind"] != "DaemonSet":
        assert not host, f"{pod.where}: hostPath only in the node collector"
        return
    assert sorted(host.values()) == ["/proc", "/sys"]
    for c in pod.containers():
        for m in c.get("volumeMounts") or []:
            if m["name"] in host:
                assert m.get("readOnly") is True, f"{pod.where}: {m['mountPath']} writable"


@pytest.mark.parametrize("pod", ALL_PODS, ids=lambda p: p.where)
def test_only_the_collector_gets_an_api_token(pod: Pod) -> None:
    """The collector talks to the kubelet and API server; nothing else needs a token."""
    if pod.owner["kind"] == "DaemonSet":
        assert pod.spec.get("automountServiceAccountToken") is not False
    else:
        assert pod.spec.get("automountServiceAccountToken") is False, pod.where


# ------------------------------------------------------------------ RBAC

RBAC_KINDS = ("Role", "ClusterRole")


def test_rbac_least_privilege() -> None:
    roles = [(n, o) for n, o in ALL if o["kind"] in RBAC_KINDS]
    assert roles, "the collector needs a ClusterRole"
    for where, role in roles:
        for rule in role.get("rules") or []:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in (rule.get(field) or []), f"{where}: wildcard in {field}"
            assert "nodes/proxy" not in rule.get("resources", []), f"{where}: nodes/proxy"
            assert "nonResourceURLs" not in rule, f"{where}: non-resource URLs"
    granted = {(res, verb) for _, role in roles for rule in role["rules"]
               for res in rule["resources"] for verb in rule["verbs"]}
    assert granted == {("nodes/metrics", "get"), ("nodes/stats", "get"),
                       ("pods", "list"), ("pods", "watch")}


def test_rbac_covers_what_the_collector_config_reads(tmp_path: Any) -> None:
    """Each kubelet endpoint and discovery mode in the DaemonSet's config is granted, and
    none needs nodes/proxy (the kubelet's /pods)."""
    objs = render(KUSTOMIZE / "overlays" / "daemonset")
    (pod, c), = gpuslo_containers(objs)
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(mounted_file(objs, pod, c, config_arg(c)))
    cfg = load_config(cfg_file, container_environ(objs, c))
    role = one(objs, "ClusterRole")
    granted = {(res, verb) for rule in role["rules"] for res in rule["resources"]
               for verb in rule["verbs"]}
    binding = one(objs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert {"kind": "ServiceAccount", "name": pod.spec["serviceAccountName"],
            "namespace": pod.owner["metadata"]["namespace"]} in binding["subjects"]
    needed: set[tuple[str, str]] = set()
    for col in cfg.collectors:
        if col.type == "kubelet":
            for url, _ in col.endpoint_urls():
                path = next(p for p in KUBELET_ENDPOINTS.values() if url.endswith(p))
                needed.add(("nodes/stats" if path.startswith("/stats") else "nodes/metrics",
                            "get"))
        if col.discovery is not None and col.discovery.mode == "kubernetes":
            assert col.discovery.api == "apiserver", "the kubelet's /pods needs nodes/proxy"
            needed.add(("pods", "list"))
    assert needed and needed <= granted


# ------------------------------------------------------------------ the workloads


def test_daemonset_runs_on_every_gpu_node() -> None:
    objs = render(KUSTOMIZE / "overlays" / "daemonset")
    ds = one(objs, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    tolerations = spec["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    assert {"operator": "Exists", "effect": "NoSchedule"} in tolerations
    assert one(objs, "PriorityClass", spec["priorityClassName"])["value"] > 0
    (c,) = spec["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/host/sys"]["readOnly"] and mounts["/host/proc"]["readOnly"]


# `python benchmarks/bench_collect.py --config daemonset|sources --node node-5 --interval 1`
# on the simulated node: RSS 234 MiB at most (VmHWM), CPU 25m mean and 120m at most per
# second (215m before the reader layouts; kept as the bound for the CPU limit).  The
# requests and limits must leave room above those (docs: README "Deploy").
MEASURED_RSS_MIB = 234
MEASURED_CPU_PEAK_M = 215


def _mib(q: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    for u, f in units.items():
        if q.endswith(u):
            return float(q[: -len(u)]) * f
    return float(q) / 2**20


def _millicores(q: str) -> float:
    return float(q[:-1]) if q.endswith("m") else float(q) * 1000


@pytest.mark.parametrize("overlay", ["daemonset", "sidecar"])
def test_collector_resources_cover_the_measured_figures(overlay: str) -> None:
    (_, c), = gpuslo_containers(render(KUSTOMIZE / "overlays" / overlay))
    res = c["resources"]
    assert _mib(res["requests"]["memory"]) >= 1.2 * MEASURED_RSS_MIB
    assert _mib(res["limits"]["memory"]) >= 2 * MEASURED_RSS_MIB
    assert _millicores(res["limits"]["cpu"]) >= 2 * MEASURED_CPU_PEAK_M
    assert _millicores(res["requests"]["cpu"]) > 0


def test_aggregator_statefulset_shares_groups_and_keeps_state() -> None:
    objs = render(KUSTOMIZE / "overlays" / "aggregator")
    sts = one(objs, "StatefulSet")
    pdb = one(objs, "PodDisruptionBudget")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    state = next(m for m in c["volumeMounts"] if m["name"] == "state")
    assert not state.get("readOnly")
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["state"]
    # Scaled out: one ReadWriteMany claim shared by every replica, no claim per replica.
    scaled = render(KUSTOMIZE / "overlays" / "aggregator-scaled")
    sts2 = one(scaled, "StatefulSet")
    assert sts2["spec"]["replicas"] > 1 and "volumeClaimTemplates" not in sts2["spec"]
    vol = next(v for v in sts2["spec"]["template"]["spec"]["volumes"] if v["name"] == "state")
    pvc = one(scaled, "PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["namespace"] == sts2["metadata"]["namespace"]


def test_sidecar_is_a_native_sidecar_scraping_localhost() -> None:
    objs = render(KUSTOMIZE / "overlays" / "sidecar")
    dep = one(objs, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    (side,) = [c for c in spec["initContainers"] if is_gpuslo(c)]
    assert side["restartPolicy"] == "Always"
    assert not any(is_gpuslo(c) for c in spec["containers"])
    svc = one(objs, "Service")
    assert "gpuslo-metrics" in {p["name"] for p in svc["spec"]["ports"]}


def test_one_image_everywhere_tagged_with_the_project_version() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    images = {c["image"] for objs in RENDERINGS.values() for _, c in gpuslo_containers(objs)}
    assert images == {f"gpuslo:{version}"}


# ------------------------------------------------------------------ Strimzi topics


def test_strimzi_topics_match_the_config_defaults() -> None:
    topics = find(render(KUSTOMIZE / "strimzi-topics"), "KafkaTopic")
    defaults, kafka = TopicsConfig(), KafkaConfig()
    by_name = {t["spec"]["topicName"]: t for t in topics}
    assert set(by_name) == {defaults.samples, defaults.sli, defaults.dlq, defaults.digests}
    for t in topics:
        assert t["spec"]["partitions"] == kafka.partitions
        assert int(t["spec"]["config"]["max.message.bytes"]) > kafka.max_record_bytes
        assert t["metadata"]["labels"]["strimzi.io/cluster"]


def test_kafka_env_keys_are_config_fields() -> None:
    """Every GPUSLO_KAFKA__* line (and commented example) names a KafkaConfig field."""
    fields = set(KafkaConfig.model_fields)
    for line in (KUSTOMIZE / "base" / "kafka.env").read_text().splitlines():
        line = line.removeprefix("# ").strip()
        if line.startswith("GPUSLO_KAFKA__") and "=" in line:
            key = line.split("=", 1)[0].removeprefix("GPUSLO_KAFKA__").lower()
            assert key in fields, line


def test_namespace_allows_the_collector() -> None:
    ns = one(render(KUSTOMIZE / "namespace"), "Namespace")
    overlays = {yaml.safe_load((d / "kustomization.yaml").read_text()).get("namespace")
                for d in overlay_dirs()}
    assert ns["metadata"]["name"] in overlays
    # hostPath is forbidden by the baseline and restricted Pod Security levels.
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
