"""Frozen configuration of an engine and of a replica around it, one dataclass per concern.

Torch-free: the controller builds these from the deployment YAML and ships them to replicas."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

EMBEDDED_MODEL = "fleetlm/tiny-llama"
MIN_SECRET_CHARS = 16


@dataclass(frozen=True)
class GrpcSecurity:
    """How a deployment's gRPC peers trust each other (actors/common/grpc_security.py).

    PEM paths: servers present `cert`/`key`; `ca` verifies peers (mutual TLS on servers). No
    cert and no ca: plaintext. `secret`: every call carries it and servers refuse calls
    without it; None: no check (in-process tests)."""

    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    secret: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("cert", "key", "ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"security.tls_{name}_file: no such file {path!r}")
        if self.secret is not None and len(self.secret) < MIN_SECRET_CHARS:
            raise ValueError(f"security.grpc_secret: at least {MIN_SECRET_CHARS} characters")

    @property
    def tls(self) -> bool:
        return self.cert is not None or self.ca is not None


def cache_root() -> Path:
    """fleetlm's cache directory: $FLEETLM_CACHE, else $XDG_CACHE_HOME/fleetlm, else
    ~/.cache/fleetlm (the embedded model, the generated admin token)."""
    if os.environ.get("FLEETLM_CACHE"):
        return Path(os.environ["FLEETLM_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fleetlm"


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


LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoRAConfig:
    """Multi-LoRA serving (actors/lora): adapters resident on the device at once, their rank."""

    max_loras: int = 0  # adapters on the device at once (distinct ones running); 0: LoRA off
    max_lora_rank: int = 16

    def __post_init__(self) -> None:
        if self.max_loras < 0:
            raise ValueError(f"max_loras: must be >= 0, got {self.max_loras}")
        if self.max_lora_rank < 1:
            raise ValueError(f"max_lora_rank: must be >= 1, got {self.max_lora_rank}")

    @property
    def enabled(self) -> bool:
        return self.max_loras > 0


@dataclass(frozen=True)
class EngineConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    enforce_eager: bool = False  # True: no CUDA graphs (debugging, and "before" benchmarks)


@dataclass(frozen=True)
class AdapterRef:
    """A LoRA adapter to serve: its name and PEFT directory (checked against allowed dirs by
    whoever made this)."""

    name: str
    path: str


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything a replica needs to build its engine."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    tensor_parallel_size: int = 1
    adapters: tuple[AdapterRef, ...] = ()  # loaded before the replica serves

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size: must be >= 1, got {self.tensor_parallel_size}")


@dataclass(frozen=True)
class MigrationSettings:
    """How a replica moves requests out and takes them in (actors/migration)."""

    transport: str = "auto"  # auto (cuda_ipc on GPU, else host) | host | cuda_ipc
    # Copy while the request decodes until what is left fits this pause (at the transfer rate
    # measured so far), or max_stages copies ran; then pause, copy the rest, commit.
    downtime_budget_ms: float = 20.0
    max_stages: int = 4
    max_concurrent: int = 2  # migrations per replica at once, each direction
    chunk_bytes: int = 32 << 20  # host transport: KV bytes per gRPC message
    reservation_timeout_s: float = 30.0  # a destination frees blocks no commit came for
    attach_timeout_s: float = 30.0  # ... and aborts a committed request nobody follows
    command_timeout_s: float = 10.0  # each source -> destination call

    def __post_init__(self) -> None:
        if self.transport not in ("auto", "host", "cuda_ipc"):
            raise ValueError(
                f"migration.transport: must be auto, host or cuda_ipc, got {self.transport!r}"
            )
        if self.max_stages < 0 or self.max_concurrent < 1 or self.chunk_bytes < 1:
            raise ValueError("migration: max_stages >= 0, max_concurrent >= 1, chunk_bytes >= 1")


@dataclass(frozen=True)
class ReplicaOptions:
    """How a replica serves and reports: its gRPC bind, TLS, and where the controller is."""

    bind_host: str = "127.0.0.1"
    # The host others dial; None: this node's IP as Ray knows it (for a wildcard bind_host).
    advertise_host: str | None = "127.0.0.1"
    port: int = 0
    report_interval_s: float = 0.5
    # One engine-loop iteration longer than this is a wedged engine (the replica is replaced).
    stall_after_s: float = 60.0
    security: GrpcSecurity | None = None
    # Where to look the controller up again when its address stops answering (it restarted).
    controller_name: str | None = None
    controller_namespace: str | None = None
    migration: MigrationSettings = field(default_factory=MigrationSettings)

    def __post_init__(self) -> None:
        if self.report_interval_s <= 0:
            raise ValueError(f"report_interval_s: must be > 0, got {self.report_interval_s}")
        if self.stall_after_s <= 0:
            raise ValueError(f"stall_after_s: must be > 0, got {self.stall_after_s}")
