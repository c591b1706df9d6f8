"""Start the real Prometheus and Alertmanager (Debian packages) on free loopback ports.

Each server gets its own temporary data directory and log file; :meth:`Server.stop`
terminates it (kill after 5 s) and is safe to call twice.  Fixtures call ``stop``
in ``finally`` so no test leaves a server behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


def require_binary(name: str, package: str) -> str:
    """Path of a Debian-packaged server binary; skip (or fail under CI=true) when missing."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found: install the Debian package '{package}'"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    """A loopback port that was free a moment ago (the OS hands out a fresh one each time)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running server process."""

    name: str
    proc: subprocess.Popen[bytes] | None
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:
            return json.loads(resp.read())

    def wait_ready(self, path: str, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n"
                                   f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready within {timeout_s}s:\n{self.log_tail()}")


def http_get(url: str) -> tuple[int, str] | None:
    """Status and body of a GET, or None when nothing answers (a probe, a scrape)."""
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError):
        return None


def _spawn(name: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def start_alertmanager(config: str, workdir: Path, *, port: int | None = None,
                       name: str = "alertmanager") -> Server:
    """Alertmanager with ``config`` (YAML text), clustering off, data under ``workdir``."""
    binary = require_binary("prometheus-alertmanager", "prometheus-alertmanager")
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "alertmanager.yml"
    cfg.write_text(config)
    port = port or free_port()
    server = Server(name, None, port, workdir / "alertmanager.log")
    server.proc = _spawn(name, [
        binary,
        f"--config.file={cfg}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--web.external-url=http://127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ], server.log)
    try:
        server.wait_ready("/-/ready")
    except BaseException:
        server.stop()
        raise
    return server


def start_prometheus(config: str, workdir: Path, *, name: str = "prometheus") -> Server:
    """Prometheus with ``config`` (YAML text) and a TSDB under ``workdir``."""
    binary = require_binary("prometheus", "prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "prometheus.yml"
    cfg.write_text(config)
    port = free_port()
    server = Server(name, None, port, workdir / "prometheus.log")
    server.proc = _spawn(name, [
        binary,
        f"--config.file={cfg}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ], server.log)
    try:
        server.wait_ready("/-/ready", timeout_s=30)
    except BaseException:
        server.stop()
        raise
    return server


def backfill(export: Path, data: Path, timeout_s: float = 120) -> Path:
    """``promtool tsdb create-blocks-from openmetrics``: ``export`` into a TSDB at ``data``,
    as a user loads history into Prometheus; a rejected export fails with promtool's words."""
    promtool = require_binary("promtool", "prometheus")
    done = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(export),
                           str(data)], capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stderr
    return data


def start_backfilled_prometheus(export: Path, workdir: Path) -> Server:
    """A real Prometheus serving ``export`` (backfilled), evaluating rules on the minute."""
    require_binary("prometheus", "prometheus")
    backfill(export, workdir / "data")
    return start_prometheus("global:\n  evaluation_interval: 1m\n", workdir)


async def wait_for(pred: Callable[[], Any], timeout_s: float = 10.0, what: str = "") -> Any:
    """Poll ``pred`` (run in a thread: it may do blocking HTTP) until it returns something
    truthy; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await asyncio.to_thread(pred)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what or pred}")
        await asyncio.sleep(0.05)
