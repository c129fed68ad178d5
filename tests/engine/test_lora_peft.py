"""Multi-LoRA against PEFT: greedy output token-exact with `PeftModel` for adapters of ranks 4 / 8
/ 16 on different module sets (rslora too), all in one batch with base-only requests and
repeated adapters, with fewer device slots than adapters (paging); and every bad adapter
refused by name with nothing loaded."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import peft
import pytest
import torch

from actors.common.config import EngineConfig, LoRAConfig, ModelConfig, SchedulerConfig
from actors.common.sampling_params import SamplingParams
from actors.engine.engine import LLMEngine
from actors.lora.adapter import AdapterError

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# name -> (rank, target modules, use_rslora)
SPECS: dict[str, tuple[int, list[str], bool]] = {
    "r4-qv": (4, ["q_proj", "v_proj"], False),
    "r8-all": (8, ALL, False),
    "r16-mlp-o": (16, ["o_proj", "up_proj", "down_proj"], False),
    "r8-rslora": (8, ["k_proj", "gate_proj"], True),
}
MAX_NEW = 8
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True)


def make_adapter(
    base: torch.nn.Module,
    name: str,
    out: Path,
    seed: int,
    spec: tuple[int, list[str], bool] | None = None,
) -> torch.nn.Module:
    """A PEFT adapter with random (non-zero) A and B saved under out/name; its PeftModel."""
    rank, targets, rslora = spec or SPECS[name]
    config = peft.LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=targets, use_rslora=rslora, lora_dropout=0.0
    )
    model = peft.get_peft_model(base, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if "lora_" in pname:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.15)
    model.save_pretrained(out / name)
    return model.eval()


@pytest.fixture(scope="module")
def adapters(
    tmp_path_factory: pytest.TempPathFactory, build_hf: Callable[[str], torch.nn.Module]
) -> dict[str, tuple[Path, torch.nn.Module]]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: (root / name, make_adapter(build_hf("llama"), name, root, seed))
        for seed, name in enumerate(SPECS)
    }


def engine_for(
    path: Path, max_loras: int = 2, max_rank: int = 16, device: str = "cpu"
) -> LLMEngine:
    return LLMEngine(
        EngineConfig(
            model=ModelConfig(model=str(path), dtype="float32"),
            device=device,
            lora=LoRAConfig(max_loras=max_loras, max_lora_rank=max_rank),
        )
    )


def greedy(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids])).logits[0, -1]
            ids.append(int(logits.argmax()))
    return ids[len(prompt) :]


ON_GPU = pytest.param(
    "cuda",
    marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    ],
)


@pytest.mark.parametrize("device", ["cpu", ON_GPU])
def test_one_batch_of_mixed_adapters_equals_peft_with_paging(
    tiny_checkpoint: Callable[[str], Path],
    tiny_hf_model: Callable[[str], torch.nn.Module],
    adapters: dict[str, tuple[Path, torch.nn.Module]],
    device: str,
) -> None:
    """On a GPU this also runs the SGMV Triton kernels compiled and the side-stream prefetch."""
    engine = engine_for(tiny_checkpoint("llama"), max_loras=2, device=device)  # 4 adapters, 2 slots
    for name, (path, _) in adapters.items():
        engine.add_adapter(name, str(path))
    rng = random.Random(3)
    order = [None, "r4-qv", "r8-all", "r16-mlp-o", "r4-qv", None, "r8-rslora", "r8-all"]
    prompts = [[rng.randrange(4, 260) for _ in range(rng.randrange(3, 30))] for _ in order]
    results = engine.generate(prompts, GREEDY, adapters=order)
    for prompt, name, result in zip(prompts, order, results, strict=True):
        model = tiny_hf_model("llama") if name is None else adapters[name][1]
        assert result.token_ids[0] == greedy(model, prompt, MAX_NEW), name
    pool = engine.runner.lora.pool
    assert pool.num_loads >= 4 and pool.num_evictions >= 2  # it paged
    if device == "cuda":  # the decodes replayed the LoRA graphs
        assert engine.runner.decode_graphs is not None and engine.runner.decode_graphs.lora
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_total_blocks


def test_ten_adapters_through_two_slots_never_evict_one_in_use(
    tiny_checkpoint: Callable[[str], Path],
    build_hf: Callable[[str], torch.nn.Module],
    tmp_path: Path,
) -> None:
    """S-LoRA's paging check: 10 adapters in use through a pool of 2 device slots; every request
    gets its own adapter's output, no adapter a running request uses is ever evicted, and
    nothing stays in use afterwards."""
    specs = list(SPECS)
    models = {}
    engine = engine_for(tiny_checkpoint("llama"), max_loras=2)
    for k in range(10):
        name, spec = f"a{k}", SPECS[specs[k % len(specs)]]
        models[name] = make_adapter(build_hf("llama"), name, tmp_path, 100 + k, spec)
        engine.add_adapter(name, str(tmp_path / name))
    pool = engine.runner.lora.pool
    evict = pool.evict

    def checked_evict(name: str) -> None:
        running = {r.adapter_id for r in engine.scheduler.running_requests()}
        assert name not in running, f"{name} evicted while a running request uses it"
        evict(name)

    pool.evict = checked_evict  # type: ignore[method-assign]
    rng = random.Random(8)
    order = [f"a{rng.randrange(10)}" for _ in range(16)] + [None, None]
    prompts = [[rng.randrange(4, 260) for _ in range(rng.randrange(3, 20))] for _ in order]
    results = engine.generate(prompts, GREEDY, adapters=order)
    for prompt, name, result in zip(prompts, order, results, strict=True):
        model = build_hf("llama").eval() if name is None else models[name]
        assert result.token_ids[0] == greedy(model, prompt, MAX_NEW), name
    assert pool.num_evictions >= 8
    assert not engine.scheduler.running_requests() and not engine.has_unfinished_requests()


def test_equal_to_the_merged_model_too(
    tiny_checkpoint: Callable[[str], Path],
    build_hf: Callable[[str], torch.nn.Module],
    tmp_path: Path,
) -> None:
    """PEFT's other reference: the adapter merged into the base weights (merge_and_unload)."""
    peft_model = make_adapter(build_hf("llama"), "r8-all", tmp_path, seed=11)
    merged = peft_model.merge_and_unload()
    engine = engine_for(tiny_checkpoint("llama"))
    engine.add_adapter("m", str(tmp_path / "r8-all"))
    prompts = [list(range(7, 7 + n)) for n in (3, 11, 25)]
    outs = engine.generate(prompts, GREEDY, adapters=["m", None, "m"])
    assert outs[0].token_ids[0] == greedy(merged, prompts[0], MAX_NEW)
    assert outs[2].token_ids[0] == greedy(merged, prompts[2], MAX_NEW)


