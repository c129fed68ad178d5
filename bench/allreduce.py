"""Latency of one decode-sized all-reduce between tensor-parallel shards (a 2+ GPU host).

  python bench/allreduce.py [--gpus 2] [--tokens 1,8,32,128,256] [--hidden 4096] [--out ar.json]

For [T, hidden] bf16 (what a row-parallel layer reduces at a decode step of T requests), the
time per all-reduce when 64 of them run back to back inside one CUDA graph (a 32-layer model's
step), for NCCL (torch.distributed) and for the symmetric-memory one-shot reducer
(actors/shard/allreduce.py), plus NCCL launched eagerly. Checks both sums against each other.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PER_STEP = 64  # two row-parallel reductions per layer, 32 layers
REPLAYS = 50


def _nccl(x: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(x)
    return x


def _required(
    reducer: Callable[[torch.Tensor], torch.Tensor | None],
) -> Callable[[torch.Tensor], torch.Tensor]:
    def call(x: torch.Tensor) -> torch.Tensor:
        out = reducer(x)
        assert out is not None, "the benchmark sizes must fit the reducer"
        return out

    return call


def graph_us(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    """Microseconds per call, 64 calls captured in one graph, replayed REPLAYS times."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn(x.clone())  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = x
        for _ in range(PER_STEP):
            y = fn(y) * 0.5  # keep values bounded; a chain like the layers' residual stream
    graph.replay()
    torch.cuda.synchronize()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(REPLAYS):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / (REPLAYS * PER_STEP) * 1e6


def eager_us(x: torch.Tensor) -> float:
    for _ in range(10):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(REPLAYS * 4):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / (REPLAYS * 4) * 1e6


def worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    from actors.shard.allreduce import SymmMemAllReduce

    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    dist.init_process_group(
        "nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, device_id=device
    )
    reducer: SymmMemAllReduce | None
    try:
        reducer = SymmMemAllReduce(dist.group.WORLD, device, torch.bfloat16, 4 << 20)
        setup_error = None
    except Exception as exc:  # reported beside the NCCL figures
        reducer, setup_error = None, repr(exc)
    rows = []
    for t in (int(v) for v in args.tokens.split(",")):
        x = torch.randn(t, args.hidden, device=device, dtype=torch.bfloat16)
        row: dict = {"tokens": t, "bytes": x.numel() * 2}
        row["nccl_eager_us"] = eager_us(x.clone())
        row["nccl_graph_us"] = graph_us(_nccl, x)
        if reducer is not None:
            got = reducer(x)
            want = _nccl(x.clone())
            assert got is not None
            row["symm_max_abs_diff"] = float((got.float() - want.float()).abs().max())
            row["symm_one_shot_graph_us"] = graph_us(_required(reducer), x)
        rows.append(row)
        if rank == 0:
            print(json.dumps(row), flush=True)
    if rank == 0:
        result = {
            "date": time.strftime("%Y-%m-%d"),
            "gpu": torch.cuda.get_device_name(device),
            "world_size": world,
            "hidden": args.hidden,
            "per_step": PER_STEP,
            "symm_setup_error": setup_error,
            "rows": rows,
        }
        Path(out).write_text(json.dumps(result, indent=2))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--tokens", default="1,8,32,128,256")
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "allreduce.json"))
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(args.gpus, port, args, args.out), nprocs=args.gpus)


if __name__ == "__main__":
    main()
