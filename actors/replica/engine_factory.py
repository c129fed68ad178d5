"""Builds a replica's engine in one function, so a tensor-parallel engine can slot in later."""

from __future__ import annotations

from actors.common.config import ReplicaSpec
from actors.engine.engine import LLMEngine
from actors.shard.engine import build_sharded_engine, close_sharded_engine


def build_engine(spec: ReplicaSpec) -> LLMEngine:
    """Build the engine a replica drives: tensor_parallel_size > 1 adds N-1 shard actors
    (actors/shard) in a placement group next to this process, which is rank 0."""
    if spec.tensor_parallel_size != 1:
        engine = build_sharded_engine(spec.engine, spec.tensor_parallel_size)
    else:
        engine = LLMEngine(spec.engine)
    for ref in spec.adapters:  # an adapter that cannot load fails the start, naming it
        engine.add_adapter(ref.name, ref.path)
    return engine


def close_engine(engine: LLMEngine) -> None:
    """Releases what the engine holds outside this process (a sharded engine's shard actors).

    Call after the engine loop stopped stepping (no step may run concurrently)."""
    close_sharded_engine(engine)
