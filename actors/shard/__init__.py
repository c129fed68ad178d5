"""Tensor parallelism: a replica's model split over N shards (Megatron-style, torch.distributed).

sharding.py  the pass that shards a built LlamaForCausalLM for rank r of N (the model itself
             knows nothing of tensor parallelism); check_tensor_parallel validates N
loader.py    per-rank weights: meta model -> shard_model -> read only the rank's slices
context.py   ShardContext (rank, world size, groups) and joining the replica's process group
parallel.py  ShardParallel, the TensorParallel hook ModelRunner takes (the engine imports no shard)
step.py      the packed step (header + index tensors) rank 0 sends every step
runner.py    StepChannel, ShardedRunner (rank 0: send, then its own forward), follow() (rank k)
worker.py    ShardWorker: the Ray actor of a rank > 0
engine.py    build_sharded_engine / close_sharded_engine (placement group + workers)
"""
