"""Cost of handing one tensor-parallel decode step from rank 0 to a worker, on CPU (gloo).

  python bench/tp_broadcast.py [--batches 1,32,128] [--iters 200]

Two processes; a decode step of B requests (each ~1100 tokens of context, 70 blocks). Timed per
step, from a barrier until the worker holds inputs it can launch (the worker's critical path):
  pickled:  the previous design: rank 0 broadcasts a pickled per-request description with
            broadcast_object_list; the worker unpickles it and rebuilds the inputs (pack_batch);
  packed:   the current one (actors/shard/step.py): rank 0 builds the inputs, packs them into
            one int32 buffer and sends a header and the buffer; the worker unpacks views.
On GPU the packed buffer goes over NCCL instead of gloo (enqueued, the host does not wait).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.engine.input_batch import InputBatch, pack_batch
from actors.shard.context import ShardContext
from actors.shard.runner import StepChannel
from actors.shard.step import pack_payload, step_header, unpack_payload

CPU = torch.device("cpu")
CONTEXT, BLOCKS = 1100, 70


def description(batch: int) -> list[tuple[int, list[int], list[int]]]:
    """(start, blocks, new tokens) per request: what the pickled design sent."""
    return [(CONTEXT, list(range(i, i + BLOCKS)), [5]) for i in range(batch)]


def build(desc: list[tuple[int, list[int], list[int]]]) -> InputBatch:
    return pack_batch(
        token_ids=[t for _, _, toks in desc for t in toks],
        starts=[s for s, _, _ in desc],
        q_lens=[len(toks) for _, _, toks in desc],
        block_tables=[blocks for _, blocks, _ in desc],
        sampled=list(range(len(desc))),
        block_size=16,
        device=CPU,
    )


def pickled_step(rank: int, desc: list) -> None:
    box = [desc if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    if rank == 1:
        build(box[0])


def packed_step(rank: int, desc: list, channel: StepChannel) -> None:
    if rank == 0:
        batch = build(desc)
        channel.send(step_header(batch, [], []), pack_payload(batch), None)
    else:
        header, payload, _ = channel.receive()
        assert payload is not None
        unpack_payload(header, payload)


def worker(rank: int, batches: list[int], iters: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    channel = StepChannel(ShardContext(rank=rank, world_size=2), CPU)
    for batch in batches:
        desc = description(batch)
        row = {}
        for name in ("pickled", "packed"):
            times = []
            for _ in range(iters):
                dist.barrier()
                t0 = time.perf_counter()
                if name == "pickled":
                    pickled_step(rank, desc)
                else:
                    packed_step(rank, desc, channel)
                times.append(time.perf_counter() - t0)
            row[name] = statistics.median(times) * 1e3
        if rank == 1:
            print(
                f"batch {batch}: worker ready after {row['pickled']:.3f} ms pickled, "
                f"{row['packed']:.3f} ms packed (p50 of {iters})",
                flush=True,
            )
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,32,128")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--port", type=int, default=29555)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    mp.spawn(worker, args=(batches, args.iters, args.port), nprocs=2)


if __name__ == "__main__":
    main()
