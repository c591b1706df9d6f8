"""The embedded broker is out of the terminal's reach and never outlives its parent.

Ctrl-C signals a terminal's whole foreground process group: the broker must be
in a session of its own, so that its parent can stop it last.  And a parent
killed with SIGKILL (no code of its own runs) must not leave a broker behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpuslo.pipeline.kafka.broker import EmbeddedBroker

pytestmark = pytest.mark.integration


def alive(pid: int) -> bool:
    """Running, and not a zombie left for a parent (or a container's init) to reap."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_the_broker_runs_in_its_own_session_and_process_group() -> None:
    with EmbeddedBroker() as broker:
        pid = broker.pid
        assert pid is not None
        assert os.getsid(pid) == pid != os.getsid(0)
        assert os.getpgid(pid) == pid != os.getpgid(0)
    assert not alive(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_parent_killed_with_sigkill_takes_its_broker_with_it(tmp_path: Path) -> None:
    script = (
        "import asyncio, sys\n"
        "from gpuslo.pipeline.kafka.broker import EmbeddedBroker\n"
        "async def main():\n"
        "    async with EmbeddedBroker() as b:\n"  # spawned on the loop's thread, as the CLI
        "        print(b.pid, flush=True)\n"
        "        await asyncio.sleep(120)\n"
        "asyncio.run(main())\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True)
    broker_pid = None
    try:
        assert parent.stdout is not None
        broker_pid = int(parent.stdout.readline())
        assert alive(broker_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 5
        while alive(broker_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(broker_pid), "the broker outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)
        if broker_pid is not None and alive(broker_pid):
            os.kill(broker_pid, signal.SIGKILL)
