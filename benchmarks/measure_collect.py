"""CPU and memory of one ``gpuslo collect`` process on a simulated node, read from /proc.

The DaemonSet's requests and limits (deploy/kustomize/overlays/daemonset) are sized from
this script's figures, so they can be measured again when the collectors change::

    python benchmarks/measure_collect.py --interval 15 --window 120
    python benchmarks/measure_collect.py --interval 1 --window 60

What runs: ``gpuslo simulate --nodes N`` (its own process), the collectors that
``gpuslo simulate --print-config`` writes for that fleet, plus the sysfs RDMA and
/proc/diskstats readers on the simulator's files (what the DaemonSet reads from the
host), and ``gpuslo collect`` producing into the embedded broker.  Only the collect
process is measured: the simulator and the broker are not part of a node's cost.

CPU is (utime + stime) from /proc/<pid>/stat over the window, after a warm-up (imports,
first scrapes, topic creation); per-second CPU gives the peak and p95 that a limit must
leave room for.  Memory is VmRSS sampled each second and VmHWM (the peak RSS) at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

GPUSLO = Path(sys.executable).parent / "gpuslo"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (children not included: the broker is not counted)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / TICKS


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def wait_http(url: str, timeout_s: float) -> bytes:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bytes(resp.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def printed_config(nodes: int, port: int, interval: float) -> str:
    """What ``gpuslo simulate --print-config`` writes for a fleet served on ``port``."""
    return subprocess.run(
        [str(GPUSLO), "simulate", "--nodes", str(nodes), "--port", str(port),
         "--print-config", "--interval", str(interval), "--duration", "0.1"],
        check=True, capture_output=True, text=True,
    ).stdout


def collector_config(printed: str, interval: float, sim_index: bytes) -> dict[str, object]:
    """``simulate --print-config``'s collectors plus the file readers a DaemonSet runs."""
    cfg = yaml.safe_load(printed)
    # gpuslo collect serves its health on /metrics: a free port, not the default 9464.
    cfg["exporters"] = {"prometheus": {"host": "127.0.0.1", "port": 0}}
    files = json.loads(sim_index)["files"]
    cfg["collectors"] += [
        {"type": "rdma", "interval_s": interval, "timeout_s": min(interval, 5.0),
         "sysfs": [{"path": f["sys_root"], "node": f["node"]} for f in files]},
        {"type": "storage", "interval_s": interval, "timeout_s": min(interval, 5.0),
         "diskstats": [{"path": f["diskstats"], "node": f["node"]} for f in files]},
    ]
    return dict(cfg)


def measure(nodes: int, interval: float, warmup: float, window: float) -> dict[str, float]:
    port = free_port()
    printed = printed_config(nodes, port, interval)
    with tempfile.TemporaryDirectory(prefix="gpuslo-measure-") as tmp:
        sim = subprocess.Popen(
            [str(GPUSLO), "simulate", "--nodes", str(nodes), "--port", str(port),
             "--sysfs-dir", f"{tmp}/sysfs"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            index = wait_http(f"http://127.0.0.1:{port}/targets", 30)
            cfg = collector_config(printed, interval, index)
            cfg_path = Path(tmp, "collect.yaml")
            cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            env = {k: v for k, v in os.environ.items() if not k.startswith("GPUSLO_")}
            collect = subprocess.Popen(
                [str(GPUSLO), "collect", "--config", str(cfg_path),
                 "--duration", str(warmup + window + 5)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            )
            time.sleep(warmup)
            if collect.poll() is not None:
                raise SystemExit(f"gpuslo collect exited early:\n{collect.communicate()[0]}")
            pid = collect.pid
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            per_second: list[float] = []
            rss: list[int] = []
            last_cpu, last_t = cpu0, t0
            while time.monotonic() - t0 < window:
                time.sleep(1.0)
                cpu, t = cpu_seconds(pid), time.monotonic()
                per_second.append((cpu - last_cpu) / (t - last_t))
                rss.append(status_kib(pid, "VmRSS"))
                last_cpu, last_t = cpu, t
            cpu_total = (last_cpu - cpu0) / (last_t - t0)
            hwm = status_kib(pid, "VmHWM")
            out, _ = collect.communicate(timeout=60)
        finally:
            sim.send_signal(signal.SIGINT)
            sim.wait(timeout=30)
    summary = next((ln for ln in out.splitlines() if ln.startswith("produced")), out[-500:])
    print(f"  collect: {summary.strip()}")
    per_second.sort()
    return {
        "cpu_mean_m": 1000 * cpu_total,
        "cpu_p95_m": 1000 * per_second[int(0.95 * (len(per_second) - 1))],
        "cpu_max_m": 1000 * per_second[-1],
        "rss_mean_mib": statistics.fmean(rss) / 1024,
        "rss_max_mib": max(rss) / 1024,
        "hwm_mib": hwm / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--nodes", type=int, default=1, help="simulated nodes one collector reads")
    ap.add_argument("--interval", type=float, default=15.0, help="scrape interval, seconds")
    ap.add_argument("--warmup", type=float, default=30.0, help="seconds before measuring")
    ap.add_argument("--window", type=float, default=120.0, help="seconds measured")
    args = ap.parse_args()
    print(f"gpuslo collect, {args.nodes} simulated node(s), interval {args.interval:g} s, "
          f"{args.window:g} s measured after {args.warmup:g} s warm-up")
    r = measure(args.nodes, args.interval, args.warmup, args.window)
    print(f"  CPU: mean {r['cpu_mean_m']:.0f}m, p95 of 1 s {r['cpu_p95_m']:.0f}m, "
          f"max of 1 s {r['cpu_max_m']:.0f}m")
    print(f"  RSS: mean {r['rss_mean_mib']:.0f} MiB, max {r['rss_max_mib']:.0f} MiB, "
          f"peak (VmHWM) {r['hwm_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
