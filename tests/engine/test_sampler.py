"""Sampler: filters and penalties vs HF's logits processors, seeding, generator export/import."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from actors.common.sampling_params import SamplingParams
from actors.engine.request import Request
from actors.engine.sampler import (
    Sampler,
    TokenHistory,
    apply_min_p,
    apply_presence_frequency_penalties,
    apply_repetition_penalty,
    apply_top_k_top_p,
    export_generator_state,
    import_generator_state,
    processed_probs,
)

V = 64


def _req(rid: str = "r", prompt: list[int] | None = None, **params: object) -> Request:
    return Request(rid, prompt if prompt is not None else [1, 2, 3], SamplingParams(**params))


def _logits(rows: int, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, V, generator=g) * 3.0).to(device)  # [B, V]


def _run(
    sampler: Sampler,
    req: Request,
    steps: int,
    batch_with: list[Request] = (),
    first_step: int = 0,
    device: str = "cpu",
) -> list[int]:
    """Sample `steps` tokens for req (row 0), appending each to its output like the engine."""
    out = []
    for step in range(first_step, first_step + steps):
        reqs = [req, *batch_with]
        logits = _logits(len(reqs), seed=100 + step, device=device)
        token = sampler.sample(logits, reqs).token_ids[0]
        req.output_token_ids.append(token)
        out.append(token)
    return out


def test_greedy_is_exact_argmax() -> None:
    logits = _logits(5)
    reqs = [_req(str(i), temperature=0.0) for i in range(5)]
    out = Sampler().sample(logits.clone(), reqs)
    assert out.token_ids == logits.argmax(dim=-1).tolist()
    assert out.logprobs is None


def test_bad_logits_shape_names_the_field() -> None:
    with pytest.raises(ValueError, match="logits"):
        Sampler().sample(_logits(2), [_req()])


@pytest.mark.parametrize("k", [1, 5, 63])
def test_top_k_matches_hf(k: int) -> None:
    logits = _logits(4)
    ours = apply_top_k_top_p(logits, [k] * 4, [1.0] * 4)
    ref = TopKLogitsWarper(top_k=k)(None, logits.clone())
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.999])
def test_top_p_matches_hf_and_naive(p: float) -> None:
    logits = _logits(4)
    ours = apply_top_k_top_p(logits, [V] * 4, [p] * 4)
    assert torch.equal(ours, TopPLogitsWarper(top_p=p)(None, logits.clone()))
    for row in range(4):  # naive: best-first, keep a token while the mass above it is < p
        probs = logits[row].softmax(-1)
        order = probs.argsort(descending=True)
        above = 0.0
        for tok in order.tolist():
            assert (ours[row, tok] > float("-inf")) == (above < p)
            above += probs[tok].item()


@pytest.mark.parametrize("m", [0.01, 0.2, 0.9])
def test_min_p_matches_hf(m: float) -> None:
    logits = _logits(4)
    assert torch.equal(apply_min_p(logits, [m] * 4), MinPLogitsWarper(min_p=m)(None, logits))


def test_mixed_rows_match_hf_chain() -> None:
    """Per-row temperature/top-k/top-p/min-p in one batch == HF's warpers chained per row."""
    settings = [(0.7, 10, 0.9, 0.0), (1.3, 0, 0.5, 0.05), (1.0, 3, 1.0, 0.0), (0.5, 0, 1.0, 0.3)]
    logits = _logits(len(settings), seed=3)
    reqs = [
        _req(str(i), temperature=t, top_k=k, top_p=p, min_p=m)
        for i, (t, k, p, m) in enumerate(settings)
    ]
    ours = processed_probs(logits, reqs)
    for row, (t, k, p, m) in enumerate(settings):
        x = TemperatureLogitsWarper(t)(None, logits[row : row + 1].clone())
        if k:
            x = TopKLogitsWarper(k)(None, x)
        if p < 1.0:
            x = TopPLogitsWarper(p)(None, x)
        if m:
            x = MinPLogitsWarper(m)(None, x)
        torch.testing.assert_close(ours[row], x.softmax(-1)[0])


def test_repetition_penalty_matches_hf() -> None:
    logits = _logits(3)
    seqs = [[1, 5, 5, 9, 40], [0, 63, 2], [7, 7, 7, 7, 8]]
    penalties = [1.3, 0.8, 2.0]
    ours = apply_repetition_penalty(logits, seqs, penalties)
    for row, (seq, pen) in enumerate(zip(seqs, penalties, strict=True)):
        ref = RepetitionPenaltyLogitsProcessor(pen)(torch.tensor([seq]), logits[row : row + 1])
        torch.testing.assert_close(ours[row], ref[0])


