"""A low-latency all-reduce for the small tensors of decode steps (GPU, NVLink peers).

A row-parallel layer all-reduces [T, hidden] after every attention and MLP block: 64 times a step
for a 32-layer model. At decode sizes (T <= a few hundred) the cost is latency, not bandwidth,
and NCCL's ring/tree launch costs tens of microseconds each. PyTorch's symmetric memory gives
each rank a buffer its NVLink peers can read directly; its one-shot all-reduce reads every peer's
buffer and sums in one kernel. Inputs above `max_bytes` (prefill) keep using NCCL.

    FLEETLM_ALLREDUCE=nccl      (default) the process group's collective
    FLEETLM_ALLREDUCE=symm_mem  symmetric memory on CUDA when it sets up, else NCCL

NCCL stays the default until the one-shot path is measured on a multi-GPU host
(bench/allreduce.py, bench/tp.py); see docs/benchmarks.md.

The reducer is built once per runner and captured inside the decode CUDA graphs like any op.
"""

from __future__ import annotations

import logging
import os
import warnings

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

ENV = "FLEETLM_ALLREDUCE"
DEFAULT_MAX_BYTES = 1 << 20  # [256, 4096] bf16 is 2 MiB: larger decode batches stay on NCCL


class SymmMemAllReduce:
    """One-shot sum over a symmetric buffer; `__call__` returns None for inputs it cannot take."""

    def __init__(
        self,
        group: dist.ProcessGroup,
        device: torch.device,
        dtype: torch.dtype,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        import torch.distributed._symmetric_memory as symm_mem

        name = group.group_name
        enable = getattr(symm_mem, "enable_symm_mem_for_group", None)
        if enable is not None:  # needed by older torch, a deprecated no-op by newer
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                enable(name)
        numel = max_bytes // torch.empty((), dtype=dtype).element_size()
        self._buf = symm_mem.empty(numel, dtype=dtype, device=device)  # [numel]
        symm_mem.rendezvous(self._buf, name)
        self._group_name = name
        self._dtype = dtype

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        n = x.numel()
        if n > self._buf.numel() or x.dtype != self._dtype:
            return None
        buf = self._buf[:n]
        buf.copy_(x.reshape(-1))
        out = torch.ops.symm_mem.one_shot_all_reduce(buf, "sum", self._group_name)
        return out.view(x.shape)


def build_reducer(
    group: dist.ProcessGroup | None, device: torch.device, dtype: torch.dtype
) -> SymmMemAllReduce | None:
    """The fast path for this rank, or None (NCCL/gloo only) when it is off or cannot set up.

    Every rank must come to the same answer (rendezvous is collective): the setting is the
    replica's, and a failure to set up is a host-wide condition (no P2P between the GPUs).
    """
    mode = os.environ.get(ENV, "nccl")
    if mode not in ("nccl", "symm_mem"):
        raise ValueError(f"{ENV}: must be nccl or symm_mem, got {mode!r}")
    if mode == "nccl" or device.type != "cuda":
        return None
    try:
        return SymmMemAllReduce(group or dist.group.WORLD, device, dtype)
    except Exception as exc:  # an old torch, no NVLink P2P: NCCL still works
        logger.warning("symmetric-memory all-reduce unavailable, using NCCL: %s", exc)
        return None
