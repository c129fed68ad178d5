"""The whole engine (scheduler + block manager + runner + sampler) against Hugging Face.

Greedy output must be token-exact with `transformers` generate for every architecture, with
prompts of mixed lengths batched together, with chunked prefill forced small, with preemption
forced (recompute and swap), and with prefix-cache hits. Logprobs match HF's within 1e-4 (fp32).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from actors.common.sampling_params import SamplingParams
from actors.engine.engine import LLMEngine

ARCHS = ["llama", "llama3", "mistral", "qwen2", "qwen3"]
MAX_NEW = 10
LOGPROB_ATOL = 1e-4


def make_engine(path: Path, **kw: object) -> LLMEngine:
    return LLMEngine.from_model(str(path), dtype="float32", device="cpu", **kw)


def mixed_prompts(seed: int, lengths: tuple[int, ...] = (3, 17, 40, 9, 33)) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(4, 260) for _ in range(n)] for n in lengths]


def hf_greedy(model: torch.nn.Module, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    """HF greedy continuation and the logprob of each chosen token (unbatched: no padding)."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    tokens = out.sequences[0, len(prompt) :].tolist()
    lps = [
        torch.log_softmax(lg[0].float(), -1)[t].item()
        for lg, t in zip(out.logits, tokens, strict=True)
    ]
    return tokens, lps


@pytest.fixture(scope="module")
def reference(
    tiny_hf_model: Callable[[str], torch.nn.Module],
) -> Callable[[str, list[int]], tuple[list[int], list[float]]]:
    memo: dict[tuple[str, tuple[int, ...]], tuple[list[int], list[float]]] = {}

    def get(arch: str, prompt: list[int]) -> tuple[list[int], list[float]]:
        key = (arch, tuple(prompt))
        if key not in memo:
            memo[key] = hf_greedy(tiny_hf_model(arch), prompt, MAX_NEW)
        return memo[key]

    return get


GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True, logprobs=2)


def check_against_hf(engine: LLMEngine, arch: str, prompts: list[list[int]], reference) -> None:
    results = engine.generate(prompts, GREEDY)
    for prompt, res in zip(prompts, results, strict=True):
        want_tokens, want_lps = reference(arch, prompt)
        assert res.token_ids[0] == want_tokens, f"{arch}: prompt of {len(prompt)} tokens"
        got_lps = [lp.logprob for lp in res.logprobs[0]]
        assert got_lps == pytest.approx(want_lps, abs=LOGPROB_ATOL)
        assert res.finish_reasons == ["length"]
    # Every block is back in the pool once all requests finished.
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_total_blocks


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_mixed_lengths(arch: str, tiny_checkpoint, reference) -> None:
    engine = make_engine(tiny_checkpoint(arch))
    check_against_hf(engine, arch, mixed_prompts(1), reference)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_chunked_prefill_forced_small(arch: str, tiny_checkpoint, reference) -> None:
    # A 7-token budget splits every prompt over several steps and mixes chunks with decodes.
    engine = make_engine(tiny_checkpoint(arch), max_num_batched_tokens=7)
    check_against_hf(engine, arch, mixed_prompts(2), reference)


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_preemption_forced(mode: str, tiny_checkpoint, reference) -> None:
    # 9 blocks of 16 tokens cannot hold the five requests at once: some must be preempted.
    swap = 64 << 20 if mode == "swap" else 0
    engine = make_engine(
        tiny_checkpoint("llama"),
        num_gpu_blocks_override=9,
        preemption_mode=mode,
        swap_space_bytes=swap,
    )
    check_against_hf(engine, "llama", mixed_prompts(3, (40, 33, 25, 30, 20)), reference)
    assert engine.scheduler.num_preemptions > 0


def test_prefix_cache_hits(tiny_checkpoint, reference) -> None:
    engine = make_engine(tiny_checkpoint("qwen2"))
    rng = random.Random(4)
    shared = [rng.randrange(4, 260) for _ in range(48)]
    prompts = [shared + [rng.randrange(4, 260) for _ in range(k)] for k in (1, 5, 20)]
    check_against_hf(engine, "qwen2", prompts[:1], reference)  # warms the cache
    results = engine.generate(prompts[1:], GREEDY)
    for prompt, res in zip(prompts[1:], results, strict=True):
        assert res.token_ids[0] == reference("qwen2", prompt)[0]
    stats_hit = [o for o in _cached_counts(engine, prompts[1])]
    assert stats_hit and max(stats_hit) >= 48


