"""The device tier of multi-LoRA serving: `max_loras` adapter slots in a pool of their own, and the
hooks that add each step's LoRA deltas to the model's fused projections (kernels.ops.add_lora:
the Triton SGMV kernels on a GPU, their torch twin on CPU).

Layout (kernels.lora_meta): per layer and projection group (qkv, o, gate_up, down) one A pool and
one B pool; slot s owns max_lora_rank rank-rows of each projection. The memory is reserved for the
maximum rank, but the kernels read only an adapter's own rank (`ranks[s, p]`): mixed ranks cost
no padded compute. The offset tables are the same for every layer and are built once.
Chosen over S-LoRA's unified paging with the KV blocks for now: simpler, and the KV pool is
untouched; not measured against it (stated in docs/lora.md).

Residency: an adapter a running request uses is never evicted; the least recently used of the
others makes room. The scheduler admits at most `max_loras` distinct adapters at once, so a
step's adapters always fit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import torch
from torch import nn

from actors.common.config import LoRAConfig
from actors.lora.adapter import GROUPS, PLACE, LoRAAdapter, module_dims
from actors.models.config import ModelArchConfig
from kernels import ops
from kernels.lora_meta import LoRABatch, LoRAWeights, prepare_lora_batch


class AdapterPool:
    def __init__(
        self, arch: ModelArchConfig, lora: LoRAConfig, dtype: torch.dtype, device: torch.device
    ) -> None:
        s, r = lora.max_loras, lora.max_lora_rank
        self.num_slots, self.max_rank, self.device = s, r, device
        self.out_dims = {g: [module_dims(arch, m)[1] for m in ms] for g, ms in GROUPS.items()}
        self._in_dim = {g: module_dims(arch, ms[0])[0] for g, ms in GROUPS.items()}
        self._ranks = {g: torch.zeros(s, len(ms), dtype=torch.int32) for g, ms in GROUPS.items()}
        self._scales = {g: torch.zeros(s, len(ms)) for g, ms in GROUPS.items()}
        self._ranks_dev = {g: t.to(device) for g, t in self._ranks.items()}
        self._scales_dev = {g: t.to(device) for g, t in self._scales.items()}
        self._a_offsets, self._b_offsets, self._b_base = {}, {}, {}
        for g, outs in self.out_dims.items():
            rows = torch.arange(s)[:, None, None] * r + torch.arange(r)  # [S, 1, R]
            p = torch.arange(len(outs))[None, :, None]  # [1, P, 1]
            self._a_offsets[g] = ((p * s * r + rows) * self._in_dim[g]).to(device)  # [S, P, R]
            base = [0]
            for out in outs:
                base.append(base[-1] + s * r * out)
            self._b_base[g] = base
            width = torch.tensor(outs)[None, :, None]
            self._b_offsets[g] = (torch.tensor(base[:-1])[None, :, None] + rows * width).to(device)
        # Per layer and group: A pool [P * S * R, in_dim]; B pool flat, region p: S*R rows of out_p.
        self._a = [
            {g: torch.zeros(len(o) * s * r, self._in_dim[g], dtype=dtype, device=device)
             for g, o in self.out_dims.items()}
            for _ in range(arch.num_layers)
        ]  # fmt: skip
        self._b = [
            {g: torch.zeros(self._b_base[g][-1], dtype=dtype, device=device) for g in GROUPS}
            for _ in range(arch.num_layers)
        ]
        self._slot_of: dict[str, int] = {}
        self._version: dict[str, str] = {}
        self._lru: OrderedDict[str, None] = OrderedDict()  # resident adapters, oldest use first
        self._free = list(range(s - 1, -1, -1))
        # GPU: prefetches copy on a side stream; a step that uses one first waits for its event.
        self._side = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._pending: dict[str, torch.cuda.Event] = {}
        self.num_loads = 0
        self.num_evictions = 0
        self.num_prefetches = 0

    # ---- residency ------------------------------------------------------------------------------

    def resident(self) -> list[str]:
        return list(self._lru)

    def ensure(self, adapters: Iterable[LoRAAdapter]) -> dict[str, int]:
        """Slots for `adapters` (the ones running requests use), loading what is not resident and
        evicting only adapters outside this set. ValueError when they are more than the slots."""
        needed = {a.name: a for a in adapters}
        if len(needed) > self.num_slots:
            raise ValueError(f"adapters: {len(needed)} in use, max_loras is {self.num_slots}")
        for name, adapter in needed.items():
            if self._version.get(name) != adapter.version:
                if name in self._slot_of:
                    self.evict(name)
                self._load(adapter, self._take_slot(needed))
            event = self._pending.pop(name, None)
            if event is not None:  # prefetched on the side stream: the step waits for it
                torch.cuda.current_stream(self.device).wait_event(event)
            self._lru.move_to_end(name)
        return {name: self._slot_of[name] for name in needed}

    def prefetch(self, adapters: Iterable[LoRAAdapter], keep: set[str]) -> None:
        """Load adapters that queued requests will need, before they are scheduled: into free
        slots, or slots of adapters outside `keep` (what running and queued requests use); on a
        GPU on a side stream, so the copies overlap the steps."""
        for adapter in adapters:
            if self._version.get(adapter.name) == adapter.version:
                continue
            if not self._free:
                victim = next((n for n in self._lru if n not in keep), None)
                if victim is None:
                    return
                self.evict(victim)
            if adapter.name in self._slot_of:
                self.evict(adapter.name)  # an older version
            slot = self._free.pop()
            if self._side is None:
                self._load(adapter, slot)
            else:
                with torch.cuda.stream(self._side):
                    self._load(adapter, slot)
                    self._pending[adapter.name] = torch.cuda.Event()
                    self._pending[adapter.name].record(self._side)
            self.num_prefetches += 1

    def evict(self, name: str) -> None:
        slot = self._slot_of.pop(name)
        self._pending.pop(name, None)
        del self._version[name], self._lru[name]
        for g in GROUPS:
            self._ranks[g][slot] = 0
            self._ranks_dev[g][slot] = 0
        self._free.append(slot)
        self.num_evictions += 1

    def _take_slot(self, keep: dict[str, LoRAAdapter]) -> int:
        if not self._free:
            victim = next(n for n in self._lru if n not in keep)  # ensure() checked the count
            self.evict(victim)
        return self._free.pop()

    def _load(self, adapter: LoRAAdapter, slot: int) -> None:
        r_max = self.max_rank
        for g in GROUPS:
            self._ranks[g][slot] = 0
        for (layer, module), (a, bt) in adapter.weights.items():  # [r, in], [r, out]
            g, p = PLACE[module]
            rank, out = a.shape[0], self.out_dims[g][p]
            first = (p * self.num_slots + slot) * r_max  # A row of (slot, p, 0)
            self._a[layer][g][first : first + rank].copy_(a, non_blocking=True)
            start = self._b_base[g][p] + slot * r_max * out
            pool = self._b[layer][g]
            pool[start : start + rank * out].view(rank, out).copy_(bt, non_blocking=True)
            self._ranks[g][slot, p] = rank
            self._scales[g][slot, p] = adapter.scaling
        for g in GROUPS:
            self._ranks_dev[g][slot].copy_(self._ranks[g][slot])
            self._scales_dev[g][slot].copy_(self._scales[g][slot])
        self._slot_of[adapter.name] = slot
        self._version[adapter.name] = adapter.version
        self._lru[adapter.name] = None
        self.num_loads += 1

    # ---- the step -------------------------------------------------------------------------------

    def weights(self, layer: int, group: str) -> LoRAWeights:
        return LoRAWeights(
            self._a[layer][group],
            self._a_offsets[group],
            self._b[layer][group],
            self._b_offsets[group],
            self._ranks_dev[group],
            self._scales_dev[group],
        )

    def batch(self, token_slots: torch.Tensor) -> LoRABatch:  # [T] int32, -1 = base only
        return prepare_lora_batch(token_slots.to(self.device), self.num_slots)


class LoRAHooks:
    """Forward hooks on each layer's four fused projections: while `batch` is set (a step with
    adapter tokens), each adds its LoRA delta to the projection's output in place."""

    def __init__(self, model: nn.Module, pool: AdapterPool) -> None:
        self.pool = pool
        self.batch: LoRABatch | None = None
        self._weights: dict[tuple[int, str], LoRAWeights] = {}
        for i, layer in enumerate(model.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            pairs = {"qkv": attn.qkv_proj, "o": attn.o_proj}
            pairs |= {"gate_up": mlp.gate_up_proj, "down": mlp.down_proj}
            for group, module in pairs.items():
                self._weights[(i, group)] = pool.weights(i, group)
                module.register_forward_hook(self._hook(i, group))

    def _hook(self, layer: int, group: str):
        weights, out_dims = self._weights[(layer, group)], self.pool.out_dims[group]

        def add_delta(_m: nn.Module, inputs: tuple[torch.Tensor], out: torch.Tensor) -> None:
            if self.batch is not None:
                ops.add_lora(out, inputs[0], weights, self.batch, out_dims)  # out [T, sum(out)]

        return add_delta