def test_the_adapters_change_the_output(
    tiny_checkpoint: Callable[[str], Path], adapters: dict[str, tuple[Path, torch.nn.Module]]
) -> None:
    """Guards the parity test: base and adapter outputs differ, so equal outputs mean something."""
    engine = engine_for(tiny_checkpoint("llama"), max_loras=4)
    for name, (path, _) in adapters.items():
        engine.add_adapter(name, str(path))
    prompt = list(range(10, 30))
    outs = engine.generate([prompt] * 5, GREEDY, adapters=[None, *SPECS])
    assert len({tuple(o.token_ids[0]) for o in outs}) == 5


def test_unload_lets_requests_finish_and_refuses_new_ones(
    tiny_checkpoint: Callable[[str], Path], adapters: dict[str, tuple[Path, torch.nn.Module]]
) -> None:
    engine = engine_for(tiny_checkpoint("llama"))
    engine.add_adapter("a", str(adapters["r4-qv"][0]))
    engine.add_request("x", [5, 6, 7], GREEDY, adapter="a")
    engine.step()
    engine.remove_adapter("a")
    with pytest.raises(AdapterError, match="model: adapter 'a' is not loaded"):
        engine.add_request("y", [5, 6, 7], GREEDY, adapter="a")
    tokens = []
    while engine.has_unfinished_requests():
        tokens += [t for out in engine.step() for t in out.new_token_ids]
    assert len(tokens) == MAX_NEW - 1  # the first step's token came before the unload
    assert engine.adapters.listing() == [] and engine.resident_adapters() == []


def test_placement_puts_adapters_on_and_off_the_device_but_never_takes_a_running_ones_slot(
    tiny_checkpoint: Callable[[str], Path], adapters: dict[str, tuple[Path, torch.nn.Module]]
) -> None:
    engine = engine_for(tiny_checkpoint("llama"), max_loras=2)
    for name, (path, _) in adapters.items():
        engine.add_adapter(name, str(path))
    a, b, c, d = SPECS
    assert engine.place_adapter(a, True) and engine.place_adapter(b, True)
    assert sorted(engine.resident_adapters()) == sorted([a, b])
    engine.add_request("x", [5, 6, 7], GREEDY, adapter=a)
    engine.step()  # `a` runs now
    assert engine.place_adapter(c, True)  # takes b's slot (nobody uses b), never a's
    assert sorted(engine.resident_adapters()) == sorted([a, c])
    engine.add_request("y", [5, 6, 7], GREEDY, adapter=c)
    engine.step()  # both slots are held by running requests now
    assert not engine.place_adapter(d, True)
    assert not engine.place_adapter(a, False)  # a running request keeps it
    with pytest.raises(AdapterError, match="not loaded"):
        engine.place_adapter("nobody", True)
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.place_adapter(c, False) and engine.resident_adapters() == [a]
    assert engine.stats().adapter_requests == {a: 1, c: 1}


