"""CUDA graphs for decode-only steps (GPU only).

At batch 1 an 8B model's decode step launches a few hundred small kernels; launched one by one
from Python, the launch gaps cost as much as the HBM reads. A CUDA graph replays the whole
step at once. Graphs are captured at fixed batch sizes over static input buffers; a step of B
decodes is padded to the next captured size, with padding rows that write no KV (slot -1) and
attend over nothing (seq_len 0). The attention launch shape is fixed by passing the model's
max length as `max_seq_len`, so one graph serves every context length.
"""

from __future__ import annotations

import logging

import torch

from actors.engine.input_batch import InputBatch
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
    ) -> None:
        self.model = model
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
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}  # [b, V] fp32, written by each replay

    def _forward(self, b: int) -> torch.Tensor:  # [b, V]
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
        for b in reversed(self.sizes):
            self._forward(b)  # compiles the kernels and settles lazy state outside the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.logits[b] = self._forward(b)
            pool = graph.pool()
            self.graphs[b] = graph
        torch.cuda.synchronize()
        logger.info("captured decode CUDA graphs for batch sizes %s", self.sizes)

    def run(self, batch: InputBatch) -> torch.Tensor:
        """Replays the smallest graph that fits a batch of one token per chunk (host tensors).

        Returns logits [B, V] fp32 for every row, as a fresh tensor: the graph's own output
        buffer is overwritten by the next replay.
        """
        n = batch.num_tokens
        b = next(s for s in self.sizes if s >= n)
        width = batch.attn.block_tables.shape[1]
        self.input_ids[:n].copy_(batch.input_ids, non_blocking=True)
        self.positions[:n].copy_(batch.positions, non_blocking=True)
        self.slots[:n].copy_(batch.attn.slot_mapping, non_blocking=True)
        self.slots[n:b].fill_(-1)
        self.seq_lens[:n].copy_(batch.attn.seq_lens, non_blocking=True)
        self.seq_lens[n:b].fill_(0)
        self.block_tables[:n, :width].copy_(batch.attn.block_tables, non_blocking=True)
        self.graphs[b].replay()
        return self.logits[b][:n].clone()
