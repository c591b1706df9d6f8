"""Where scrape targets come from: a static list, the pods on this node, or localhost.

Three modes, one shape (:class:`~gpuslo.collectors.scrape.engine.TargetSource`):

* **static**: the config's list, as written.
* **kubernetes node-local** (the DaemonSet): the pods scheduled on *this* node,
  read from the kubelet's ``/pods`` (no API-server load, works when the
  control plane is down) or from the API server's
  ``/api/v1/pods?fieldSelector=spec.nodeName=<node>``.  A pod opts in with
  annotations::

      gpuslo.io/scrape: "true"
      gpuslo.io/port: "8000"          # default: the first declared containerPort
      gpuslo.io/path: "/metrics"      # default /metrics
      gpuslo.io/source: "kvcache"     # which collector scrapes it; default "prometheus"
      gpuslo.io/scheme: "http"        # default http

  Only running pods with an IP are targets; the replica name is
  ``<namespace>/<pod>`` so two replicas of one model stay apart.  A failed
  lookup keeps the last known targets: a kubelet restart must not look like
  every workload vanishing.
* **sidecar**: localhost ports next to an inference server in the same pod.

:func:`targets_from_pods` is pure (JSON in, targets out) so the opt-in rules
are tested without a cluster.
"""

from __future__ import annotations

import logging
import ssl
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from gpuslo.collectors.base import ScrapeTarget
from gpuslo.collectors.scrape.engine import TargetSource
from gpuslo.pipeline.auth import BearerAuth, BearerTokenFile, tls_context
from gpuslo.pipeline.config import DiscoveryConfig, ScrapeCollectorConfig

log = logging.getLogger(__name__)

ANNOTATION_PREFIX = "gpuslo.io/"
SCRAPE = ANNOTATION_PREFIX + "scrape"
PORT = ANNOTATION_PREFIX + "port"
PATH = ANNOTATION_PREFIX + "path"
SOURCE = ANNOTATION_PREFIX + "source"
SCHEME = ANNOTATION_PREFIX + "scheme"
DEFAULT_SOURCE = "prometheus"
_TRUE = frozenset({"true", "1", "yes"})


class StaticTargets:
    """A fixed list (the config's ``targets:``)."""

    refresh_s = 3600.0

    def __init__(self, targets: Iterable[ScrapeTarget]) -> None:
        self._targets = list(targets)

    async def targets(self) -> list[ScrapeTarget]:
        return list(self._targets)


def sidecar_targets(
    node: str, ports: Sequence[int], *, path: str = "/metrics", host: str = "127.0.0.1",
    replica: str | None = None,
) -> list[ScrapeTarget]:
    """Targets on localhost, for an agent running as a sidecar next to an inference server."""
    if not path.startswith("/"):
        path = "/" + path
    return [ScrapeTarget(f"http://{host}:{p}{path}", node, replica=replica) for p in ports]


def _first_port(pod: Mapping[str, Any]) -> int | None:
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            port = p.get("containerPort")
            if isinstance(port, int):
                return port
    return None


def targets_from_pods(
    doc: Mapping[str, Any], *, source: str, node: str,
) -> list[ScrapeTarget]:
    """Opted-in pods of one node in a PodList document -> targets for ``source``.

    Pods on another node (an API answer without the field selector), not
    running, without an IP, or with an unusable port annotation are skipped;
    the last case is logged because it is an operator's mistake.
    """
    out: list[ScrapeTarget] = []
    for pod in doc.get("items") or []:
        meta = pod.get("metadata") or {}
        ann: Mapping[str, str] = meta.get("annotations") or {}
        if str(ann.get(SCRAPE, "")).lower() not in _TRUE:
            continue
        if ann.get(SOURCE, DEFAULT_SOURCE) != source:
            continue
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        pod_node = spec.get("nodeName")
        if pod_node and pod_node != node:
            continue
        ip = status.get("podIP")
        if status.get("phase") != "Running" or not ip:
            continue
        name, namespace = meta.get("name", ""), meta.get("namespace", "default")
        raw_port = ann.get(PORT)
        port: int | None
        try:
            port = int(raw_port) if raw_port is not None else _first_port(pod)
        except ValueError:
            port = None
        if port is None or not 0 < port < 65536:
            log.warning("pod %s/%s: no usable %s (%r); not scraped", namespace, name, PORT,
                        raw_port)
            continue
        path = ann.get(PATH, "/metrics")
        if not path.startswith("/"):
            path = "/" + path
        scheme = ann.get(SCHEME, "http")
        host = f"[{ip}]" if ":" in ip else ip
        out.append(ScrapeTarget(
            f"{scheme}://{host}:{port}{path}", node, replica=f"{namespace}/{name}",
            meta=(("namespace", namespace), ("pod", name)),
        ))
    return sorted(out, key=lambda t: t.url)


