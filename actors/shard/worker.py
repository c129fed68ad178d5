"""A shard worker: one Ray actor per tensor-parallel rank > 0 of a replica.

The class is plain (like ReplicaActor); `actors.shard.engine` wraps it with `ray.remote` and the
rank's resources inside the replica's placement group. `__init__` joins the replica's process
group and loads the rank's slice; `run()` follows rank 0's step broadcasts until the stop message.
"""

from __future__ import annotations

import logging

from actors.common.config import EngineConfig
from actors.engine.model_runner import ModelRunner, resolve_device
from actors.shard.context import backend_for, init_shard_group
from actors.shard.parallel import ShardParallel
from actors.shard.runner import follow

logger = logging.getLogger(__name__)


class ShardWorker:
    def __init__(self, config: EngineConfig, rank: int, world_size: int, init_method: str) -> None:
        logging.basicConfig(level=logging.INFO)
        backend = backend_for(resolve_device(config.device))
        self.ctx = init_shard_group(backend, init_method, rank, world_size)
        # The same graph choice as rank 0's LLMEngine: both ranks must capture the same steps.
        graphs = False if config.enforce_eager else None
        self.runner = ModelRunner(
            config, use_cuda_graphs=graphs, tensor_parallel=ShardParallel(self.ctx)
        )

    def run(self) -> int:
        """Blocks until rank 0 sends the stop message; returns the number of steps run."""
        return follow(self.runner, self.ctx)
