"""Builds a tensor-parallel engine: rank 0 in this process, ranks 1..N-1 as Ray shard actors.

    engine = build_sharded_engine(config, tensor_parallel_size=2)   # inside a Ray worker/driver
    ...                                                             # engine.step() / generate()
    close_sharded_engine(engine)                                    # stop message, free the GPUs

The shard actors sit in one STRICT_PACK placement group pinned to this process's node (one
bundle per rank > 0: `GPU: 1` on GPU, `CPU: 1` on CPU), so the all-reduces stay inside a host.
This process (the replica actor) is rank 0 and already holds its own GPU. Rank 0 runs the
scheduler, sampler and detokenizer; the workers only run the forward on their slice. One sharded
engine per process: the shards use the process's default torch.distributed group.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import replace

from actors.common.config import EngineConfig
from actors.engine.engine import LLMEngine
from actors.engine.model_runner import resolve_device
from actors.models.config import load_arch_config
from actors.models.embedded import resolve_model_path
from actors.shard.context import backend_for, init_shard_group
from actors.shard.runner import ShardedRunner
from actors.shard.sharding import check_tensor_parallel
from actors.shard.worker import ShardWorker

logger = logging.getLogger(__name__)

PLACEMENT_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def build_sharded_engine(config: EngineConfig, tensor_parallel_size: int) -> LLMEngine:
    """Rank 0's engine over `tensor_parallel_size` shards. Needs Ray (ray.init) for the others."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    n = tensor_parallel_size
    model_path = resolve_model_path(config.model.model)
    config = replace(config, model=replace(config.model, model=str(model_path)))
    check_tensor_parallel(load_arch_config(model_path), n)  # before reserving anything
    device = resolve_device(config.device)
    if not ray.is_initialized():
        raise ValueError(f"tensor_parallel_size: {n} shards need Ray (call ray.init first)")
    ip = ray.util.get_node_ip_address()
    on_gpu = device.type == "cuda"
    slot = {"GPU": 1.0} if on_gpu else {"CPU": 1.0}
    pg = placement_group([{**slot, f"node:{ip}": 0.001}] * (n - 1), strategy="STRICT_PACK")
    try:
        ray.get(pg.ready(), timeout=PLACEMENT_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError as exc:
        remove_placement_group(pg)
        raise ValueError(
            f"tensor_parallel_size: {n} needs {n - 1} more {next(iter(slot))} slot(s) on node "
            f"{ip} next to rank 0; none free after {PLACEMENT_TIMEOUT_S:.0f} s"
        ) from exc
    init_method = f"tcp://{ip}:{_free_port(ip)}"
    # Each worker sees only its own GPU (Ray sets CUDA_VISIBLE_DEVICES): "cuda" is that GPU.
    worker_config = replace(config, device="cuda") if on_gpu else config
    workers = [
        ray.remote(ShardWorker)
        .options(
            num_cpus=0 if on_gpu else 1,
            num_gpus=1 if on_gpu else 0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                pg, placement_group_bundle_index=rank - 1
            ),
        )
        .remote(worker_config, rank, n, init_method)
        for rank in range(1, n)
    ]
    try:
        ctx = init_shard_group(backend_for(device), init_method, 0, n)
        runner = ShardedRunner(config, ctx, use_cuda_graphs=False if config.enforce_eager else None)
    except BaseException:
        for w in workers:
            ray.kill(w)
        remove_placement_group(pg)
        raise
    runs = [w.run.remote() for w in workers]

    def release() -> None:
        steps = ray.get(runs, timeout=STOP_TIMEOUT_S)
        logger.info("shard workers stopped after %s steps", steps)
        for w in workers:
            ray.kill(w)
        remove_placement_group(pg)

    runner.on_close(release)
    logger.info("tensor-parallel engine: %d shards, %s over %s", n, init_method, ctx)
    return LLMEngine(config, runner=runner)


def close_sharded_engine(engine: LLMEngine) -> None:
    """Stops the shard workers of a sharded engine (no-op for a single-shard engine)."""
    runner = engine.runner
    if isinstance(runner, ShardedRunner):
        runner.close()
