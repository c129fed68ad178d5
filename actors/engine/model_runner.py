"""ModelRunner: owns the device, the model and the paged KV cache; runs one scheduled step.

    runner = ModelRunner(engine_config)     # config.model.model must be a checkpoint directory
    logits = runner.execute(sched_out)      # [num chunks that sample, V] fp32, in chunk order

The KV cache is one tensor `[L, 2, num_blocks, block_size, Hkv, D]`; layer l's K and V are the
views `kv_cache[l, 0]` and `kv_cache[l, 1]`, each in the fixed kernel layout `[num_blocks,
block_size, Hkv, D]`. One tensor makes a block's whole KV (every layer) one index along dim 2,
so swaps and migration move many blocks with one gather/scatter. The host swap pool has the same
layout (pinned on GPU).

Sizing: on CPU the KV budget is `cache.cpu_kv_cache_bytes`. On GPU it is
`gpu_memory_utilization x total memory - peak torch memory of a profile step at
max_num_batched_tokens (weights included) - what that step took outside torch`, at most what
is free next to the step's activations. `gpu_memory_utilization` is this replica's own share
(its CUDA context and the libraries' one-time buffers live in the rest): memory other processes
hold, such as a replica sharing the GPU, is not counted against it, so two replicas on one GPU
take 0.45 each, and the replacement of one starts beside the other.
`cache.num_gpu_blocks_override` wins on either device.

On GPU, decode-only steps (one new token per chunk, up to 256 chunks) replay CUDA graphs
captured at start (actors/engine/cuda_graphs.py); everything else runs eagerly.

Sliding-window models (Mistral v0.1): attention here is always full, which equals windowed
attention while no sequence outgrows the window, so `max_model_len` is clamped to the window
(with a warning) instead of masking.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from actors.common.config import EngineConfig
from actors.engine.cuda_graphs import DecodeGraphs
from actors.engine.input_batch import InputBatch, build_input_batch, pack_batch
from actors.engine.outputs import ScheduledChunk, SchedulerOutput
from actors.engine.parallel import TensorParallel
from actors.lora.pool import AdapterPool, LoRAHooks
from actors.models.attention import KVCache
from actors.models.config import ModelArchConfig, load_arch_config
from actors.models.llama import LlamaForCausalLM
from actors.models.loader import load_model, resolve_dtype

logger = logging.getLogger(__name__)

MAX_GRAPH_BATCH = 256  # decode batches above this run eagerly (launch overhead is amortized)
_CPU = torch.device("cpu")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(
            f"device: {name!r} is not a device name (auto, cpu, cuda, cuda:N)"
        ) from exc
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device: must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {name!r} requested but CUDA is not available")
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ValueError(f"device: {name!r} but only {torch.cuda.device_count()} GPU(s)")
        device = torch.device("cuda", index)
    return device


def resolve_max_model_len(arch: ModelArchConfig, requested: int | None) -> int:
    limit = arch.max_position_embeddings
    if requested is not None and requested > limit:
        raise ValueError(
            f"max_model_len: {requested} exceeds the model's max_position_embeddings ({limit})"
        )
    length = requested or limit
    window = arch.sliding_window
    if window is not None and length > window:
        logger.warning(
            "%s uses a sliding window of %d tokens; clamping max_model_len %d -> %d so that "
            "full attention stays exact",
            arch.architecture,
            window,
            length,
            window,
        )
        length = window
    return length


class ModelRunner:
    def __init__(
        self,
        config: EngineConfig,
        *,
        use_cuda_graphs: bool | None = None,
        tensor_parallel: TensorParallel | None = None,
    ) -> None:
        """`use_cuda_graphs`: None follows `config.enforce_eager` (graphs on CUDA unless set).

        `tensor_parallel`: this runner is one tensor-parallel rank (the hook is actors/shard's):
        it loads only its slice of the weights and holds num_kv_heads / world_size heads in its
        KV cache. None: the whole model on this device.
        """
        self.config = config
        self._device = resolve_device(config.device)
        if self._device.type == "cuda":
            torch.cuda.set_device(self._device)
        model_dir = Path(config.model.model)
        self.arch = load_arch_config(model_dir)
        self._dtype = resolve_dtype(config.model.dtype, self.arch, self._device)
        self._max_model_len = resolve_max_model_len(self.arch, config.model.max_model_len)
        self._block_size = config.cache.block_size
        world = 1
        if tensor_parallel is not None:
            # Before the load: the model's reducing layers keep the all-reduce they are built with.
            tensor_parallel = tensor_parallel.with_fast_all_reduce(self._device, self._dtype)
            tensor_parallel.check(self.arch)
            world = tensor_parallel.world_size
        self._kv_heads = self.arch.num_kv_heads // world  # this rank's share of the KV heads
        self.model = self._load(model_dir, config, tensor_parallel)
        self.lora: LoRAHooks | None = None
        if config.lora.enabled:
            if tensor_parallel is not None:
                raise ValueError("lora: adapters with tensor parallelism are not supported yet")
            pool = AdapterPool(self.arch, config.lora, self._dtype, self._device)
            self.lora = LoRAHooks(self.model, pool)
        num_blocks = self._plan_num_blocks()
        if tensor_parallel is not None:  # the ranks address the same block ids
            num_blocks = tensor_parallel.agree_min(num_blocks, self._device)
        a = self.arch
        shape = (a.num_layers, 2, num_blocks, self._block_size, self._kv_heads, a.head_dim)
        self.kv_cache = torch.zeros(shape, dtype=self._dtype, device=self._device)
        self.kv_caches: list[KVCache] = [(layer[0], layer[1]) for layer in self.kv_cache]
        num_host = config.cache.swap_space_bytes // self.kv_block_bytes
        pin = self._device.type == "cuda"
        self.host_kv_cache = torch.zeros(
            (*shape[:2], num_host, *shape[3:]), dtype=self._dtype, pin_memory=pin
        )
        self._graphs: DecodeGraphs | None = None
        if use_cuda_graphs is None:
            use_cuda_graphs = not config.enforce_eager
        if self._device.type == "cuda" and use_cuda_graphs:
            self._graphs = DecodeGraphs(
                self.model,
                self.kv_caches,
                max_batch=min(config.scheduler.max_num_seqs, MAX_GRAPH_BATCH),
                max_model_len=self._max_model_len,
                block_size=self._block_size,
                device=self._device,
                lora=self.lora,
            )
            self._graphs.capture()
        logger.info(
            "model %s on %s (%s): %d KV blocks of %d tokens, %d host blocks, max_model_len %d",
            a.architecture,
            self._device,
            self._dtype,
            num_blocks,
            self._block_size,
            num_host,
            self._max_model_len,
        )

    def _load(
        self, model_dir: Path, config: EngineConfig, tensor_parallel: TensorParallel | None
    ) -> LlamaForCausalLM:
        dtype, device = self._dtype, self._device
        fmt, seed = config.model.load_format, config.model.seed
        if tensor_parallel is not None:
            return tensor_parallel.load_model(
                model_dir, self.arch, dtype=dtype, device=device, load_format=fmt, seed=seed
            )
        return load_model(
            model_dir, self.arch, dtype=dtype, device=device, load_format=fmt, seed=seed
        )

    # ---- properties --------------------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        return self.kv_cache.shape[2]

    @property
    def num_host_blocks(self) -> int:
        return self.host_kv_cache.shape[2]

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def vocab_size(self) -> int:
        return self.arch.vocab_size

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def decode_graphs(self) -> DecodeGraphs | None:
        return self._graphs

    @property
    def kv_block_bytes(self) -> int:
        """Bytes of one block across all layers, K and V."""
        a = self.arch
        elem = torch.empty((), dtype=self._dtype).element_size()
        return a.num_layers * 2 * self._block_size * self._kv_heads * a.head_dim * elem

    # ---- the step ----------------------------------------------------------------------------

    @torch.inference_mode()
    def execute(
        self, sched_out: SchedulerOutput, adapter_slots: Mapping[str, int] | None = None
    ) -> torch.Tensor:
        """Swaps first, then the forward; logits [S, V] fp32 for the chunks that sample.
        `adapter_slots`: the AdapterPool slot of every adapter the chunks' requests use."""
        self.swap(sched_out.swap_out, sched_out.swap_in)
        chunks = sched_out.chunks
        if not chunks:
            return torch.empty(0, self.vocab_size, device=self._device)
        if adapter_slots and self.lora is not None:
            return self._run_with_adapters(chunks, adapter_slots, self.lora)
        # A graph step copies host inputs into its static buffers; an eager step wants them on
        # the device, where pack_batch puts them with one pinned copy each.
        on_host = self.uses_graph(len(chunks), max(c.num_new_tokens for c in chunks))
        return self.run_batch(self._build(chunks, _CPU if on_host else self._device))

    def _run_with_adapters(
        self, chunks: list[ScheduledChunk], slots: Mapping[str, int], lora: LoRAHooks
    ) -> torch.Tensor:
        """A step whose projections add each token's adapter delta: a decode step replays the
        LoRA decode graph, any other runs eagerly with the hooks on."""
        per_chunk = [
            (slots[c.request.adapter_id] if c.request.adapter_id else -1, c.num_new_tokens)
            for c in chunks
        ]
        token_slots = torch.tensor([s for s, n in per_chunk for _ in range(n)], dtype=torch.int32)
        if self.uses_graph(len(chunks), max(n for _, n in per_chunk)):
            return self.run_batch(self._build(chunks, _CPU), token_slots)
        batch = self._build(chunks, self._device)
        lora.batch = lora.pool.batch(token_slots)  # [T]
        try:
            hidden = self.model(batch.input_ids, batch.positions, batch.attn, self.kv_caches)
        finally:
            lora.batch = None
        return self.model.compute_logits(hidden[batch.logits_indices])  # [S, V]

    def uses_graph(self, num_tokens: int, max_query_len: int) -> bool:
        """Whether a step of this shape replays a captured decode graph."""
        graphs = self._graphs
        return graphs is not None and max_query_len == 1 and num_tokens <= graphs.max_batch

    @torch.inference_mode()
    def run_batch(self, batch: InputBatch, token_slots: torch.Tensor | None = None) -> torch.Tensor:
        """The forward of a built batch (host or device tensors); logits [S, V] fp32.
        `token_slots` [T] int32: each token's adapter slot, for a step that replays a graph."""
        if self._graphs is not None and self.uses_graph(batch.num_tokens, batch.attn.max_query_len):
            logits = self._graphs.run(batch, token_slots)  # [B, V]
            if batch.num_sampled == batch.num_tokens:
                return logits
            return logits[batch.logits_indices.to(self._device)]
        if token_slots is not None:
            raise ValueError("token_slots: only a step that replays a decode graph takes them")
        hidden = self.model(batch.input_ids, batch.positions, batch.attn, self.kv_caches)
        return self.model.compute_logits(hidden[batch.logits_indices])  # [S, V]

    def _build(self, chunks: list[ScheduledChunk], device: torch.device) -> InputBatch:
        return build_input_batch(
            chunks,
            block_size=self._block_size,
            num_blocks=self.num_blocks,
            max_model_len=self._max_model_len,
            device=device,
        )

    def swap(self, swap_out: list[tuple[int, int]], swap_in: list[tuple[int, int]]) -> None:
        """Copies (device_block, host_block) pairs: out (device -> host) before in."""
        if swap_out:
            dev_idx, host_idx = self._swap_indices(swap_out, "swap_out")
            self.host_kv_cache[:, :, host_idx] = self.kv_cache[:, :, dev_idx.to(self._device)].cpu()
        if swap_in:
            dev_idx, host_idx = self._swap_indices(swap_in, "swap_in")
            src = self.host_kv_cache[:, :, host_idx]  # [L, 2, n, bs, Hkv, D]
            self.kv_cache[:, :, dev_idx.to(self._device)] = src.to(self._device, non_blocking=True)

    def export_blocks(self, block_ids: list[int]) -> torch.Tensor:
        """KV of `block_ids` for every layer: [L, 2, n, block_size, Hkv, D] (a copy, on device),
        complete when this returns, so any thread may read it.

        The seam for moving a request's KV elsewhere (migration, prefix transfer).
        """
        out = self.kv_cache.index_select(2, self._block_index(block_ids, "block_ids"))
        if out.is_cuda:
            torch.cuda.current_stream(out.device).synchronize()
        return out

    def import_blocks(self, block_ids: list[int], data: torch.Tensor) -> None:
        """Writes `data` ([L, 2, n, block_size, Hkv, D], any device) into `block_ids`."""
        idx = self._block_index(block_ids, "block_ids")
        expected = (*self.kv_cache.shape[:2], len(block_ids), *self.kv_cache.shape[3:])
        if tuple(data.shape) != expected:
            raise ValueError(f"data: shape {tuple(data.shape)} must be {expected}")
        self.kv_cache.index_copy_(2, idx, data.to(self._device, self._dtype, non_blocking=True))

    def copy_blocks_from(
        self, source: torch.Tensor, source_ids: list[int], block_ids: list[int]
    ) -> None:
        """Copy blocks of another KV cache of this layout (a migration's source, mapped through
        CUDA IPC) into `block_ids`: [L, 2, n, block_size, Hkv, D] device to device."""
        cache = self.kv_cache
        if source.dtype != cache.dtype or source.shape[:2] != cache.shape[:2]:
            raise ValueError("source: another layout than this KV cache")
        if source.shape[3:] != cache.shape[3:] or len(source_ids) != len(block_ids):
            raise ValueError("source: another block shape, or source_ids and block_ids differ")
        if any(not 0 <= b < source.shape[2] for b in source_ids):
            raise ValueError(f"source_ids: block ids must be in [0, {source.shape[2]})")
        src = torch.tensor(source_ids, dtype=torch.int64, device=source.device)
        # index_select + index_copy_: one gather and one scatter pass (advanced indexing on a
        # middle dimension is several times slower on these 6-d caches).
        gathered = source.index_select(2, src).to(self._device)  # [L, 2, n, bs, Hkv, D]
        cache.index_copy_(2, self._block_index(block_ids, "block_ids"), gathered)

    def _block_index(self, block_ids: list[int], name: str) -> torch.Tensor:
        if any(not 0 <= b < self.num_blocks for b in block_ids):
            raise ValueError(f"{name}: block ids must be in [0, {self.num_blocks})")
        return torch.tensor(block_ids, dtype=torch.int64, device=self._device)

    def _swap_indices(
        self, pairs: list[tuple[int, int]], name: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dev = [d for d, _ in pairs]
        host = [h for _, h in pairs]
        if min(dev) < 0 or max(dev) >= self.num_blocks:
            raise ValueError(f"{name}: device block ids must be in [0, {self.num_blocks})")
        if min(host) < 0 or max(host) >= self.num_host_blocks:
            raise ValueError(
                f"{name}: host block ids must be in [0, {self.num_host_blocks}) "
                "(cache.swap_space_bytes sets the host pool)"
            )
        return torch.tensor(dev, dtype=torch.int64), torch.tensor(host, dtype=torch.int64)

    # ---- sizing ------------------------------------------------------------------------------

    def _plan_num_blocks(self) -> int:
        cache = self.config.cache
        if cache.num_gpu_blocks_override is not None:
            return cache.num_gpu_blocks_override
        if self._device.type == "cpu":
            budget, field = cache.cpu_kv_cache_bytes, "cache.cpu_kv_cache_bytes"
        else:
            budget, field = self._gpu_kv_budget(), "cache.gpu_memory_utilization"
        num_blocks = budget // self.kv_block_bytes
        if num_blocks < 1:
            raise ValueError(
                f"{field}: leaves {max(budget, 0)} bytes for the KV cache, less than one block "
                f"({self.kv_block_bytes} bytes)"
            )
        if num_blocks * self._block_size < self._max_model_len:
            logger.warning(
                "the KV cache holds %d tokens, fewer than max_model_len %d",
                num_blocks * self._block_size,
                self._max_model_len,
            )
        return num_blocks

    def _gpu_kv_budget(self) -> int:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self._device)
        tokens = self.config.scheduler.max_num_batched_tokens
        try:
            self._profile_run()  # compiles the kernels: seconds, for a first step
            torch.cuda.synchronize(self._device)
            free_before, _ = torch.cuda.mem_get_info(self._device)
            reserved_before = torch.cuda.memory_reserved(self._device)
            self._profile_run()
        except torch.cuda.OutOfMemoryError as exc:
            raise ValueError(
                f"scheduler.max_num_batched_tokens: a step of {tokens} tokens does not fit in GPU "
                "memory next to the weights; lower it"
            ) from exc
        torch.cuda.synchronize(self._device)
        peak = torch.cuda.max_memory_allocated(self._device)
        free, total = torch.cuda.mem_get_info(self._device)
        # What a step takes outside torch's allocator, measured over one compiled step: short,
        # so a replica sharing the GPU is unlikely to allocate its KV cache meanwhile (that is
        # not this one's; the bound on free memory below covers it whenever it happens).
        grown = (free_before - free) - (torch.cuda.memory_reserved(self._device) - reserved_before)
        outside_torch = max(grown, 0)
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(self._device)
        activations = peak - torch.cuda.memory_allocated(self._device)
        util = self.config.cache.gpu_memory_utilization
        # gpu_memory_utilization is this replica's share of the GPU (replicas sharing one GPU
        # give each its fraction), bounded by what is free now next to the step's activations.
        budget = min(int(util * total) - peak - outside_torch, free - activations)
        logger.info(
            "GPU memory: total %.2f GiB x %.2f, torch peak %.2f GiB, outside torch %.2f GiB, "
            "free %.2f GiB, KV budget %.2f GiB",
            total / 2**30,
            util,
            peak / 2**30,
            outside_torch / 2**30,
            free / 2**30,
            budget / 2**30,
        )
        return budget

    @torch.inference_mode()
    def _profile_run(self) -> None:
        """One forward at the worst step shape: the token budget as long prefills + many rows.

        Long chunks set the attention peak, many sampled rows the logits peak; the profile has
        both. Every layer shares one small scratch cache, so it costs one layer's KV only.
        """
        sched = self.config.scheduler
        tokens = sched.max_num_batched_tokens
        n_short = min(sched.max_num_seqs, tokens) - 1
        lens, long_total = [1] * n_short, tokens - n_short
        while long_total > 0:
            lens.append(min(self._max_model_len, long_total))
            long_total -= lens[-1]
        bs = self._block_size
        n_blocks = [-(-n // bs) for n in lens]
        width, first = max(n_blocks), [0, *itertools.accumulate(n_blocks)][:-1]
        a = self.arch
        scratch = torch.zeros(
            (2, sum(n_blocks), bs, self._kv_heads, a.head_dim),
            dtype=self._dtype,
            device=self._device,
        )
        batch = pack_batch(
            token_ids=[0] * tokens,
            starts=[0] * len(lens),
            q_lens=lens,
            block_tables=[
                list(range(f, f + n)) + [0] * (width - n)
                for f, n in zip(first, n_blocks, strict=True)
            ],
            sampled=list(range(len(lens))),
            block_size=bs,
            device=self._device,
        )
        caches = [(scratch[0], scratch[1])] * a.num_layers
        hidden = self.model(batch.input_ids, batch.positions, batch.attn, caches)
        self.model.compute_logits(hidden[batch.logits_indices])
