"""Benchmark: serve an N-node fleet on loopback and fetch every page once.

``python -m gpuslo.simulator.bench --nodes 64`` prints the wall time of one full round
(the issue's "64 simulated nodes serve a full round of every endpoint").
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp

from gpuslo.simulator.clock import ManualClock
from gpuslo.simulator.fleet import Fleet
from gpuslo.simulator.server import FleetServer
from gpuslo.simulator.spec import FleetSpec


async def one_round(nodes: int, concurrency: int = 32) -> tuple[int, int, float]:
    """Return (pages, bytes, seconds) for one round after a 5-minute warm-up."""
    fleet = Fleet(FleetSpec(nodes=nodes))
    clock = ManualClock(fleet.t + 300)
    fleet.advance(clock.now())
    sem = asyncio.Semaphore(concurrency)
    async with FleetServer(fleet, clock) as srv, aiohttp.ClientSession() as http:

        async def get(url: str) -> int:
            async with sem, http.get(url) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{url}: HTTP {resp.status}")
                return len(body)

        targets = srv.targets()
        t0 = time.perf_counter()
        sizes = await asyncio.gather(*(get(t.url) for t in targets))
        return len(targets), sum(sizes), time.perf_counter() - t0


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=64)
    args = ap.parse_args()
    pages, size, seconds = asyncio.run(one_round(args.nodes))
    print(f"{args.nodes} nodes: {pages} pages, {size / 1e6:.1f} MB in {seconds:.2f} s")


if __name__ == "__main__":
    main()
