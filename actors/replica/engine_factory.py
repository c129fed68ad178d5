"""Builds a replica's engine in one function, so a tensor-parallel engine can slot in later."""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.engine.config import EngineConfig
from actors.engine.engine import LLMEngine


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything a replica needs to build its engine."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    tensor_parallel_size: int = 1

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size: must be >= 1, got {self.tensor_parallel_size}")


def build_engine(spec: ReplicaSpec) -> LLMEngine:
    """Build the engine a replica drives. Sharded engines (actors/shard) plug in here."""
    if spec.tensor_parallel_size != 1:
        raise ValueError(
            "tensor_parallel_size: this build runs single-shard replicas only "
            f"(got {spec.tensor_parallel_size}); actors/shard provides the sharded engine"
        )
    return LLMEngine(spec.engine)
