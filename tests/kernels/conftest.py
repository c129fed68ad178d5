"""Kernel tests run the Triton kernels on CPU under Triton's interpreter.

Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when kernels.<kernel> is first
imported; this hook runs before the test modules here are imported. `pytest -m gpu` (a GPU host)
leaves it unset so the kernels compile for the GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("markexpr", "").strip() != "gpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")


@dataclass(frozen=True)
class PagedBatch:
    query: torch.Tensor  # [T, Hq, D]
    k_cache: torch.Tensor  # [N, bs, Hkv, D]
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # [B, max_blocks] int32, -1 past each request's blocks
    query_start_loc: torch.Tensor  # [B + 1] int32
    seq_lens: torch.Tensor  # [B] int32


def make_paged_batch(
    seed: int,
    q_lens: list[int],
    seq_lens: list[int],
    *,
    heads: tuple[int, int] = (4, 2),
    head_dim: int = 64,
    block_size: int = 16,
    dtype: torch.dtype = torch.float32,
    share_prefix: bool = True,
) -> PagedBatch:
    """Random cache with shuffled blocks, -1 holes past each request, and one shared block.

    With share_prefix, request 1's first block is request 0's (a prefix-cache hit) when both own
    at least one full block.
    """
    gen = torch.Generator().manual_seed(seed)
    hq, hkv = heads
    need = [-(-s // block_size) for s in seq_lens]
    n_blocks = sum(need) + 3  # spare blocks that nobody reads
    perm = torch.randperm(n_blocks, generator=gen).tolist()
    max_blocks = max(need, default=0) + 2
    tables = torch.full((len(seq_lens), max_blocks), -1, dtype=torch.int32)
    for i, n in enumerate(need):
        tables[i, :n] = torch.tensor([perm.pop() for _ in range(n)], dtype=torch.int32)
    full = [s >= block_size for s in seq_lens[:2]]
    if share_prefix and len(seq_lens) > 1 and all(full):
        tables[1, 0] = tables[0, 0]
    shape = (n_blocks, block_size, hkv, head_dim)
    qsl = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    return PagedBatch(
        query=torch.randn(sum(q_lens), hq, head_dim, generator=gen).to(dtype),
        k_cache=torch.randn(shape, generator=gen).to(dtype),
        v_cache=torch.randn(shape, generator=gen).to(dtype),
        block_tables=tables,
        query_start_loc=qsl,
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
    )


@pytest.fixture
def paged_batch():
    return make_paged_batch


def tolerance(dtype: torch.dtype) -> float:
    # bf16: 8 mantissa bits, and the interpreter truncates on downcast instead of rounding.
    return {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 3e-2}[dtype]


@pytest.fixture
def tol():
    return tolerance