def test_penalties_ignore_ids_outside_the_vocab() -> None:
    logits = _logits(2)
    rep = apply_repetition_penalty(logits, [[3, V, 10_000], []], [1.5, 1.5])
    ref = RepetitionPenaltyLogitsProcessor(1.5)(torch.tensor([[3]]), logits[:1])
    torch.testing.assert_close(rep, torch.cat([ref, logits[1:]]))
    freq = apply_presence_frequency_penalties(logits, [[V + 1], [2]], [0.0, 0.0], [1.0, 1.0])
    assert torch.equal(freq[0], logits[0]) and freq[1, 2] == logits[1, 2] - 1.0


def test_presence_frequency_penalties_match_openai_formula() -> None:
    logits = _logits(2)
    outs = [[4, 4, 4, 9], []]
    ours = apply_presence_frequency_penalties(logits, outs, [0.5, 1.0], [0.25, -1.5])
    ref = logits.clone()
    for tok, count in ((4, 3), (9, 1)):  # row 1 generated nothing: unchanged
        ref[0, tok] -= 0.25 * count + 0.5
    torch.testing.assert_close(ours, ref)


def test_penalties_apply_before_greedy_and_leave_caller_logits() -> None:
    logits = torch.zeros(1, V)
    logits[0, 5], logits[0, 6] = 2.0, 1.5
    original = logits.clone()
    req = _req(prompt=[5], temperature=0.0, repetition_penalty=2.0)  # 5 -> 1.0 < 1.5
    assert Sampler().sample(logits, [req]).token_ids == [6]
    assert torch.equal(logits, original)
    req = _req(prompt=[0], temperature=0.0, presence_penalty=1.0)
    req.output_token_ids = [5]
    assert Sampler().sample(logits, [req]).token_ids == [6]


def test_token_history_follows_appends_and_resets() -> None:
    req = _req(prompt=list(range(40)))
    hist = TokenHistory(req)
    for t in range(200):  # grows past its first buffer
        req.output_token_ids.append(t % 7)
        if t % 3 == 0:
            hist.sync(req)
    hist.sync(req)
    assert hist.all_tokens().tolist() == req.all_token_ids
    assert hist.output_tokens().tolist() == req.output_token_ids
    req.output_token_ids = [5]
    assert hist.sync(req).all_tokens().tolist() == req.all_token_ids


def test_penalties_across_steps_match_the_list_reference() -> None:
    """The sampler's cached histories give what the pure functions give on the full lists."""
    sampler = Sampler()
    req = _req(prompt=[3, 3, 9], temperature=0.0, repetition_penalty=1.7, frequency_penalty=0.6)
    for step in range(6):
        # Near-ties at the top: every penalty (or a stale history) changes the argmax.
        logits = torch.linspace(2.0, 1.0, V).unsqueeze(0) + 0.01 * _logits(1, seed=step)
        ref = apply_repetition_penalty(logits, [req.all_token_ids], [1.7])
        ref = apply_presence_frequency_penalties(ref, [req.output_token_ids], [0.0], [0.6])
        token = sampler.sample(logits, [req]).token_ids[0]
        assert token == ref.argmax().item()
        req.output_token_ids.append(token)
    assert len(set(req.output_token_ids)) == len(req.output_token_ids)


def test_sampling_follows_the_distribution() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(3000, 4).contiguous()
    reqs = [_req(str(i), seed=i) for i in range(3000)]
    tokens = torch.tensor(Sampler().sample(logits, reqs).token_ids)
    freq = torch.bincount(tokens, minlength=4).float() / len(reqs)
    assert (freq - probs).abs().max() < 0.03


def test_filters_restrict_sampled_tokens() -> None:
    logits = _logits(1)
    allowed = set(logits[0].topk(3).indices.tolist())
    for seed in range(20):
        req = _req(str(seed), seed=seed, top_k=3, temperature=2.0)
        assert Sampler().sample(logits, [req]).token_ids[0] in allowed


def test_seeded_sampling_reproducible_and_batch_independent() -> None:
    alone = _run(Sampler(), _req("a", seed=7, top_p=0.95), steps=6)
    again = _run(Sampler(), _req("a", seed=7, top_p=0.95), steps=6)
    others = [_req("g", temperature=0.0), _req("b", seed=1, top_k=5), _req("c")]
    batched = _run(Sampler(), _req("a", seed=7, top_p=0.95), steps=6, batch_with=others)
    assert alone == again == batched
    assert _run(Sampler(), _req("a", seed=8, top_p=0.95), steps=6) != alone


