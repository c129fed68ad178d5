"""Our Llama-family models over the paged KV cache vs Hugging Face transformers (fp32, CPU).

Requests, chunks and block tables are built by hand here (a trivial allocator hands out shuffled
block ids, so block tables are not contiguous) and the counters are advanced by the test, the
way the scheduler will advance them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from actors.common.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from actors.common.sampling_params import SamplingParams
from actors.engine.model_runner import ModelRunner
from actors.engine.outputs import ScheduledChunk, SchedulerOutput
from actors.engine.request import Request

ARCHS = ["llama", "llama_bias", "llama3", "mistral", "qwen2", "qwen3"]
BLOCK = 4
ATOL = 1e-4
GPU_ATOL = 2e-2  # the Triton kernels' fp32 dots run in TF32


class BlockPool:
    """Hands out distinct, shuffled block ids (the test's stand-in for the block manager)."""

    def __init__(self, num_blocks: int, seed: int = 0, block_size: int = BLOCK) -> None:
        self.free = list(range(num_blocks))
        self.block_size = block_size
        random.Random(seed).shuffle(self.free)

    def reserve(self, req: Request, num_tokens: int) -> None:
        need = -(-num_tokens // self.block_size) - len(req.block_ids)
        req.block_ids.extend(self.free.pop() for _ in range(max(need, 0)))


def make_runner(
    path: Path,
    num_blocks: int = 64,
    dtype: str = "float32",
    device: str = "cpu",
    block_size: int = BLOCK,
    cuda_graphs: bool | None = None,
) -> ModelRunner:
    config = EngineConfig(
        model=ModelConfig(model=str(path), dtype=dtype),
        cache=CacheConfig(block_size=block_size, num_gpu_blocks_override=num_blocks),
        scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64),
        device=device,
    )
    return ModelRunner(config, use_cuda_graphs=cuda_graphs)


def make_requests(lengths: list[int], seed: int, vocab: int = 300) -> list[Request]:
    rng = random.Random(seed)
    return [
        Request(f"r{i}", [rng.randrange(vocab) for _ in range(n)], SamplingParams())
        for i, n in enumerate(lengths)
    ]


def step(
    runner: ModelRunner,
    pool: BlockPool,
    plan: list[tuple[Request, int]],
    hf: torch.nn.Module | None = None,
    atol: float = ATOL,
) -> torch.Tensor:
    """Runs one step of (request, num_new_tokens) chunks, then advances counters like update().

    With `hf`, also checks the logits against HF's for the sampled requests' tokens so far.
    """
    for req, n in plan:
        pool.reserve(req, req.num_computed_tokens + n)
    chunks = [ScheduledChunk(req, n) for req, n in plan]
    sampled = [c.request for c in chunks if c.needs_sample]
    logits = runner.execute(SchedulerOutput(chunks=chunks))
    if hf is not None:
        expected = hf_last_logits(hf, sampled).to(logits.device)
        torch.testing.assert_close(logits, expected, atol=atol, rtol=0)
    assert logits.shape == (len(sampled), runner.vocab_size)
    assert logits.dtype == torch.float32
    for req, n in plan:
        req.num_computed_tokens += n
    for req, row in zip(sampled, logits, strict=True):
        req.output_token_ids.append(int(row.argmax()))
    return logits


@torch.no_grad()
def hf_last_logits(hf: torch.nn.Module, reqs: list[Request]) -> torch.Tensor:
    """[len(reqs), V]: HF's next-token logits for each request's tokens so far (unpadded)."""
    rows = [hf(torch.tensor([r.all_token_ids])).logits[0, -1] for r in reqs]
    return torch.stack(rows).float()


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_hf_across_prefill_chunks_and_decode(
    arch: str,
    tiny_checkpoint: Callable[[str], Path],
    tiny_hf_model: Callable[[str], torch.nn.Module],
) -> None:
    runner = make_runner(tiny_checkpoint(arch))
    hf = tiny_hf_model(arch)
    pool = BlockPool(runner.num_blocks)
    a, b, c, d = make_requests([5, 13, 3, 9], seed=len(arch))

    # Step 1: whole prompts (a, c) next to the first chunks of longer ones (b, d), which do not
    # sample; a chunk boundary lands mid-block for d.
    logits = step(runner, pool, [(a, 5), (b, 6), (c, 3), (d, 6)], hf)
    assert logits.shape[0] == 2  # only a and c reach their last token

    # Step 2: decodes over cached KV first, then the rest of the chunked prefills.
    step(runner, pool, [(a, 1), (c, 1), (b, 7), (d, 3)], hf)

    # Step 3: everyone decodes, crossing block boundaries.
    for _ in range(2):
        step(runner, pool, [(r, 1) for r in (a, b, c, d)], hf)


def greedy_through_runner(
    runner: ModelRunner, reqs: list[Request], max_new: int, budget: int
) -> list[list[int]]:
    """A minimal continuous-batching loop: decodes first, then prefill chunks within `budget`."""
    pool = BlockPool(runner.num_blocks, seed=1, block_size=runner.block_size)
    while any(r.num_output_tokens < max_new for r in reqs):
        live = [r for r in reqs if r.num_output_tokens < max_new]
        plan = [(r, 1) for r in live if r.num_computed_tokens == r.num_tokens - 1]
        left = budget - len(plan)
        for r in live:
            todo = r.num_tokens - r.num_computed_tokens
            if todo > 1 and left > 0:
                plan.append((r, min(todo, left)))
                left -= plan[-1][1]
        step(runner, pool, plan)
    return [r.output_token_ids for r in reqs]


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_decode_matches_hf_generate(
    arch: str,
    tiny_checkpoint: Callable[[str], Path],
    tiny_hf_model: Callable[[str], torch.nn.Module],
) -> None:
    runner = make_runner(tiny_checkpoint(arch))
    hf = tiny_hf_model(arch)
    reqs = make_requests([7, 19, 2], seed=100 + len(arch))
    max_new = 8
    ours = greedy_through_runner(runner, reqs, max_new, budget=8)  # forces chunked prefill
    assert ours == [hf_generate(hf, r, max_new) for r in reqs]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_runs_close_to_fp32(
    dtype: str,
    tiny_checkpoint: Callable[[str], Path],
    tiny_hf_model: Callable[[str], torch.nn.Module],
) -> None:
    runner = make_runner(tiny_checkpoint("qwen3"), dtype=dtype)
    assert runner.dtype == getattr(torch, dtype)
    assert runner.kv_cache.dtype == runner.dtype
    assert runner.model.lm_head.weight.dtype == runner.dtype
    pool = BlockPool(runner.num_blocks)
    reqs = make_requests([6, 11], seed=7)
    step(runner, pool, [(reqs[0], 6), (reqs[1], 11)])
    ref = hf_last_logits(tiny_hf_model("qwen3"), reqs)
    logits = step(runner, pool, [(r, 1) for r in reqs])
    assert torch.isfinite(logits).all()
    cos = torch.nn.functional.cosine_similarity(logits, ref, dim=-1)
    assert (cos > 0.99).all(), cos


def hf_generate(hf: torch.nn.Module, req: Request, max_new: int) -> list[int]:
    hf.generation_config.eos_token_id = None  # generate N tokens, as ignore_eos would
    ids = torch.tensor([req.prompt_token_ids])
    with torch.no_grad():
        out = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),  # else HF masks prompt tokens equal to the pad id
            max_new_tokens=max_new,
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, req.num_prompt_tokens :].tolist()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cuda_graphs", [False, True])
@pytest.mark.parametrize("arch", ["llama3", "qwen3"])
def test_gpu_matches_hf(
    arch: str,
    cuda_graphs: bool,
    tiny_checkpoint: Callable[[str], Path],
    tiny_hf_model: Callable[[str], torch.nn.Module],
) -> None:
    """The Triton kernels (and decode CUDA graphs) through the same chunk/decode schedule."""
    path, hf = tiny_checkpoint(arch), tiny_hf_model(arch)
    runner = make_runner(path, device="cuda", block_size=16, cuda_graphs=cuda_graphs)
    pool = BlockPool(runner.num_blocks, block_size=16)
    a, b, c = make_requests([5, 40, 17], seed=11)
    step(runner, pool, [(a, 5), (b, 20), (c, 17)], hf, GPU_ATOL)
    step(runner, pool, [(a, 1), (c, 1), (b, 20)], hf, GPU_ATOL)
    for _ in range(3):
        step(runner, pool, [(r, 1) for r in (a, b, c)], hf, GPU_ATOL)
    reqs = make_requests([7, 19, 2], seed=12)
    ours = greedy_through_runner(runner, reqs, 8, budget=16)
    assert ours == [hf_generate(hf, r, 8) for r in reqs]
