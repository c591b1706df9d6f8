"""The fleet model: entities plus one fixed-size step that couples them.

Pure and deterministic: no I/O, no wall clock.  ``advance(now_s)`` runs whole
ticks of ``spec.tick_s`` simulated seconds up to ``now_s``; the random stream is
consumed in a fixed order per tick, so the same seed, fault schedule and tick
sequence give the same state, whoever calls and however often.

Coupling, in tick order: faults set causes -> workloads (replicas, training)
turn load and the GPUs' current speed into demand and latency -> GPUs turn
demand into power, temperature, clocks and next tick's speed -> network, disks,
containers and Ceph integrate their counters.  Speed, link health, CPU share and
storage latency feed back into the next tick's latencies and step time.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

from gpuslo.simulator.build import World, build
from gpuslo.simulator.entities import (
    CLOCK_GPU_IDLE,
    CLOCK_HW_SLOWDOWN,
    CLOCK_HW_THERMAL,
    CLOCK_SW_POWER_CAP,
    CLOCK_SW_THERMAL,
    Container,
    Disk,
    Gpu,
    Node,
    Osd,
    Port,
    Replica,
    TrainingJob,
)
from gpuslo.simulator.faults import (
    FaultError,
    FaultKind,
    FaultSpec,
    lookup,
    lookup_benign,
    parse_target,
)
from gpuslo.simulator.spec import FleetSpec, ServiceSpec

INLET_C = 28.0
THERMAL_TAU_S = 45.0
SW_THERMAL_C = 87.0
HW_THERMAL_C = 93.0
# How far degraded cooling (a failing fan, a clogged heatsink, dried-out thermal
# interface) multiplies a GPU's thermal resistance at fault intensity 1: x4.5.
# At the default scenario's 0.8 (x3.8) an inference GPU at a third of its TDP
# heads for ~95 C, so it settles in software thermal slowdown (~88 C, clocks
# down ~20 %, reason 0x20), as a real card with failed cooling does; a healthy
# GPU at full power stays near 72 C.
COOLING_LOSS = 3.5
FLAP_PERIOD_S = 60.0
# Errors around each flap.  A real link that flaps drops its lanes' lock, fails
# error recovery and goes down (link_downed, link_error_recovery), corrupting
# the frames in flight (symbol errors, port_rcv_errors); the retrain back to
# LinkUp costs another burst of both on the first frames.  Scaled by intensity.
FLAP_DOWN_SYMBOL_ERRORS = 20
FLAP_DOWN_RCV_ERRORS = 6
FLAP_UP_SYMBOL_ERRORS = 8
FLAP_UP_RCV_ERRORS = 3
CEPH_COMPLAINT_S = 30.0
RESTART_S = 30.0
# An OOM-killed model server comes back only once its weights are loaded again.
OOM_RELOAD_S = 60.0
# Benign events (see faults.BENIGN).  A hot but healthy GPU sits in warmer air: +10 C
# inlet at intensity 1 keeps a fully loaded GPU near 82 C, under the catalog's 85 C
# headroom and the 87 C slowdown point.  A checkpoint burst writes ~3 GB/s of 1 MiB
# writes and keeps the disk a third busier, which slows reads ~1.5x.  A traffic ramp
# adds up to +30 % requests.
HOT_GPU_INLET_C = 10.0
CHECKPOINT_WRITES_PER_S = 3000.0
CHECKPOINT_UTIL = 0.35
TRAFFIC_RAMP = 0.3


class Fleet:
    """A simulated GPU fleet.  Build it, ``inject`` faults, ``advance`` it, render it."""

    def __init__(self, spec: FleetSpec | None = None) -> None:
        self.spec = spec or FleetSpec()
        world: World = build(self.spec)
        self.nodes: list[Node] = world.nodes
        self.node_by_name: dict[str, Node] = {n.name: n for n in self.nodes}
        self.replicas: list[Replica] = world.replicas
        self.services: dict[str, ServiceSpec] = world.services
        self.training: TrainingJob | None = world.training
        self.osds: list[Osd] = world.osds
        self.t: float = self.spec.start_s  # simulated time of the state
        self.faults: list[FaultSpec] = []
        self.benign: list[FaultSpec] = []
        self._started: set[int] = set()
        self._benign_started: set[int] = set()
        self._rng = random.Random(self.spec.seed)
        # Per-tick views of the active faults: (kind, entity key) -> intensity.
        self._active: dict[tuple[str, str], float] = {}

    # ---- faults -------------------------------------------------------------------------

    def inject(self, fault: FaultSpec) -> FaultSpec:
        """Schedule a fault; raises :class:`FaultError` if the kind or target is unknown."""
        self._check(lookup(fault.kind), fault)
        self.faults.append(fault)
        return fault

    def inject_benign(self, event: FaultSpec) -> FaultSpec:
        """Schedule a benign event (:data:`faults.BENIGN`): a real change that is no fault."""
        self._check(lookup_benign(event.kind), event)
        self.benign.append(event)
        return event

    def _check(self, kind: FaultKind, fault: FaultSpec) -> None:
        tk, parts = parse_target(kind, fault.target)
        if fault.duration_s <= 0 or not 0 < fault.intensity <= 1:
            raise FaultError("duration_s must be > 0 and intensity in (0, 1]")
        exists = {
            "gpu": lambda: parts["node"] in self.node_by_name
            and int(parts["index"]) < len(self.node_by_name[parts["node"]].gpus),
            "port": lambda: parts["node"] in self.node_by_name
            and any(p.device == parts["device"] for p in self.node_by_name[parts["node"]].ports),
            "disk": lambda: parts["node"] in self.node_by_name
            and any(d.name == parts["disk"] for d in self.node_by_name[parts["node"]].disks),
            "node": lambda: parts["node"] in self.node_by_name,
            "osd": lambda: int(parts["osd"]) < len(self.osds),
            "service": lambda: any(r.service == parts["service"] for r in self.replicas),
            "replica": lambda: any(r.key == fault.target for r in self.replicas),
            "fleet": lambda: True,
        }[tk]()
        if not exists:
            raise FaultError(f"fault {fault.kind!r}: no {tk} named {fault.target!r} in this fleet")

    def ground_truth(self) -> list[dict[str, object]]:
        """Every injected fault as ``{kind, target, start_s, duration_s, intensity, end_s}``."""
        return [f.as_dict() for f in self.faults]

    def benign_truth(self) -> list[dict[str, object]]:
        """Every scheduled benign event, in the same shape as :meth:`ground_truth`."""
        return [b.as_dict() for b in self.benign]

    def _intensity(self, kind: str, key: str) -> float:
        return self._active.get((kind, key), 0.0)

    # ---- time ---------------------------------------------------------------------------

    def advance(self, now_s: float) -> None:
        """Step whole ticks until the model time reaches ``now_s`` (never goes back)."""
        dt = self.spec.tick_s
        while self.t + dt <= now_s + 1e-9:
            self._step(self.t + dt, dt)
            self.t += dt

    def _step(self, t: float, dt: float) -> None:
        self._active = {}
        for i, f in enumerate(self.faults):
            if f.active(t):
                key = (f.kind, f.target)
                self._active[key] = max(self._active.get(key, 0.0), f.intensity)
                if i not in self._started:
                    self._started.add(i)
                    self._on_start(f, t)
        for i, b in enumerate(self.benign):
            if b.active(t):
                key = (b.kind, b.target)
                self._active[key] = max(self._active.get(key, 0.0), b.intensity)
                if i not in self._benign_started:
                    self._benign_started.add(i)
                    if b.kind == "pod_restart":
                        r = self.replica(b.target)
                        r.up = False
                        r.down_until = max(r.down_until, t + RESTART_S)
        self._restarts(t)
        for node in self.nodes:
            node.contention = self._intensity("cpu_throttling", node.name)
        self._containers_cpu_factor()
        self._replicas(t, dt)
        self._training(t, dt)
        for node in self.nodes:
            for g in node.gpus:
                self._gpu(g, node, t, dt)
        for node in self.nodes:
            self._ports(node, t, dt)
            for d in node.disks:
                self._disk(d, node, dt)
        self._containers(t, dt)
        self._ceph(t, dt)

    # ---- events -------------------------------------------------------------------------

    def _gpu_of(self, target: str) -> Gpu:
        node, idx = target.split("/gpu")
        return self.node_by_name[node].gpus[int(idx)]

    def _crash_owner(self, gpu: Gpu, until: float) -> None:
        for r in self.replicas:
            if any(g is gpu for g in r.gpus):
                r.up = False
                r.down_until = max(r.down_until, until)
        job = self.training
        if job is not None and any(rk.gpu is gpu for rk in job.ranks):
            job.up = False
            job.down_until = max(job.down_until, until)

    def _on_start(self, f: FaultSpec, t: float) -> None:
        kind = lookup(f.kind)
        if kind.xid is not None:
            gpu = self._gpu_of(f.target)
            gpu.xid = kind.xid
            back = max(f.end_s, t + RESTART_S) if f.kind != "nvlink_errors" else t
            if f.kind == "xid_48":
                gpu.uncorrectable_remapped_rows += 1
                gpu.reset_until = f.end_s
            elif f.kind == "xid_95":
                gpu.reset_until = f.end_s
            if f.kind != "nvlink_errors":
                self._crash_owner(gpu, back)

    def _restarts(self, t: float) -> None:
        for node in self.nodes:
            for g in node.gpus:
                g.lost = self._intensity("xid_79", f"{node.name}/gpu{g.index}") > 0
        for r in self.replicas:
            if not r.up and t >= r.down_until and all(not g.lost for g in r.gpus):
                r.up = True
                r.restart(t)
                for c in r.pod.containers:
                    c.start_s = t  # a new container: kubelet reports a new start time
        job = self.training
        if job is not None and not job.up and t >= job.down_until and all(
            not rk.gpu.lost for rk in job.ranks
        ):
            job.up = True
            job.restart(t)

    # ---- load and workloads -----------------------------------------------------------

    def diurnal(self, t: float) -> float:
        """Load multiplier over the day: trough around 03:00 UTC, peak around 15:00 UTC."""
        hour = (t % 86_400.0) / 3600.0
        return 1.0 + self.spec.diurnal_amplitude * math.sin(2.0 * math.pi * (hour - 9.0) / 24.0)

    def _noise(self, rel: float) -> float:
        return 1.0 + rel * self._rng.gauss(0.0, 1.0)

    def _replicas(self, t: float, dt: float) -> None:
        by_service: dict[str, list[Replica]] = {}
        for r in self.replicas:
            by_service.setdefault(r.service, []).append(r)
        for name, reps in by_service.items():
            spec = self.services[name]
            noise = max(0.0, self._noise(self.spec.load_noise))
            service_rps = spec.base_rps * self.diurnal(t) * noise * self._ramp(name, t)
            up = [r for r in reps if r.up]
            shares = self._shares(up)
            for r in reps:
                if not r.up:
                    r.rps = r.running = r.waiting = r.rho = r.gen_tps = 0.0
                    for g in r.gpus:
                        g.demand = 0.0
                    continue
                self._engine(r, spec, service_rps * shares[id(r)], dt)

    def _ramp(self, service: str, t: float) -> float:
        """Load multiplier of the traffic-ramp benign events (fleet-wide or per service)."""
        out = 1.0
        for b in self.benign:
            if b.kind == "traffic_ramp" and b.target in ("fleet", service) and b.active(t):
                grown = min(1.0, (t - b.start_s) / max(b.duration_s / 2.0, 1e-9))
                out *= 1.0 + TRAFFIC_RAMP * b.intensity * grown
        return out

    def _shares(self, up: list[Replica]) -> dict[int, float]:
        """Each live replica's share of its model's requests.

        ``even``: round robin.  ``least_loaded``: a router that sends more to the
        replicas that answer faster (least outstanding requests), so a slowed replica
        sheds load onto its twins, whose queues then grow: the symptom spreads.
        """
        if not up:
            return {}
        if self.spec.routing == "even":
            return {id(r): 1.0 / len(up) for r in up}
        weights = {id(r): max(0.05, min(g.speed for g in r.gpus))
                   * r.pod.containers[0].cpu_factor for r in up}
        total = sum(weights.values())
        return {k: w / total for k, w in weights.items()}

    def _engine(self, r: Replica, spec: ServiceSpec, rps: float, dt: float) -> None:
        kv_i = max(self._intensity("kv_cache_pressure", r.service),
                   self._intensity("kv_cache_pressure", r.key))
        pc_i = max(self._intensity("prefix_cache_collapse", r.service),
                   self._intensity("prefix_cache_collapse", r.key))
        speed = max(0.05, min(g.speed for g in r.gpus))
        comm = min(g.nvlink_factor for g in r.gpus) if spec.tp > 1 else 1.0
        decode_speed = speed * (0.7 + 0.3 * comm)
        pcie = min(g.pcie_factor for g in r.gpus)
        cpu = r.pod.containers[0].cpu_factor
        prompt = spec.prompt_tokens * (1.0 + 11.0 * kv_i)
        output = spec.output_tokens * (1.0 + kv_i)
        hit = spec.prefix_hit_ratio * (1.0 - 0.9 * pc_i)
        prefill_tokens = prompt * (1.0 - hit)
        prefill_rate = spec.prefill_tps * speed
        decode_rate = spec.decode_tps * decode_speed
        rho = rps * (prefill_tokens / prefill_rate + output / decode_rate)
        rho_eff = min(rho, 0.97)
        prefill_s = 4.0 * prefill_tokens / prefill_rate + 0.004 / pcie
        itl = (30.0 / spec.decode_tps) / decode_speed * (1.0 + 0.8 * rho_eff)
        decode_s = output * itl
        queue_s = 0.02 * rho_eff / (1.0 - rho_eff) + max(0.0, rho - 0.97) * 30.0
        cpu_s = 0.012 / cpu + 0.004 * r.waiting / max(cpu, 0.05) / 100.0
        per_seq = prompt + output / 2.0
        running_demand = rps * (prefill_s + decode_s)
        kv_ratio = running_demand * per_seq / spec.kv_capacity_tokens
        cap = min(float(spec.max_num_seqs), 0.95 * spec.kv_capacity_tokens / per_seq)
        preempt_rate = 0.0
        if kv_ratio > 0.92:
            overflow = kv_ratio - 0.92
            preempt_rate = rps * min(3.0, overflow * 8.0)
            queue_s += overflow * 4.0
            prefill_s *= 1.0 + min(2.0, overflow * 2.0)
        running = min(running_demand, cap)
        r.waiting = max(0.0, running_demand - running) + rps * queue_s
        r.running = running
        r.kv_usage = min(0.995, max(0.0, kv_ratio * self._noise(0.02)))
        r.ttft_s = queue_s + prefill_s + cpu_s
        r.itl_s = itl
        r.queue_s = queue_s
        r.e2e_s = r.ttft_s + decode_s
        r.rho = rho
        r.rps = rps
        r.hit_ratio = hit
        r.window_hit_ratio = max(0.0, min(1.0, hit * self._noise(0.03)))
        r.gen_tps = rps * output
        recompute = min(0.2, preempt_rate / max(rps, 1e-9) * 0.1)
        demand = min(1.0, 0.06 + 0.94 * rho_eff * cpu + recompute)
        for g in r.gpus:
            g.demand = demand
        # Completions this tick, as whole requests.
        r.carry += rps * dt
        n = int(r.carry)
        r.carry -= n
        c = r.counters
        c["prompt_tokens"] = c.get("prompt_tokens", 0.0) + n * prompt
        c["generation_tokens"] = c.get("generation_tokens", 0.0) + n * output
        c["prefix_queries"] = c.get("prefix_queries", 0.0) + n * prompt
        c["prefix_hits"] = c.get("prefix_hits", 0.0) + n * prompt * hit
        c["preemptions"] = c.get("preemptions", 0.0) + preempt_rate * dt
        c["requests"] = c.get("requests", 0.0) + n
        c["time_us"] = c.get("time_us", 0.0) + n * r.e2e_s * 1e6
        c["queue_us"] = c.get("queue_us", 0.0) + n * queue_s * 1e6
        c["iterations"] = c.get("iterations", 0.0) + dt / max(itl, 1e-3)
        abort = min(0.25, 0.005 + queue_s / 40.0)
        for reason, share in (("stop", 0.86 * (1 - abort)), ("length", 0.14 * (1 - abort)),
                              ("abort", abort)):
            k = f"success_{reason}"
            c[k] = c.get(k, 0.0) + n * share
        sigma = 0.45 + min(0.6, preempt_rate / max(rps, 1e-9) * 0.3)
        r.ttft.observe_batch(n, r.ttft_s, sigma)
        r.itl.observe_batch(int(n * output), itl, 0.25)
        r.e2e.observe_batch(n, r.e2e_s, 0.4)
        r.queue.observe_batch(n, max(queue_s, 1e-4), 0.6)
        r.prefill.observe_batch(n, prefill_s, 0.4)
        r.decode.observe_batch(n, decode_s, 0.4)

    def storage_factor(self) -> float:
        """How much slower than healthy the shared Ceph cluster answers (>= 1)."""
        return max((o.latency_factor for o in self.osds), default=1.0)

    def _training(self, t: float, dt: float) -> None:
        job = self.training
        tspec = self.spec.training
        if job is None or tspec is None:
            return
        if not job.up:
            for rk in job.ranks:
                rk.gpu.demand = 0.0
            job.step_s = 0.0
            return
        nodes = [self.node_by_name[n] for n in job.nodes]
        for rk in job.ranks:
            rk.compute_s = tspec.compute_s / max(rk.gpu.speed, 0.05) * (
                1.0 + 0.4 * (1.0 - rk.gpu.pcie_factor))
        slowest = max(rk.compute_s for rk in job.ranks)
        nvlink = min(rk.gpu.nvlink_factor for rk in job.ranks)
        net = min(n.net_factor for n in nodes)
        comm = tspec.comm_s / max(net, 0.05) / (0.7 + 0.3 * nvlink)
        disk = max(self._disk_latency(n) for n in nodes)
        cpu = min(p.containers[0].cpu_factor for p in job.pods)
        data = tspec.data_s * (1.0 + 0.2 * (self.storage_factor() - 1.0)) * disk / max(cpu, 0.05)
        job.step_s = (slowest + comm + data) * self._noise(0.01)
        for rk in job.ranks:
            rk.gpu.demand = min(1.0, (rk.compute_s * 0.97 + comm * 0.6) / job.step_s)
        job.carry += dt / job.step_s
        n = int(job.carry)
        job.carry -= n
        job.steps += n
        job.step_hist.observe_batch(n, job.step_s, 0.04)

    @staticmethod
    def _disk_latency(node: Node) -> float:
        return max((d.latency_factor for d in node.disks), default=1.0)

    # ---- GPUs ---------------------------------------------------------------------------

    def _gpu(self, g: Gpu, node: Node, t: float, dt: float) -> None:
        key = f"{node.name}/gpu{g.index}"
        if g.lost:
            g.speed = 0.0
            g.util = 0.0
            return
        usable = t >= g.reset_until
        demand = g.demand if usable else 0.0
        cap_i = max(self._intensity("power_cap", key), self._intensity("power_cap", node.name))
        limit = g.tdp_w * (1.0 - 0.75 * cap_i)
        want = g.idle_w + (g.tdp_w - g.idle_w) * demand
        clock = 1.0
        reasons = 0
        if want > limit:
            clock = max(0.3, (limit - g.idle_w) / (want - g.idle_w))
            reasons |= CLOCK_SW_POWER_CAP
        if g.temp_c >= SW_THERMAL_C:
            clock *= max(0.3, 1.0 - 0.08 * (g.temp_c - SW_THERMAL_C + 1.0))
            reasons |= CLOCK_SW_THERMAL
        if g.temp_c >= HW_THERMAL_C:
            clock *= 0.5
            reasons |= CLOCK_HW_THERMAL | CLOCK_HW_SLOWDOWN
        if demand < 0.05:
            reasons |= CLOCK_GPU_IDLE
        power = g.idle_w + (g.tdp_w - g.idle_w) * demand * clock**1.2
        power = min(power * self._noise(0.01), limit)
        resistance = g.thermal_resistance * (
            1.0 + COOLING_LOSS * self._intensity("thermal_throttle", key))
        inlet = INLET_C + HOT_GPU_INLET_C * self._intensity("hot_gpu", key)
        target = inlet + resistance * power
        g.temp_c += (target - g.temp_c) * (1.0 - math.exp(-dt / THERMAL_TAU_S))
        g.mem_temp_c = g.temp_c + 4.0 + 2.0 * demand
        g.util = demand
        g.power_w = power
        g.sm_clock_mhz = g.max_sm_clock_mhz * clock if demand >= 0.05 else 345.0
        g.clock_reasons = reasons
        g.speed = clock if usable else 0.0
        g.energy_mj += power * dt * 1000.0
        if reasons & CLOCK_SW_POWER_CAP:
            g.power_violation_ns += dt * 1e9
        if reasons & (CLOCK_SW_THERMAL | CLOCK_HW_THERMAL):
            g.thermal_violation_ns += dt * 1e9
        nvl_i = self._intensity("nvlink_errors", key)
        g.nvlink_factor = 1.0 - 0.8 * nvl_i
        g.nvlink_total += dt * demand * 2.0e8 * g.nvlink_factor
        pcie_i = self._intensity("pcie_replay", key)
        g.pcie_factor = 1.0 - 0.6 * pcie_i
        g.pcie_replay += int(dt * 40.0 * pcie_i + self._rng.random() * (pcie_i > 0))
        g.pcie_tx_bps = (1.5e9 * demand + 2.0e7) * g.pcie_factor
        g.pcie_rx_bps = (2.5e9 * demand + 3.0e7) * g.pcie_factor
        g.tensor_active = demand * 0.62 * clock
        g.dram_active = demand * 0.48
        if g.temp_c > 90.0 and self._rng.random() < 0.02 * dt:
            g.correctable_remapped_rows += 1

    # ---- network ------------------------------------------------------------------------

    def _ports(self, node: Node, t: float, dt: float) -> None:
        job = self.training
        on_job = job is not None and job.up and node.name in job.nodes and job.step_s > 0
        line = node.ports[0].rate_gbps * 125e6 if node.ports else 0.0
        demand = 0.02 * line * len(node.ports)
        if on_job and job is not None and self.spec.training is not None:
            per_step = 0.35 * line * len(node.ports) * (
                self.spec.training.compute_s + self.spec.training.comm_s)
            demand += per_step / job.step_s
        factors: list[float] = []
        for p in node.ports:
            key = f"{node.name}/{p.device}"
            flap_i = self._intensity("ib_link_flap", key)
            sym_i = self._intensity("ib_symbol_errors", key)
            cong_i = self._intensity("roce_congestion", key)
            was_up = p.up
            p.up = True
            if flap_i > 0:
                start = min(f.start_s for f in self.faults
                            if f.kind == "ib_link_flap" and f.target == key and f.active(t))
                p.up = (t - start) % FLAP_PERIOD_S >= 5.0 + 15.0 * flap_i
            c = p.counters
            if was_up and not p.up:
                c["link_downed"] = c.get("link_downed", 0) + 1
                c["link_error_recovery"] = c.get("link_error_recovery", 0) + 1
                self._flap_errors(p, FLAP_DOWN_SYMBOL_ERRORS, FLAP_DOWN_RCV_ERRORS, flap_i)
            elif p.up and not was_up:
                # Retrained (also when the fault ends while the port is down).
                self._flap_errors(p, FLAP_UP_SYMBOL_ERRORS, FLAP_UP_RCV_ERRORS, flap_i)
            p.factor = (1.0 if p.up else 0.0) * (1.0 - 0.5 * sym_i) * (1.0 - 0.5 * cong_i)
            factors.append(p.factor)
            self._errors(p, dt, sym_i, cong_i)
        total = sum(factors)
        # Collectives stripe over every rail, so the worst rail gates them; re-routing
        # onto the healthy rails recovers part of the loss.
        if factors:
            node.net_factor = max(0.25, 0.5 * min(factors) + 0.5 * total / len(factors))
        else:
            node.net_factor = 1.0
        for p in node.ports:
            share = demand * p.factor / total if total > 0 else 0.0
            bytes_ = min(share, line) * dt
            util = share / line if line else 0.0
            c = p.counters
            for name, value in (
                ("port_xmit_data", bytes_), ("port_rcv_data", bytes_ * 0.98),
                ("port_xmit_packets", bytes_ / 4096), ("port_rcv_packets", bytes_ * 0.98 / 4096),
                ("unicast_xmit_packets", bytes_ / 4096),
                ("unicast_rcv_packets", bytes_ * 0.98 / 4096),
                ("multicast_xmit_packets", dt * 0.1), ("multicast_rcv_packets", dt * 0.2),
                ("port_xmit_wait", dt * (2e3 + 4e6 * max(0.0, util - 0.45))),
            ):
                c[name] = c.get(name, 0.0) + value
            h = p.hw
            h["rx_write_requests"] = h.get("rx_write_requests", 0.0) + bytes_ / 65536
            h["rx_read_requests"] = h.get("rx_read_requests", 0.0) + bytes_ / 1048576
            ecn = h.get("np_ecn_marked_roce_packets", 0.0)
            h["np_ecn_marked_roce_packets"] = ecn + dt * 40 * util
            h["np_cnp_sent"] = h.get("np_cnp_sent", 0.0) + dt * 20 * util
            h["rp_cnp_handled"] = h.get("rp_cnp_handled", 0.0) + dt * 20 * util

    @staticmethod
    def _flap_errors(p: Port, symbols: int, packets: int, intensity: float) -> None:
        """Symbol errors and bad received packets of one link transition of a flap.

        Bad packets are received packets too (``port_rcv_packets`` counts errors).
        """
        scale = 0.5 + 0.5 * intensity  # a flap that ended (intensity 0) still retrains
        c = p.counters
        bad = max(1, round(packets * scale))
        c["symbol_error"] = c.get("symbol_error", 0) + max(1, round(symbols * scale))
        c["port_rcv_errors"] = c.get("port_rcv_errors", 0) + bad
        c["port_rcv_packets"] = c.get("port_rcv_packets", 0.0) + bad

    def _errors(self, p: Port, dt: float, sym_i: float, cong_i: float) -> None:
        c, h, rnd = p.counters, p.hw, self._rng.random
        if sym_i > 0:
            for name, rate in (("symbol_error", 150.0), ("port_rcv_errors", 40.0),
                               ("local_link_integrity_errors", 0.05),
                               ("port_rcv_remote_physical_errors", 5.0),
                               ("link_error_recovery", 0.01)):
                c[name] = c.get(name, 0.0) + int(dt * rate * sym_i + rnd())
            h["packet_seq_err"] = h.get("packet_seq_err", 0.0) + int(dt * 20 * sym_i + rnd())
        if cong_i > 0:
            for name, rate in (("np_ecn_marked_roce_packets", 2.0e5), ("np_cnp_sent", 1.0e5),
                               ("rp_cnp_handled", 1.0e5), ("out_of_buffer", 800.0),
                               ("out_of_sequence", 150.0), ("packet_seq_err", 60.0),
                               ("local_ack_timeout_err", 2.0), ("roce_adp_retrans", 80.0),
                               ("roce_adp_retrans_to", 3.0), ("roce_slow_restart", 1.0),
                               ("roce_slow_restart_cnps", 5.0), ("roce_slow_restart_trans", 1.0),
                               ("implied_nak_seq_err", 10.0), ("duplicate_request", 4.0)):
                h[name] = h.get(name, 0.0) + int(dt * rate * cong_i + rnd())
            c["port_xmit_wait"] = c.get("port_xmit_wait", 0.0) + dt * 5.0e6 * cong_i
            c["port_xmit_discards"] = c.get("port_xmit_discards", 0.0) + int(
                dt * 3 * cong_i + rnd())

    # ---- disks --------------------------------------------------------------------------

    def _disk(self, d: Disk, node: Node, dt: float) -> None:
        job = self.training
        sat_i = self._intensity("disk_saturation", f"{node.name}/{d.name}")
        data_disk = d.minor == len(node.disks) - 1
        ckpt_i = max(self._intensity("checkpoint_write", f"{node.name}/{d.name}"),
                     self._intensity("checkpoint_write", node.name) if data_disk else 0.0)
        reads, writes, rsize, wsize = 30.0, 60.0, 16384.0, 32768.0
        if data_disk:
            reads += 120.0
            writes += 40.0
            rsize = 131072.0
            if job is not None and job.up and node.name in job.nodes and job.step_s > 0:
                reads += 1500.0 / job.step_s
        reads *= self._noise(0.05)
        base_util = min(0.9, (reads + writes) * 1.2e-4)
        reads += 20_000.0 * sat_i
        burst = 20_000.0 * sat_i  # 1 MiB reads of the co-located burst
        rsize = (rsize * (reads - burst) + 1048576.0 * burst) / max(reads, 1.0)
        if ckpt_i > 0:
            burst_w = CHECKPOINT_WRITES_PER_S * ckpt_i * self._noise(0.05)
            wsize = (wsize * writes + 1048576.0 * burst_w) / (writes + burst_w)
            writes += burst_w
        util = min(1.0, base_util + 0.97 * sat_i + CHECKPOINT_UTIL * ckpt_i)
        d.util = util
        d.latency_factor = (1.0 - base_util) / max(0.02, 1.0 - util)
        r_lat_ms, w_lat_ms = 0.09 * d.latency_factor, 0.03 * d.latency_factor
        d.io_now = (reads * r_lat_ms + writes * w_lat_ms) / 1000.0
        s = d.stats
        for name, value in (
            ("reads", reads * dt), ("reads_merged", reads * 0.01 * dt),
            ("sectors_read", reads * rsize / 512.0 * dt), ("read_ms", reads * r_lat_ms * dt),
            ("writes", writes * dt), ("writes_merged", writes * 0.2 * dt),
            ("sectors_written", writes * wsize / 512.0 * dt),
            ("write_ms", writes * w_lat_ms * dt), ("io_ms", util * dt * 1000.0),
            ("weighted_ms", d.io_now * dt * 1000.0), ("discards", 0.05 * dt),
            ("discards_merged", 0.0), ("sectors_discarded", 0.05 * 2048 * dt),
            ("discard_ms", 0.05 * 0.5 * dt), ("flushes", writes * 0.05 * dt),
            ("flush_ms", writes * 0.05 * 0.2 * dt),
        ):
            s[name] = s.get(name, 0.0) + value

    # ---- containers ---------------------------------------------------------------------

    def _containers_cpu_factor(self) -> None:
        for node in self.nodes:
            for pod in node.pods:
                for c in pod.containers:
                    victim = pod.namespace in ("inference", "training")
                    c.cpu_factor = 1.0 - 0.7 * node.contention if victim else 1.0

    def _containers(self, t: float, dt: float) -> None:
        rep_by_pod = {r.pod.name: r for r in self.replicas}
        for node in self.nodes:
            node_rate = 3.0
            for pod in node.pods:
                for c in pod.containers:
                    want, throttled = self._cpu_want(pod.namespace, c, rep_by_pod.get(pod.name),
                                                     node.contention)
                    c.cpu_rate = want * c.cpu_factor
                    c.cpu_s += c.cpu_rate * dt
                    node_rate += c.cpu_rate
                    if c.cpu_quota_cores > 0:
                        periods = dt / 0.1
                        c.cfs_periods += periods
                        c.cfs_throttled_periods += periods * throttled
                        c.cfs_throttled_s += periods * throttled * 0.04
                    c.net_rx_bytes += dt * (5e6 + 2e7 * c.cpu_rate / 10)
                    c.net_tx_bytes += dt * (4e6 + 3e7 * c.cpu_rate / 10)
                    self._memory(c, rep_by_pod.get(pod.name), t, dt)
            node.cpu_s += min(node_rate, float(node.cpu_cores)) * dt

    @staticmethod
    def _cpu_want(namespace: str, c: Container, r: Replica | None,
                  contention: float) -> tuple[float, float]:
        if namespace == "batch":
            return 1.5 + 150.0 * contention, 0.0
        if namespace == "inference":
            want = 0.3 if r is None or not r.up else 2.0 + 6.0 * min(r.rho, 1.5)
        elif namespace == "training":
            want = 18.0
        else:
            want = 0.15
        over = max(0.0, want / c.cpu_quota_cores - 0.9) * 5.0 if c.cpu_quota_cores else 0.0
        victim = namespace in ("inference", "training")
        throttled = min(0.95, over + (0.05 + 0.75 * contention if victim and contention else 0.0))
        return want, throttled

    def _memory(self, c: Container, r: Replica | None, t: float, dt: float) -> None:
        oom_i = self._intensity("oom_kill", r.key) if r is not None else 0.0
        if r is not None and not r.up:
            c.leak_bytes = 0.0
            c.mem_ws_bytes = 0.1 * c.base_mem_bytes
        else:
            c.leak_bytes += (c.mem_limit_bytes - c.base_mem_bytes) * dt * oom_i / 90.0
            c.mem_ws_bytes = c.base_mem_bytes * self._noise(0.005) + c.leak_bytes
            if c.mem_ws_bytes >= c.mem_limit_bytes:
                c.oom_events += 1
                c.leak_bytes = 0.0
                c.mem_ws_bytes = c.mem_limit_bytes
                if r is not None:
                    r.up = False
                    r.down_until = t + OOM_RELOAD_S
        c.mem_rss_bytes = 0.8 * c.mem_ws_bytes
        c.mem_cache_bytes = 0.3 * c.base_mem_bytes

    # ---- Ceph ---------------------------------------------------------------------------

    def ceph_ready(self, t: float | None = None) -> bool:
        """The mgr serves /metrics only after its first collection."""
        return (self.t if t is None else t) >= self.spec.start_s + self.spec.ceph_ready_after_s

    def _ceph(self, t: float, dt: float) -> None:
        n = max(len(self.osds), 1)
        job = self.training
        read_ops = (400.0 + (300.0 if job is not None and job.up else 0.0)) / n
        write_ops = 150.0 / n
        for o in self.osds:
            i = self._intensity("ceph_slow_ops", f"osd.{o.id}")
            o.latency_factor = 1.0 + 60.0 * i
            r_lat = 0.002 * o.latency_factor * self._noise(0.05)
            w_lat = 0.006 * o.latency_factor * self._noise(0.05)
            o.apply_ms = round(w_lat * 1000.0 * 0.4, 0)
            o.commit_ms = round(w_lat * 1000.0 * 0.6, 0)
            started = [f.start_s for f in self.faults
                       if f.kind == "ceph_slow_ops" and f.target == f"osd.{o.id}" and f.active(t)]
            blocked = bool(started) and t - min(started) >= CEPH_COMPLAINT_S
            o.slow_ops = max(1, round(write_ops * i * 2.0)) if blocked else 0
            c = o.counters
            for name, value in (
                ("op_r", read_ops * dt), ("op_w", write_ops * dt),
                ("op_r_latency_sum", read_ops * dt * r_lat),
                ("op_w_latency_sum", write_ops * dt * w_lat),
                ("op_out_bytes", read_ops * dt * 4.0e6), ("op_in_bytes", write_ops * dt * 1.0e6),
            ):
                c[name] = c.get(name, 0.0) + value

    # ---- queries ------------------------------------------------------------------------

    def replica(self, key: str) -> Replica:
        """The replica named ``<service>/<index>``."""
        for r in self.replicas:
            if r.key == key:
                return r
        raise KeyError(key)

    def gpus(self) -> Iterable[Gpu]:
        """Every GPU of the fleet, node by node."""
        for n in self.nodes:
            yield from n.gpus

    def ports(self) -> Iterable[Port]:
        """Every RDMA port of the fleet."""
        for n in self.nodes:
            yield from n.ports