def test_reloading_changed_content_is_a_new_version(
    tiny_checkpoint: Callable[[str], Path],
    adapters: dict[str, tuple[Path, torch.nn.Module]],
    tmp_path: Path,
) -> None:
    engine = engine_for(tiny_checkpoint("llama"))
    first = engine.add_adapter("a", str(adapters["r4-qv"][0]))
    assert engine.add_adapter("a", str(adapters["r4-qv"][0])) is first  # same content: no-op
    second = engine.add_adapter("a", str(adapters["r8-all"][0]))
    assert second.version != first.version
    out = engine.generate([[9, 10, 11]], GREEDY, adapters=["a"])[0].token_ids[0]
    assert out == greedy(adapters["r8-all"][1], [9, 10, 11], MAX_NEW)


def _copy(src: Path, dst: Path, edit: Callable[[dict], None] | None = None) -> Path:
    shutil.copytree(src, dst)
    if edit is not None:
        cfg = json.loads((dst / "adapter_config.json").read_text())
        edit(cfg)
        (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


def _padded(src: Path, dst: Path, name: str, size: int) -> Path:
    """A copy of the adapter at `src` whose file `name` is grown to `size` bytes (sparse)."""
    out = _copy(src, dst)
    with open(out / name, "r+b") as f:
        f.truncate(size)
    return out


def test_bad_adapters_are_refused_by_name(
    tiny_checkpoint: Callable[[str], Path],
    build_hf: Callable[[str], torch.nn.Module],
    adapters: dict[str, tuple[Path, torch.nn.Module]],
    tmp_path: Path,
) -> None:
    engine = engine_for(tiny_checkpoint("llama"), max_rank=8)
    good = adapters["r4-qv"][0]
    pickle = _copy(good, tmp_path / "pickle")
    (pickle / "adapter_model.safetensors").rename(pickle / "adapter_model.bin")
    other_base = tmp_path / "other"
    make_adapter(build_hf("qwen3"), "r4-qv", tmp_path, 0).save_pretrained(other_base)
    cases = {
        str(pickle): "adapter_model.bin is a pickle",
        str(adapters["r16-mlp-o"][0]): "r: rank 16 is over max_lora_rank 8",
        str(_copy(good, tmp_path / "lm", lambda c: c.update(target_modules=["lm_head"]))): (
            r"target_modules: \['lm_head'\] not supported"
        ),
        str(_copy(good, tmp_path / "rx", lambda c: c.update(target_modules=".*proj"))): (
            "target_modules: must be a list"
        ),
        str(_copy(good, tmp_path / "dora", lambda c: c.update(use_dora=True))): "use_dora: True",
        str(other_base): "do not fit this model",
        str(tmp_path / "nowhere"): "lora_path: .* is not a directory",
        str(_padded(good, tmp_path / "huge", "adapter_model.safetensors", 64 << 20)): (
            "more than a rank-4 adapter of this model can hold"
        ),
        str(_padded(good, tmp_path / "bigcfg", "adapter_config.json", 2 << 20)): (
            "adapter_config.json: .* bytes, over the"
        ),
    }
    for path, says in cases.items():
        with pytest.raises(AdapterError, match=says):
            engine.add_adapter("bad", path)
    with pytest.raises(AdapterError, match="lora_name"):
        engine.add_adapter("../evil", str(good))
    assert engine.adapters.listing() == []
    with pytest.raises(ValueError, match="model: adapter 'nope' is not loaded"):
        engine.add_request("r", [1, 2], GREEDY, adapter="nope")


def test_adapters_need_lora_enabled(tiny_checkpoint: Callable[[str], Path]) -> None:
    engine = LLMEngine.from_model(str(tiny_checkpoint("llama")), dtype="float32", device="cpu")
    with pytest.raises(AdapterError, match="lora.max_loras is 0"):
        engine.add_adapter("a", "/tmp")


def test_queued_requests_adapters_are_prefetched_before_they_run(
    tiny_checkpoint: Callable[[str], Path], adapters: dict[str, tuple[Path, torch.nn.Module]]
) -> None:
    config = EngineConfig(
        model=ModelConfig(model=str(tiny_checkpoint("llama")), dtype="float32"),
        scheduler=SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=64),
        device="cpu",
        lora=LoRAConfig(max_loras=2, max_lora_rank=16),
    )
    engine = LLMEngine(config)
    for name in ("r4-qv", "r8-all"):
        engine.add_adapter(name, str(adapters[name][0]))
    engine.add_request("first", [5, 6, 7], GREEDY, adapter="r4-qv")
    engine.add_request("next", [8, 9, 10], GREEDY, adapter="r8-all")  # waits: one seq at a time
    engine.step()
    pool = engine.runner.lora.pool
    assert engine.scheduler.get_request("next").status.name == "WAITING"
    assert set(pool.resident()) == {"r4-qv", "r8-all"} and pool.num_prefetches == 1
    while engine.has_unfinished_requests():
        engine.step()
    assert pool.num_loads == 2  # the prefetched one was not loaded again