def pods_url(base: str, node: str, api: Literal["kubelet", "apiserver"]) -> str:
    """The pod list URL: the kubelet's ``/pods``, or the API server filtered to ``node``."""
    base = base.rstrip("/")
    if api == "kubelet":
        return base + "/pods"
    selector = urllib.parse.quote(f"spec.nodeName={node}", safe="")
    return f"{base}/api/v1/pods?fieldSelector={selector}"


@dataclass
class KubernetesPods:
    """Node-local discovery from the kubelet's ``/pods`` or the API server.

    Attributes:
        base_url: ``https://<node-ip>:10250`` (kubelet) or ``https://kubernetes.default.svc``.
        headers: called before each request (the bearer token, re-read when it rotates).
        redact: applied to error messages (the token must never reach a log).
    """

    base_url: str
    node: str
    source: str
    api: Literal["kubelet", "apiserver"] = "kubelet"
    refresh_s: float = 30.0
    timeout_s: float = 10.0
    ssl_context: ssl.SSLContext | None = None
    headers: Callable[[], Mapping[str, str]] = dict
    redact: Callable[[str], str] = lambda s: s
    last: list[ScrapeTarget] = field(default_factory=list)
    failures: int = 0

    @property
    def url(self) -> str:
        return pods_url(self.base_url, self.node, self.api)

    async def targets(self) -> list[ScrapeTarget]:
        """This node's opted-in pods now; the last known list if the lookup fails."""
        try:
            async with aiohttp.ClientSession() as session, session.get(
                self.url, headers=dict(self.headers()),
                ssl=self.ssl_context if self.ssl_context is not None else True,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            ) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
                doc = await resp.json(content_type=None)
            if not isinstance(doc, dict):
                raise RuntimeError("pod list is not a JSON object")
            self.last = targets_from_pods(doc, source=self.source, node=self.node)
        except Exception as exc:  # keep scraping what we knew
            self.failures += 1
            log.warning("pod discovery from %s failed (%s); keeping %d known target(s)",
                        self.url, self.redact(f"{type(exc).__name__}: {exc}"), len(self.last))
        return list(self.last)


class CombinedTargets:
    """The union of several sources (the config's list plus discovery)."""

    def __init__(self, sources: Sequence[TargetSource]) -> None:
        self._sources = list(sources)
        self.refresh_s = min((s.refresh_s for s in self._sources), default=3600.0)

    async def targets(self) -> list[ScrapeTarget]:
        out: dict[str, ScrapeTarget] = {}
        for s in self._sources:
            for t in await s.targets():
                out.setdefault(t.url, t)
        return list(out.values())


def kubernetes_pods(d: DiscoveryConfig, *, node: str, source: str) -> KubernetesPods:
    """Node-local pod discovery from its config section (token re-read on rotation)."""
    assert d.url is not None
    auth = BearerAuth(BearerTokenFile(d.token_file)) if d.token_file is not None else None
    ctx = None
    if d.url.startswith("https"):
        ctx = tls_context(ca_file=d.ca_file, insecure=d.insecure_skip_verify)
    return KubernetesPods(d.url, d.node_name or node, source, api=d.api, refresh_s=d.refresh_s,
                          ssl_context=ctx, headers=auth.headers if auth else dict,
                          redact=auth.redact if auth else (lambda s: s))


def target_source(cfg: ScrapeCollectorConfig, *, default_node: str, source: str) -> TargetSource:
    """A collector's targets: its static list, plus discovery when configured."""
    static = StaticTargets(ScrapeTarget(t.url, t.node or default_node, replica=t.replica)
                           for t in cfg.targets)
    d = cfg.discovery
    if d is None:
        return static
    if d.mode == "sidecar":
        side = sidecar_targets(default_node, d.ports, path=d.path)
        return StaticTargets([*static._targets, *side])
    return CombinedTargets([static, kubernetes_pods(d, node=default_node, source=source)])


__all__ = [
    "PATH",
    "PORT",
    "SCHEME",
    "SCRAPE",
    "SOURCE",
    "CombinedTargets",
    "KubernetesPods",
    "StaticTargets",
    "pods_url",
    "sidecar_targets",
    "target_source",
    "targets_from_pods",
]
