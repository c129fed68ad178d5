"""Multi-LoRA tables and per-step batching (torch only; the kernels live in kernels.lora).

For every token t whose adapter slot is `token_slots[t] >= 0`, and every projection p of a group
(q, k, v or gate, up; one projection for o and down):

    y[t, cols_p] += ((x[t] @ A_p^T) @ B_p^T) * scales[slot, p]

Pool layout (what the adapter pager fills; see LoRAWeights):
- `a_pool` is any contiguous tensor read as a flat array. Rank-row j of A_p (A_p is [r, in_dim])
  of the adapter in slot s is `in_dim` contiguous elements starting at element
  `a_offsets[s, p, j]`. Rows may sit anywhere: in separate pages of a pool, even in pages lent by
  the KV block pool (view a layer's cache as flat), as long as a row does not cross a page.
- `b_pool` likewise holds the rank-rows of B_p^T ([r, out_p]): row j is `out_p` contiguous
  elements at `b_offsets[s, p, j]`. A and B may share one pool tensor.
- `ranks[s, p]` is the adapter's rank for projection p (0: not targeted, e.g. an adapter on q and
  v only). Table width R = a_offsets.shape[2] bounds the rank; only the index table is padded to
  R, never the weights or the memory reads.
- `scales[s, p]` is alpha / r (fp32).
- Alignment: when in_dim is a multiple of ALIGN (8), every used A offset must be too; when every
  out_p is, every used B offset must be. The kernels then use 16-byte vector loads (a large share
  of their speed); rows packed back to back satisfy this by construction.

Batching: tokens are grouped by slot once per step (`prepare_lora_batch`, tensor ops only, no
GPU sync) into work items of at most BLOCK_M tokens of one adapter. Decode (every token its own
adapter) gives one item per token, prefill segments give full tiles; the same two kernels serve
both. The grid size depends only on (T, num_slots), so a captured CUDA graph stays valid.
Shrink writes s[T, P, R] in fp32 (split over in_dim with atomic adds); expand casts s to the
weights' dtype, as PEFT does, and adds into y in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kernels import checks

MAX_PROJECTIONS = 4
ALIGN = 8  # elements: rows (and dims) that are multiples of this get vectorized loads
BLOCK_M = 16  # tokens per work item; tl.dot needs at least 16 rows


@dataclass(frozen=True)
class LoRAWeights:
    """One projection group's adapter tables for one layer (layout in the module docstring)."""

    a_pool: torch.Tensor  # any shape, contiguous, read flat
    a_offsets: torch.Tensor  # [S, P, R] int64 element offsets of A rank-rows
    b_pool: torch.Tensor  # any shape, contiguous, read flat
    b_offsets: torch.Tensor  # [S, P, R] int64 element offsets of B^T rank-rows
    ranks: torch.Tensor  # [S, P] int32
    scales: torch.Tensor  # [S, P] float32


@dataclass(frozen=True)
class LoRABatch:
    """A step's tokens grouped by adapter slot; built once, shared by every layer and group."""

    token_slots: torch.Tensor  # [T] int32, -1 = base model only
    sorted_tokens: torch.Tensor  # [T] int32 token ids ordered by slot (base-only last)
    work_slot: torch.Tensor  # [W] int32 slot of each work item
    work_start: torch.Tensor  # [W] int32 first index into sorted_tokens
    work_rows: torch.Tensor  # [W] int32 tokens in the item (0: idle item)
    num_slots: int

    @property
    def num_work(self) -> int:
        return self.work_slot.shape[0]