def _cached_counts(engine: LLMEngine, prompt: list[int]) -> list[int]:
    engine.add_request("probe", prompt, GREEDY)
    counts = []
    while engine.has_unfinished_requests():
        counts += [o.num_cached_tokens for o in engine.step()]
    return counts


def test_seeded_sampling_reproducible_and_n(tiny_checkpoint) -> None:
    engine = make_engine(tiny_checkpoint("llama"))
    p = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, max_tokens=8, seed=7, n=3)
    a = engine.generate([[5, 6, 7, 8, 9]], p)[0]
    b = engine.generate([[5, 6, 7, 8, 9]], p)[0]
    assert a.token_ids == b.token_ids
    assert len(a.token_ids) == 3 and all(len(t) == 8 for t in a.token_ids)
    assert len({tuple(t) for t in a.token_ids}) > 1  # the choices draw different samples


def test_stop_strings_and_stop_tokens(tiny_checkpoint, reference) -> None:
    engine = make_engine(tiny_checkpoint("llama"))
    prompt = mixed_prompts(5, (12,))[0]
    want, _ = reference("llama", prompt)
    stop_tok = want[3]
    res = engine.generate(
        [prompt],
        SamplingParams(
            temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True, stop_token_ids=(stop_tok,)
        ),
    )[0]
    assert res.token_ids[0] == want[: want.index(stop_tok) + 1]
    assert res.finish_reasons == ["stop"]
    full = engine.generate(
        [prompt], SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True)
    )[0]
    text = full.texts[0]
    if len(text) >= 3:
        stop = text[1:3]
        cut = engine.generate(
            [prompt],
            SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True, stop=(stop,)),
        )[0]
        assert cut.texts[0] == text[: text.index(stop)]
        assert cut.finish_reasons == ["stop"]


@pytest.mark.parametrize(
    ("prompt", "params", "field"),
    [
        ([1] * 300, SamplingParams(max_tokens=1), "prompt"),
        ([1, 2], SamplingParams(max_tokens=0), "max_tokens"),
        ([1, 2], SamplingParams(temperature=-1.0), "temperature"),
        ([1, 2], SamplingParams(top_p=0.0), "top_p"),
        ([1, 2], SamplingParams(top_p=1.5), "top_p"),
        ([1, 2], SamplingParams(stop_token_ids=(10**6,)), "stop_token_ids"),
        ([1, 2], SamplingParams(n=10_000, max_tokens=200), "n"),
        ([], SamplingParams(), "prompt"),
        ([1, 10**7], SamplingParams(), "prompt"),
    ],
)
def test_bad_input_names_the_field(tiny_checkpoint, prompt, params, field) -> None:
    engine = make_engine(tiny_checkpoint("llama"), num_gpu_blocks_override=64)
    engine.add_request("ok", [3, 4, 5], SamplingParams(temperature=0.0, max_tokens=4))
    with pytest.raises(ValueError, match=rf"^{field}:"):
        engine.add_request("bad", prompt, params)
    # The engine keeps serving the request it already had.
    outs = []
    while engine.has_unfinished_requests():
        outs += engine.step()
    assert outs[-1].request_id == "ok" and outs[-1].finished and outs[-1].error is None


def test_step_failure_fails_only_that_step(tiny_checkpoint, monkeypatch) -> None:
    engine = make_engine(tiny_checkpoint("llama"))
    engine.add_request("a", [3, 4, 5], SamplingParams(temperature=0.0, max_tokens=4))
    real = engine.runner.execute
    calls = {"n": 0}

    def flaky_execute(sched_out):  # fault injection at the runner seam
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected device fault")
        return real(sched_out)

    monkeypatch.setattr(engine.runner, "execute", flaky_execute)
    outs = engine.step()
    assert [(o.request_id, o.finish_reason) for o in outs] == [("a", "error")]
    assert "injected device fault" in outs[0].error
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_total_blocks
    res = engine.generate([[3, 4, 5]], SamplingParams(temperature=0.0, max_tokens=4))[0]
    assert len(res.token_ids[0]) == 4


def test_abort_frees_blocks(tiny_checkpoint) -> None:
    engine = make_engine(tiny_checkpoint("llama"))
    engine.add_request("x", list(range(4, 60)), SamplingParams(max_tokens=50, ignore_eos=True))
    engine.step()
    engine.abort_request("x")
    engine.abort_request("x")  # idempotent
    outs = engine.step()
    assert [(o.request_id, o.finish_reason) for o in outs] == [("x", "abort")]
    assert not engine.has_unfinished_requests()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_total_blocks
