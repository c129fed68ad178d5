"""CUDA graphs for decode-only steps (GPU only).

At batch 1 an 8B model's decode step launches a few hundred small kernels; launched one by one
from Python, the launch gaps cost as much as the HBM reads. A CUDA graph replays the whole
step at once. Graphs are captured at fixed batch sizes over static input buffers; a step of B
decodes is padded to the next captured size, with padding rows that write no KV (slot -1) and
attend over nothing (seq_len 0). The attention launch shape is fixed by passing the model's
max length as `max_seq_len`, so one graph serves every context length.

With LoRA, each size is captured twice: once as the base model, once with the adapter hooks on,
reading each row's adapter slot from a static buffer (padding rows: -1, base only). The LoRA
kernels' launch grid depends only on (batch size, number of slots) and the adapter pool never
moves, so one graph serves every mix of adapters; a step without adapter tokens replays the
base graph and pays nothing for LoRA.
"""

from __future__ import annotations

import logging

import torch

from actors.engine.input_batch import InputBatch
from actors.lora.pool import LoRAHooks
from actors.models.attention import AttentionMetadata, KVCache
from actors.models.llama import LlamaForCausalLM

logger = logging.getLogger(__name__)


def capture_sizes(max_batch: int) -> list[int]:
    sizes = [b for b in (1, 2, 4, 8) if b <= max_batch]
    sizes += list(range(16, max_batch + 1, 16))
    if sizes[-1] < max_batch:
        sizes.append(max_batch)
    return sizes


class DecodeGraphs:
    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_caches: list[KVCache],
        *,
        max_batch: int,
        max_model_len: int,
        block_size: int,
        device: torch.device,
        lora: LoRAHooks | None = None,
    ) -> None:
        self.model = model
        self.lora = lora
        self.kv_caches = kv_caches
        self.max_model_len = max_model_len
        self.sizes = capture_sizes(max_batch)
        self.max_batch = self.sizes[-1]
        width = -(-max_model_len // block_size)
        b = self.max_batch
        i64 = {"dtype": torch.int64, "device": device}
        self.input_ids = torch.zeros(b, **i64)  # [Bmax]
        self.positions = torch.zeros(b, **i64)  # [Bmax]
        self.slots = torch.full((b,), -1, **i64)  # [Bmax]
        self.block_tables = torch.zeros(b, width, dtype=torch.int32, device=device)
        self.seq_lens = torch.zeros(b, dtype=torch.int32, device=device)  # [Bmax]
        self.query_start_loc = torch.arange(b + 1, dtype=torch.int32, device=device)
        self.token_slots = torch.full((b,), -1, dtype=torch.int32, device=device)  # [Bmax]
        # Keyed by (batch size, with LoRA).
        self.graphs: dict[tuple[int, bool], torch.cuda.CUDAGraph] = {}
        self.logits: dict[tuple[int, bool], torch.Tensor] = {}  # [b, V] fp32, per replay

    def _forward(self, b: int, with_lora: bool) -> torch.Tensor:  # [b, V]
        if not with_lora:
            return self._forward_base(b)
        lora = self.lora
        assert lora is not None
        lora.batch = lora.pool.batch(self.token_slots[:b])  # tensor ops: captured in the graph
        try:
            return self._forward_base(b)
        finally:
            lora.batch = None

    def _forward_base(self, b: int) -> torch.Tensor:  # [b, V]
        meta = AttentionMetadata(
            slot_mapping=self.slots[:b],
            block_tables=self.block_tables[:b],
            query_start_loc=self.query_start_loc[: b + 1],
            seq_lens=self.seq_lens[:b],
            max_query_len=1,
            max_seq_len=self.max_model_len,
        )
        hidden = self.model(self.input_ids[:b], self.positions[:b], meta, self.kv_caches)
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def capture(self) -> None:
        """Largest first, so every smaller graph fits in the memory pool the first one made."""
        pool = None
        variants = (False, True) if self.lora is not None else (False,)
        for b in reversed(self.sizes):
            for with_lora in variants:
                # Compiles the kernels and settles lazy state outside the capture.
                self._forward(b, with_lora)
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self.logits[(b, with_lora)] = self._forward(b, with_lora)
                pool = graph.pool()
                self.graphs[(b, with_lora)] = graph
        torch.cuda.synchronize()
        logger.info(
            "captured decode CUDA graphs for batch sizes %s%s",
            self.sizes,
            " (base and LoRA)" if self.lora is not None else "",
        )

    def run(self, batch: InputBatch, token_slots: torch.Tensor | None = None) -> torch.Tensor:
        """Replays the smallest graph that fits a batch of one token per chunk (host tensors);
        `token_slots` [B] int32 (each row's adapter slot, -1: none) replays the LoRA graph.

        Returns logits [B, V] fp32 for every row, as a fresh tensor: the graph's own output
        buffer is overwritten by the next replay.
        """
        n = batch.num_tokens
        b = next(s for s in self.sizes if s >= n)
        with_lora = token_slots is not None
        if token_slots is not None:
            if self.lora is None:
                raise ValueError("token_slots: these graphs were captured without LoRA")
            self.token_slots[:n].copy_(token_slots, non_blocking=True)
            self.token_slots[n:b].fill_(-1)
        width = batch.attn.block_tables.shape[1]
        self.input_ids[:n].copy_(batch.input_ids, non_blocking=True)
        self.positions[:n].copy_(batch.positions, non_blocking=True)
        self.slots[:n].copy_(batch.attn.slot_mapping, non_blocking=True)
        self.slots[n:b].fill_(-1)
        self.seq_lens[:n].copy_(batch.attn.seq_lens, non_blocking=True)
        self.seq_lens[n:b].fill_(0)
        self.block_tables[:n, :width].copy_(batch.attn.block_tables, non_blocking=True)
        self.graphs[(b, with_lora)].replay()
        return self.logits[(b, with_lora)][:n].clone()