def prepare_lora_batch(token_slots: torch.Tensor, num_slots: int) -> LoRABatch:
    """Groups tokens by slot into BLOCK_M-token work items with tensor ops (no host sync).

    W = cdiv(T, BLOCK_M) + min(T, num_slots) bounds the number of non-empty items; the rest are
    idle. Slots outside [-1, num_slots) are bad input: the kernels treat them as base-only.
    """
    checks.check_tensor("token_slots", token_slots, ndim=1, dtypes=checks.INDEX_DTYPES)
    if num_slots < 1:
        raise ValueError(f"num_slots: must be >= 1, got {num_slots}")
    dev = token_slots.device
    t = token_slots.shape[0]
    slots = token_slots.to(torch.int64)
    key = torch.where((slots < 0) | (slots >= num_slots), num_slots, slots)  # [T]
    order = torch.argsort(key, stable=True)  # [T]
    # scatter_add instead of bincount: bincount syncs on CUDA to size its output.
    counts = torch.zeros(num_slots + 1, dtype=torch.int64, device=dev)
    counts.scatter_add_(0, key, torch.ones_like(key))
    counts = counts[:num_slots]  # [S] tokens per slot
    seg_start = torch.cumsum(counts, 0) - counts  # [S]
    tiles = (counts + BLOCK_M - 1) // BLOCK_M  # [S]
    tile_end = torch.cumsum(tiles, 0)  # [S]
    w = -(-t // BLOCK_M) + min(t, num_slots)
    item = torch.arange(w, device=dev)
    slot = torch.searchsorted(tile_end, item, right=True)  # [W] in [0, S]; S: idle
    slot_c = slot.clamp(max=num_slots - 1)
    tile = item - (tile_end[slot_c] - tiles[slot_c])
    rows = (counts[slot_c] - tile * BLOCK_M).clamp(0, BLOCK_M)
    rows = torch.where(slot < num_slots, rows, 0)
    return LoRABatch(
        token_slots=token_slots,
        sorted_tokens=order.to(torch.int32),
        work_slot=slot_c.to(torch.int32),
        work_start=(seg_start[slot_c] + tile * BLOCK_M).to(torch.int32),
        work_rows=rows.to(torch.int32),
        num_slots=num_slots,
    )


def validate_lora_tables(w: LoRAWeights, in_dim: int, out_dims: Sequence[int]) -> None:
    """Value checks (syncs the device): ranks in [0, R], every used row inside its pool.

    The pager calls this when it writes the tables (page-in time), not per step: the kernels
    trust the values and would read out of bounds otherwise.
    """
    s, p, width = w.a_offsets.shape
    if len(out_dims) != p:
        raise ValueError(f"out_dims: expected {p} widths (one per projection), got {len(out_dims)}")
    ranks = w.ranks.cpu()
    if (ranks < 0).any() or (ranks > width).any():
        raise ValueError(f"ranks: must be in [0, {width}] (the offset tables' width)")
    used = torch.arange(width)[None, None, :] < ranks[:, :, None]  # [S, P, R]
    lens = {"a_offsets": torch.full((s, p, width), in_dim), "b_offsets": None}
    lens["b_offsets"] = torch.tensor(list(out_dims)).view(1, p, 1).expand(s, p, width)
    pools = {"a_offsets": w.a_pool, "b_offsets": w.b_pool}
    aligned = {"a_offsets": in_dim % ALIGN == 0, "b_offsets": all(d % ALIGN == 0 for d in out_dims)}
    for name, row_len in lens.items():
        offs = getattr(w, name).cpu()
        bad = used & ((offs < 0) | (offs + row_len > pools[name].numel()))
        if bad.any():
            idx = tuple(bad.nonzero()[0].tolist())
            raise ValueError(f"{name}: row {idx} lies outside its pool of {pools[name].numel()}")
        if aligned[name] and (used & (offs % ALIGN != 0)).any():
            raise ValueError(f"{name}: offsets must be multiples of {ALIGN} for these dims")


def check_lora_weights(w: LoRAWeights, dtype: torch.dtype, device: torch.device) -> tuple[int, int]:
    """Checks the tables' metadata; returns (num_slots, num_projections)."""
    for name in ("a_pool", "b_pool"):
        pool = getattr(w, name)
        if not isinstance(pool, torch.Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor, got {type(pool).__name__}")
        if pool.dtype != dtype or pool.device != device:
            raise ValueError(
                f"{name}: must be {dtype} on {device}, got {pool.dtype} on {pool.device}"
            )
        checks.check_contiguous(name, pool)
    checks.check_tensor("a_offsets", w.a_offsets, ndim=3, dtypes=(torch.int64,), device=device)
    s, p, _ = w.a_offsets.shape
    if not 1 <= p <= MAX_PROJECTIONS:
        raise ValueError(f"a_offsets: 1 to {MAX_PROJECTIONS} projections (dim 1), got {p}")
    checks.check_tensor("b_offsets", w.b_offsets, ndim=3, dtypes=(torch.int64,), device=device)
    if w.b_offsets.shape != w.a_offsets.shape:
        raise ValueError(
            f"b_offsets: shape {tuple(w.b_offsets.shape)} must equal a_offsets "
            f"{tuple(w.a_offsets.shape)}"
        )
    checks.check_tensor("ranks", w.ranks, ndim=2, dtypes=(torch.int32,), device=device)
    checks.check_tensor("scales", w.scales, ndim=2, dtypes=(torch.float32,), device=device)
    for name in ("ranks", "scales"):
        if getattr(w, name).shape != (s, p):
            raise ValueError(f"{name}: shape must be {(s, p)} (slots, projections)")
    for name in ("a_offsets", "b_offsets"):
        if getattr(w, name).stride(-1) != 1 and w.a_offsets.shape[2] > 1:
            raise ValueError(f"{name}: last dim must have stride 1")
    return s, p


def check_lora_batch(batch: LoRABatch, t: int, num_slots: int, device: torch.device) -> None:
    if not isinstance(batch, LoRABatch):
        raise ValueError(f"batch: expected a LoRABatch, got {type(batch).__name__}")
    if batch.token_slots.shape[0] != t:
        raise ValueError(f"batch: built for {batch.token_slots.shape[0]} tokens, got {t} rows")
    if batch.num_slots > num_slots:
        raise ValueError(
            f"batch: built for {batch.num_slots} slots, the tables hold only {num_slots}"
        )
    if batch.sorted_tokens.device != device:
        raise ValueError(f"batch: must be on {device}, got {batch.sorted_tokens.device}")