def test_unseeded_request_records_its_drawn_seed() -> None:
    req = _req()
    token = Sampler(seed=0).sample(_logits(1), [req]).token_ids
    assert req.sampling_seed is not None
    assert Sampler().sample(_logits(1), [_req(seed=req.sampling_seed)]).token_ids == token


def test_export_import_continues_the_same_sequence() -> None:
    reference = _run(Sampler(), _req("a", seed=11, min_p=0.05), steps=8)
    moving = _req("a", seed=11, min_p=0.05)
    first = _run(Sampler(), moving, steps=3)
    state = export_generator_state(moving)
    fresh = _req("a", prompt=moving.prompt_token_ids, min_p=0.05)  # seed unknown to the target
    fresh.output_token_ids = list(moving.output_token_ids)
    Sampler.import_generator_state(fresh, state)
    assert fresh.sampling_seed == 11
    assert first + _run(Sampler(), fresh, steps=5, first_step=3) == reference


def test_export_before_first_sample_carries_the_seed() -> None:
    src = _req("a", seed=5)
    src.sampling_seed = 5
    dst = _req("a")
    import_generator_state(dst, export_generator_state(src))
    assert dst.generator is None and dst.sampling_seed == 5
    assert _run(Sampler(), dst, steps=4) == _run(Sampler(), _req("a", seed=5), steps=4)


@pytest.mark.parametrize("seed", [-5, 2**70])
def test_any_integer_seed_samples_and_survives_export(seed: int) -> None:
    req = _req(seed=seed)
    req.sampling_seed = seed
    state = export_generator_state(req)  # before the first sample: seed only
    first = _run(Sampler(), req, steps=2)
    twin = _req()
    import_generator_state(twin, state)
    assert twin.sampling_seed == seed
    assert _run(Sampler(), twin, steps=2) == first


def test_import_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="generator state"):
        import_generator_state(_req(), b"not a state at all, definitely not")
    with pytest.raises(ValueError, match="generator state"):
        import_generator_state(_req(), b"xx")


def test_logprobs_are_raw_log_softmax_with_top_n() -> None:
    logits = _logits(3)
    reqs = [
        _req("a", seed=1, logprobs=3, temperature=0.5, repetition_penalty=1.5),
        _req("b", temperature=0.0),
        _req("c", temperature=0.0, logprobs=0),
    ]
    out = Sampler().sample(logits, reqs)
    raw = logits.log_softmax(-1)
    a, b, c = out.logprobs
    assert b is None
    assert a.token_id == out.token_ids[0]
    assert a.logprob == pytest.approx(raw[0, a.token_id].item(), abs=1e-6)
    top_vals, top_ids = raw[0].topk(3)
    assert [t for t, _ in a.top] == top_ids.tolist()
    assert [v for _, v in a.top] == pytest.approx(top_vals.tolist(), abs=1e-6)
    assert c.top == () and c.token_id == raw[2].argmax().item()


@pytest.mark.gpu
def test_cuda_generators_reproducible_batch_independent_and_migratable() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    logits = _logits(4, device="cuda")
    greedy = [_req(str(i), temperature=0.0) for i in range(4)]
    assert Sampler().sample(logits, greedy).token_ids == logits.cpu().argmax(-1).tolist()

    def make() -> Request:
        return _req("a", seed=3, top_k=20, top_p=0.9)

    alone = _run(Sampler(), make(), steps=6, device="cuda")
    others = [_req("g", temperature=0.0), _req("b", seed=1, min_p=0.1)]
    assert _run(Sampler(), make(), steps=6, batch_with=others, device="cuda") == alone
    moving = make()
    first = _run(Sampler(), moving, steps=2, device="cuda")
    assert moving.generator.device.type == "cuda"
    state = export_generator_state(moving)
    fresh = _req("a", top_k=20, top_p=0.9)
    fresh.output_token_ids = list(moving.output_token_ids)
    import_generator_state(fresh, state)
    assert first + _run(Sampler(), fresh, steps=4, first_step=2, device="cuda") == alone
    on_cpu = _req("a", top_k=20, top_p=0.9)
    import_generator_state(on_cpu, state)
    with pytest.raises(ValueError, match="generator state"):
        Sampler().sample(_logits(1), [on_cpu])
