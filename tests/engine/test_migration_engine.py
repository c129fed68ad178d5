"""The engine's migration seams, two engines in one process: a request moved (KV blocks copied,
state exported and imported) at any point produces exactly the tokens it would have produced
unmigrated, and both engines' blocks are all back afterwards."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from actors.common.config import CacheConfig, EngineConfig, LoRAConfig, ModelConfig, SchedulerConfig
from actors.common.sampling_params import SamplingParams
from actors.engine.engine import LLMEngine

ENGINE = EngineConfig(
    cache=CacheConfig(block_size=4, num_gpu_blocks_override=96),
    scheduler=SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=8),
    device="cpu",
)
PROMPT = "Migration keeps every token"
GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
SEEDED = SamplingParams(temperature=0.9, top_p=0.9, seed=7, max_tokens=24, ignore_eos=True)
STOPPING = SamplingParams(temperature=0.0, max_tokens=40, stop=("zz",), logprobs=2)


@pytest.fixture(scope="module")
def engines() -> tuple[LLMEngine, LLMEngine]:
    return LLMEngine(ENGINE), LLMEngine(ENGINE)


def _run(engine: LLMEngine, rid: str, outs: dict[str, list]) -> None:
    for out in engine.step():
        outs.setdefault(out.request_id, []).append(out)


def move(src: LLMEngine, dst: LLMEngine, rid: str, outs: dict[str, list], stages: int = 2) -> bool:
    """The protocol actors/migration runs, without the wire: copy full blocks while the request
    decodes (stages; what the source produces meanwhile lands in `outs`), then pause, copy the
    rest and the state, import, release. False: the request finished first (nothing moved,
    nothing left reserved)."""
    bs = src.config.cache.block_size
    sent = 0
    reserved: list[int] = []
    try:
        for _ in range(stages):
            blocks, computed = src.migration_blocks(rid)
            full = computed // bs
            if full > sent:
                ids = dst.reserve_blocks(full - sent)
                assert ids is not None
                dst.runner.import_blocks(ids, src.runner.export_blocks(blocks[sent:full]))
                reserved += ids
                sent = full
            _run(src, rid, outs)  # the request keeps decoding between stages
        src.pause_request(rid)
    except ValueError:
        dst.release_blocks(reserved)
        return False
    blocks, computed = src.migration_blocks(rid)
    rest = dst.reserve_blocks(-(-computed // bs) - sent)
    assert rest is not None
    if rest:
        dst.runner.import_blocks(rest, src.runner.export_blocks(blocks[sent : sent + len(rest)]))
    state = src.export_request(rid)
    dst.import_request(state, reserved + rest)
    src.release_request(rid)
    return True


def _finish(engine: LLMEngine) -> dict[str, list]:
    outs: dict[str, list] = {}
    while engine.has_unfinished_requests():
        _run(engine, "", outs)
    return outs


@pytest.mark.parametrize("params", [GREEDY, SEEDED, STOPPING], ids=["greedy", "seeded", "stop"])
@pytest.mark.parametrize("after_steps", [0, 1, 5, 13])
def test_migrated_request_equals_unmigrated(
    engines: tuple[LLMEngine, LLMEngine], params: SamplingParams, after_steps: int
) -> None:
    a, b = engines
    free = (a.block_manager.num_free_blocks, b.block_manager.num_free_blocks)
    reference = a.generate([PROMPT], params)[0]

    rid = f"m-{after_steps}-{params.temperature}"
    a.add_request(rid, PROMPT, params)
    before: dict[str, list] = {}
    for _ in range(after_steps):
        _run(a, rid, before)
    if not a.has_unfinished_requests():
        pytest.skip("finished before the migration point")
    move(a, b, rid, before)  # False when it finished while its blocks were copied: fine too
    after = _finish(b)
    assert not a.has_unfinished_requests()
    outs = before.get(rid, []) + after.get(rid, [])
    assert [t for o in outs for t in o.new_token_ids] == reference.token_ids[0]
    assert "".join(o.new_text for o in outs) == reference.texts[0]
    assert outs[-1].finished and outs[-1].finish_reason == reference.finish_reasons[0]
    if params.logprobs is not None:
        assert all(o.logprobs is not None for o in outs if o.new_token_ids)
    assert (a.block_manager.num_free_blocks, b.block_manager.num_free_blocks) == free


def test_waiting_request_moves_without_kv(engines: tuple[LLMEngine, LLMEngine]) -> None:
    a, b = engines
    reference = a.generate([PROMPT], GREEDY)[0]
    a.add_request("w", PROMPT, GREEDY)  # not stepped: never prefilled
    assert a.migration_blocks("w") == ([], 0)
    a.pause_request("w")
    state = a.export_request("w")
    assert state.num_computed_tokens == 0
    b.import_request(state, [])
    a.release_request("w")
    outs = _finish(b)["w"]
    assert [t for o in outs for t in o.new_token_ids] == reference.token_ids[0]


def test_refusals_name_the_reason(engines: tuple[LLMEngine, LLMEngine]) -> None:
    a, b = engines
    with pytest.raises(ValueError, match="not in flight"):
        a.export_request("nope")
    a.add_request("twins", PROMPT, dataclasses.replace(GREEDY, n=2))
    with pytest.raises(ValueError, match="n > 1"):
        a.migration_blocks("twins")
    a.abort_request("twins")
    _finish(a)
    a.add_request("dup", PROMPT, GREEDY)
    state = a.export_request("dup")
    with pytest.raises(ValueError, match="block_ids"):
        b.import_request(dataclasses.replace(state, num_computed_tokens=8), [])
    a.abort_request("dup")
    _finish(a)
    assert b.reserve_blocks(10**6) is None


def test_a_paused_request_is_neither_scheduled_nor_preempted(
    engines: tuple[LLMEngine, LLMEngine],
) -> None:
    a, _ = engines
    a.add_request("p", PROMPT, GREEDY)
    _run(a, "p", {})
    a.pause_request("p")
    blocks, computed = a.migration_blocks("p")
    for _ in range(3):
        assert a.step() == []  # nothing runs: the only request is paused
    assert a.migration_blocks("p") == (blocks, computed)
    a.resume_request("p")  # an aborted migration: it goes on here
    outs = _finish(a)["p"]
    assert outs[-1].finished and outs[-1].num_output_tokens == GREEDY.max_tokens


def test_blocks_copied_from_a_mapped_source_cache(engines: tuple[LLMEngine, LLMEngine]) -> None:
    """cuda_ipc's destination side: blocks read straight from the source's cache tensor (here
    the same process's, as CUDA IPC maps it on a GPU) make the request continue exactly."""
    a, b = engines
    reference = a.generate([PROMPT], GREEDY)[0]
    a.add_request("ipc", PROMPT, GREEDY)
    outs: dict[str, list] = {}
    for _ in range(6):
        _run(a, "ipc", outs)
    a.pause_request("ipc")
    blocks, computed = a.migration_blocks("ipc")
    ids = b.reserve_blocks(len(blocks))
    assert ids is not None
    b.runner.copy_blocks_from(a.runner.kv_cache, blocks, ids)
    b.import_request(a.export_request("ipc"), ids)
    a.release_request("ipc")
    outs["ipc"] += _finish(b)["ipc"]
    assert [t for o in outs["ipc"] for t in o.new_token_ids] == reference.token_ids[0]
    with pytest.raises(ValueError, match="source_ids"):
        b.runner.copy_blocks_from(a.runner.kv_cache, [10**6], [0])


def test_a_lora_request_migrates_with_its_adapter(
    tiny_checkpoint: Callable[[str], Path],
    build_hf: Callable[[str], torch.nn.Module],
    tmp_path: Path,
) -> None:
    """Co-migration as the replicas do it: the destination serves the adapter too (every replica
    loads the catalog); the moved request keeps its adapter and PEFT's exact tokens. A
    destination without the adapter refuses the import by name."""
    import peft

    model = peft.get_peft_model(
        build_hf("llama"), peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "o_proj"])
    )
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.15)
    model.save_pretrained(tmp_path / "sql")
    config = EngineConfig(
        model=ModelConfig(model=str(tiny_checkpoint("llama")), dtype="float32"),
        cache=CacheConfig(block_size=4, num_gpu_blocks_override=96),
        device="cpu",
        lora=LoRAConfig(max_loras=2),
    )
    a, b, bare = LLMEngine(config), LLMEngine(config), LLMEngine(config)
    for engine in (a, b):
        engine.add_adapter("sql", str(tmp_path / "sql"))
    prompt = [5, 17, 29, 41, 53, 65, 77]
    a.add_request("lora", prompt, GREEDY, adapter="sql")
    before: dict[str, list] = {}
    for _ in range(4):
        _run(a, "lora", before)
    with pytest.raises(ValueError, match="adapter 'sql' is not loaded"):
        bare.import_request(a.export_request("lora"), [])
    assert move(a, b, "lora", before)
    outs = before["lora"] + _finish(b)["lora"]
    tokens = [t for o in outs for t in o.new_token_ids]
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(GREEDY.max_tokens):
            ids.append(int(model.eval()(torch.tensor([ids])).logits[0, -1].argmax()))
    assert tokens == ids[len(prompt) :]
    assert b.block_manager.num_free_blocks == b.block_manager.num_total_blocks
