"""Cost of one tensor-parallel step broadcast (rank 0 -> worker) over gloo, on CPU.

  python bench/tp_broadcast.py [--batches 1,32,128] [--iters 200]

Two processes; rank 0 broadcasts a decode step's StepMessage (each request ~1100 tokens of
context, 70 blocks) with broadcast_object_list, as ShardedRunner does; rank 1 unpickles it and
turns it back into a SchedulerOutput. Prints the p50 per step and the pickled size.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import sys
import time
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.shard.step import StepMessage, StepRequest


def decode_step(batch: int) -> StepMessage:
    reqs = [(StepRequest(f"r{i}", 1100, 1101, list(range(70)), [5]), 1) for i in range(batch)]
    return StepMessage(chunks=reqs)


def worker(rank: int, batch: int, iters: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    msg = decode_step(batch) if rank == 0 else None
    times = []
    for _ in range(iters):
        dist.barrier()
        t0 = time.perf_counter()
        box = [msg]
        dist.broadcast_object_list(box, src=0)
        if rank == 1:
            box[0].to_schedule()
        times.append(time.perf_counter() - t0)
    if rank == 1:
        size = len(pickle.dumps(decode_step(batch)))
        print(f"batch {batch}: {statistics.median(times) * 1e3:.3f} ms p50, {size} bytes pickled")
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,32,128")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--port", type=int, default=29555)
    args = ap.parse_args()
    for batch in (int(b) for b in args.batches.split(",")):
        mp.spawn(worker, args=(batch, args.iters, args.port), nprocs=2)


if __name__ == "__main__":
    main()
