"""Control-plane benchmark: local routing on the ClusterView the controller streams, at N
synthetic replicas (CPU only; not a test).

  python bench/control_plane.py [--replicas 100] [--policy least_load] [--seconds 3]
                                [--out bench/results/control_plane.json]

Processes: the controller (real ControllerHost, real gRPC) in one; N synthetic replicas pushing
real load reports over gRPC at the configured interval in another; the measuring routers here.
Measures (a) p50/p99 added latency per decision and decisions/s for Router.decide on the
streamed view; (b) view-stream cost (messages/s, bytes per view); (c) herding: two routers sharing
one stale view dispatch a burst; with their in-flight counts the burst spreads, without them it
lands on one replica. (Asking the controller per request, a `Route` RPC, was measured against this
before it was removed: docs/control-plane-notes.md has those figures.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import platform
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.common.types import LoadReport
from actors.replica.reporter import ControllerLink
from orchestrator.config.load import parse_config
from orchestrator.controller.client import ControllerClient
from orchestrator.controller.deployment import ConfigUpdater
from orchestrator.controller.host import ControllerHost
from orchestrator.controller.router import Router
from orchestrator.controller.settings import ControllerSettings
from orchestrator.controller.wire import ViewUpdate, update_to_pb
from policies.cluster_view import ReplicaIdentity, ReplicaLoad, RequestMeta
from policies.dispatch import make_dispatch_policy


class NoReplicaBackend:
    """The bench runs desired=0: its synthetic replicas register themselves over gRPC."""

    def create_replica(self, replica_id: str, settings: ControllerSettings, address: str) -> None:
        raise RuntimeError("the benchmark never asks for replicas")

    def list_replicas(self) -> list[str]:
        return []

    def is_alive(self, replica_id: str) -> bool:
        return False

    def stop_replica(self, replica_id: str) -> None:
        return None

    def kill_replica(self, replica_id: str) -> None:
        return None


def run_controller(policy: str, unhealthy_after_s: float, conn: Any) -> None:
    cfg = parse_config(
        f"replicas: {{count: 0}}\ndispatch: {{policy: {policy}}}\n"
        "server: {max_queue_per_replica: 1000000, admin_port: 0}\n"
    )
    settings = ControllerSettings(unhealthy_after_s=unhealthy_after_s, admin_port=0)
    host = ControllerHost(settings, NoReplicaBackend(), ConfigUpdater(cfg))
    conn.send(host.address)
    conn.recv()  # run until the parent says stop
    host.stop()


def synthetic_load(replica_id: str, rng: random.Random, seq: int) -> LoadReport:
    running = rng.randint(0, 64)
    address = f"10.0.{int(replica_id[1:]) // 250}.{int(replica_id[1:]) % 250}:7000"
    load = ReplicaLoad(
        running=running,
        waiting=rng.randint(0, 8),
        kv_blocks_free=rng.randint(0, 8000),
        kv_blocks_total=8000,
        block_size=16,
        tokens_in_flight=running * 600,
        step_time_ms=rng.uniform(10, 40),
        max_running=256,
        prefix_hashes=frozenset(f"{rng.getrandbits(64):016x}" for _ in range(32)),
    )
    return LoadReport(ReplicaIdentity(replica_id, address, incarnation="bench"), seq, load)


def run_reporters(address: str, replicas: int, interval_s: float, stop: Any) -> None:
    """All synthetic replicas from one thread: N reports every interval, spread evenly."""
    link = ControllerLink(address, timeout_s=5.0)
    rng = random.Random(0)
    ids = [f"r{i:03d}" for i in range(replicas)]
    for seq, rid in enumerate(ids):
        link.register(synthetic_load(rid, rng, seq))
    seq = replicas
    gap = interval_s / replicas
    next_at = time.perf_counter()
    while not stop.is_set():
        for rid in ids:
            seq += 1
            if not link.report(synthetic_load(rid, rng, seq)):
                link.register(synthetic_load(rid, rng, seq))
            next_at += gap
            delay = next_at - time.perf_counter()
            if delay > 0:
                stop.wait(delay)  # paces reports at the configured interval


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ordered = sorted(samples_s)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3  # noqa: E731
    return {"p50_ms": pick(0.5), "p90_ms": pick(0.9), "p99_ms": pick(0.99), "n": len(ordered)}


def meta(i: int, rng: random.Random) -> RequestMeta:
    hashes = tuple(f"{rng.getrandbits(64):016x}" for _ in range(8))
    return RequestMeta(
        f"b{i}", num_prompt_tokens=rng.randint(50, 2000), max_tokens=200, prefix_hashes=hashes
    )


def bench_local(address: str, seconds: float) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        router = Router(address)
        await router.start(wait_s=10)
        rng = random.Random(3)
        metas = [meta(i, rng) for i in range(2000)]
        samples = []
        updates0 = router.num_updates
        deadline = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            outcome = router.decide_now(metas[i % len(metas)])
            samples.append(time.perf_counter() - t0)
            assert outcome.result is not None
            router.release(outcome.result.replica_id)
            i += 1
            if i % 32 == 0:
                await asyncio.sleep(0)  # let the view stream in, as an ingress loop would
        views = router.num_updates - updates0
        size = len(update_to_pb(ViewUpdate(router.view, "x", {})).SerializeToString())
        await router.close()
        return {
            **percentiles(samples),
            "decisions_per_s": len(samples) / seconds,
            "views_per_s": views / seconds,
            "view_bytes": size,
        }

    return asyncio.run(run())


def bench_herding(address: str, policy: str, burst: int) -> dict[str, Any]:
    """A burst dispatched on one stale view (no report lands during it).

    `one_router` is the reference; `two_routers` interleave their dispatches, each counting only
    its own; `without_inflight_counts` is a router that forgets its dispatches (pure stale view).
    Not herding means two routers concentrate no more than about twice what one router does.
    """
    snapshot = ControllerClient(address).view_update()
    frozen = ViewUpdate(snapshot.view, policy, {"max_queue": 1000000})
    rng = random.Random(4)
    metas = [meta(i, rng) for i in range(burst)]
    results: dict[str, Any] = {"burst": burst, "replicas": len(snapshot.view.replicas)}
    for mode, count in (("one_router", 1), ("two_routers", 2), ("without_inflight_counts", 2)):
        routers = [Router.from_snapshot(frozen) for _ in range(count)]
        counts: Counter = Counter()
        for i, m in enumerate(metas):
            router = routers[i % count]
            if mode == "without_inflight_counts":
                router.forget_dispatches()
            counts[router.decide_now(m).result.replica_id] += 1
        results[mode] = {"max_per_replica": max(counts.values()), "replicas_used": len(counts)}
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--replicas", type=int, default=100)
    ap.add_argument("--policy", default="least_load")
    ap.add_argument("--report-interval", type=float, default=0.5)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--burst", type=int, default=200)
    ap.add_argument("--out", default="bench/results/control_plane.json")
    args = ap.parse_args()
    make_dispatch_policy(args.policy)  # fail fast on a bad name
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    controller = ctx.Process(target=run_controller, args=(args.policy, 30.0, child), daemon=True)
    controller.start()
    address = parent.recv()
    stop = ctx.Event()
    reporters = ctx.Process(
        target=run_reporters, args=(address, args.replicas, args.report_interval, stop), daemon=True
    )
    reporters.start()
    client = ControllerClient(address)
    client.wait_for_replicas(args.replicas, 60)
    client.close()
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {mp.cpu_count()} cores (CPU)",
        "command": " ".join(["python"] + sys.argv),
        "replicas": args.replicas,
        "policy": args.policy,
        "report_interval_s": args.report_interval,
        "local_router": bench_local(address, args.seconds),
        "herding": bench_herding(address, args.policy, args.burst),
    }
    stop.set()
    reporters.join(5)
    parent.send("stop")
    controller.join(10)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
