"""Frozen engine configuration, one dataclass per concern."""

from __future__ import annotations

from dataclasses import dataclass, field

EMBEDDED_MODEL = "fleetlm/tiny-llama"


@dataclass(frozen=True)
class ModelConfig:
    """What to load. `model` is a checkpoint directory or the embedded default's name."""

    model: str = EMBEDDED_MODEL
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    max_model_len: int | None = None  # None: the checkpoint's max_position_embeddings
    load_format: str = "auto"  # auto | safetensors | dummy
    seed: int = 0  # seeds dummy weights and the seeds of unseeded requests

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(
                f"dtype: must be auto, float32, bfloat16 or float16, got {self.dtype!r}"
            )
        if self.load_format not in ("auto", "safetensors", "dummy"):
            raise ValueError(
                f"load_format: must be auto, safetensors or dummy, got {self.load_format!r}"
            )
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len: must be >= 1, got {self.max_model_len}")


@dataclass(frozen=True)
class CacheConfig:
    """The paged KV cache: per layer K and V of [num_blocks, block_size, num_kv_heads, head_dim]."""

    block_size: int = 16
    gpu_memory_utilization: float = 0.9  # fraction of GPU memory the whole engine may use
    cpu_kv_cache_bytes: int = 256 << 20  # KV budget when running on CPU
    swap_space_bytes: int = 0  # host memory for swap preemption (0: recompute only)
    enable_prefix_caching: bool = True
    num_gpu_blocks_override: int | None = None  # tests force tiny caches with this

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size: must be a power of two, got {self.block_size}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization: must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.num_gpu_blocks_override is not None and self.num_gpu_blocks_override < 1:
            raise ValueError("num_gpu_blocks_override: must be >= 1")


@dataclass(frozen=True)
class SchedulerConfig:
    """Continuous batching with chunked prefill: one token budget per step, decodes first."""

    max_num_batched_tokens: int = 2048  # the per-step token budget
    max_num_seqs: int = 256  # bound on running requests
    preemption_mode: str = "recompute"  # recompute | swap

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens: must be >= 1")
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs: must be >= 1")
        if self.preemption_mode not in ("recompute", "swap"):
            raise ValueError(
                f"preemption_mode: must be recompute or swap, got {self.preemption_mode!r}"
            )


@dataclass(frozen=True)
class EngineConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    enforce_eager: bool = False  # True: no CUDA graphs (debugging, and "before" benchmarks)
