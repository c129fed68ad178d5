"""ModelRunner sizing, swaps and input checks; the checkpoint loader's errors; RoPE variants."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_models_parity import BLOCK, BlockPool, make_requests, make_runner, step

from actors.common.config import CacheConfig, EngineConfig, ModelConfig
from actors.engine.model_runner import ModelRunner
from actors.engine.outputs import ScheduledChunk, SchedulerOutput
from actors.models.config import RopeConfig, load_arch_config, parse_arch_config
from actors.models.rope import inv_frequencies

Checkpoint = Callable[[str], Path]
HFModel = Callable[[str], torch.nn.Module]


def runner_for(path: Path, device: str = "cpu", **cache: object) -> ModelRunner:
    return ModelRunner(
        EngineConfig(model=ModelConfig(model=str(path)), cache=CacheConfig(**cache), device=device)
    )


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---- sizing ---------------------------------------------------------------------------------


def test_cpu_cache_sized_from_byte_budget(tiny_checkpoint: Checkpoint) -> None:
    # llama tiny: 2 layers x K,V x 16 tokens x 2 kv heads x 16 dims x 4 bytes = 8 KiB per block
    runner = runner_for(tiny_checkpoint("llama"), cpu_kv_cache_bytes=100 * 8192 + 5)
    assert runner.kv_block_bytes == 8192
    assert runner.num_blocks == 100
    assert runner.num_host_blocks == 0
    assert runner.kv_cache.shape == (2, 2, 100, 16, 2, 16)
    assert runner.kv_caches[1][0].shape == (100, 16, 2, 16)  # layer 1's K: the kernel layout
    assert runner.device == torch.device("cpu")
    assert runner.dtype == torch.float32  # "auto" on CPU
    assert runner.vocab_size == 300
    assert runner.max_model_len == 256
    assert runner.block_size == 16


def test_override_and_swap_pool(tiny_checkpoint: Checkpoint) -> None:
    runner = runner_for(
        tiny_checkpoint("llama"), num_gpu_blocks_override=7, swap_space_bytes=3 * 8192
    )
    assert runner.num_blocks == 7
    assert runner.num_host_blocks == 3
    assert runner.host_kv_cache.shape == (2, 2, 3, 16, 2, 16)


def test_cache_budget_too_small_names_the_field(tiny_checkpoint: Checkpoint) -> None:
    with pytest.raises(ValueError, match="cpu_kv_cache_bytes"):
        runner_for(tiny_checkpoint("llama"), cpu_kv_cache_bytes=100)


def test_sliding_window_clamps_max_model_len(
    tiny_checkpoint: Checkpoint, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        runner = runner_for(tiny_checkpoint("mistral"), num_gpu_blocks_override=8)
    assert runner.max_model_len == 128
    assert "sliding window" in caplog.text


def test_max_model_len_beyond_the_model_is_rejected(tiny_checkpoint: Checkpoint) -> None:
    cfg = EngineConfig(model=ModelConfig(model=str(tiny_checkpoint("llama")), max_model_len=999))
    with pytest.raises(ValueError, match="max_model_len.*max_position_embeddings"):
        ModelRunner(cfg)


@pytest.mark.parametrize("device", ["tpu", "cuda:99"])
def test_bad_device(device: str, tiny_checkpoint: Checkpoint) -> None:
    with pytest.raises(ValueError, match="device"):
        runner_for(tiny_checkpoint("llama"), device=device)


# ---- execute --------------------------------------------------------------------------------


def test_swap_out_and_in_preserves_kv(tiny_checkpoint: Checkpoint, tiny_hf_model: HFModel) -> None:
    """Prefill, swap the blocks out, clobber them, swap into other blocks, decode == HF."""
    runner = ModelRunner(
        EngineConfig(
            model=ModelConfig(model=str(tiny_checkpoint("qwen2"))),
            cache=CacheConfig(block_size=BLOCK, num_gpu_blocks_override=16, swap_space_bytes=8192),
            device="cpu",
        )
    )
    assert runner.num_host_blocks == 4  # 2 layers x K,V x 4 tokens x 2 heads x 16 dims x 4 B
    pool = BlockPool(runner.num_blocks)
    (req,) = make_requests([10], seed=3)
    step(runner, pool, [(req, 10)], tiny_hf_model("qwen2"))
    old = list(req.block_ids)  # 3 blocks
    new = [b for b in range(runner.num_blocks) if b not in old][:3]
    runner.execute(SchedulerOutput(swap_out=list(zip(old, [2, 0, 3], strict=True))))
    runner.kv_cache[:, :, old] = 0.0  # the blocks are someone else's now
    runner.execute(SchedulerOutput(swap_in=list(zip(new, [2, 0, 3], strict=True))))
    req.block_ids = new
    step(runner, pool, [(req, 1)], tiny_hf_model("qwen2"))


def test_exported_blocks_continue_in_another_runner(
    tiny_checkpoint: Checkpoint, tiny_hf_model: HFModel
) -> None:
    """Prefill on one runner, move the KV blocks to other block ids of a second, decode there."""
    src, dst = (make_runner(tiny_checkpoint("llama3"), num_blocks=16) for _ in range(2))
    hf = tiny_hf_model("llama3")
    (req,) = make_requests([13], seed=4)
    step(src, BlockPool(16, seed=1), [(req, 13)], hf)
    data = src.export_blocks(req.block_ids)
    assert data.shape == (2, 2, len(req.block_ids), BLOCK, 2, 16)
    req.block_ids = [15, 3, 8, 0][: len(req.block_ids)]
    dst.import_blocks(req.block_ids, data)
    step(dst, BlockPool(16, seed=2), [(req, 1)], hf)
    with pytest.raises(ValueError, match="block_ids: block ids must be in"):
        dst.export_blocks([16])
    with pytest.raises(ValueError, match="data: shape"):
        dst.import_blocks([1], data)


def test_swap_ids_out_of_range(tiny_checkpoint: Checkpoint) -> None:
    runner = runner_for(tiny_checkpoint("llama"), num_gpu_blocks_override=4)
    with pytest.raises(ValueError, match="swap_out: host block ids.*swap_space_bytes"):
        runner.execute(SchedulerOutput(swap_out=[(0, 0)]))
    with pytest.raises(ValueError, match="swap_in: device block ids"):
        runner.execute(SchedulerOutput(swap_in=[(9, 0)]))


def test_chunk_without_enough_blocks_is_rejected(tiny_checkpoint: Checkpoint) -> None:
    runner = make_runner(tiny_checkpoint("llama"))
    (req,) = make_requests([9], seed=1)
    req.block_ids = [0, 1]  # 8 slots for 9 tokens
    with pytest.raises(ValueError, match="blocks of 4 cannot hold 9 tokens"):
        runner.execute(SchedulerOutput(chunks=[ScheduledChunk(req, 9)]))


def test_block_id_outside_the_cache_is_rejected(tiny_checkpoint: Checkpoint) -> None:
    runner = make_runner(tiny_checkpoint("llama"), num_blocks=8)
    (req,) = make_requests([5], seed=1)
    req.block_ids = [3, 8]
    with pytest.raises(ValueError, match=r"block_ids: .* outside \[0, 8\)"):
        runner.execute(SchedulerOutput(chunks=[ScheduledChunk(req, 5)]))


def test_step_without_sampling_returns_no_rows(tiny_checkpoint: Checkpoint) -> None:
    runner = make_runner(tiny_checkpoint("llama"))
    (req,) = make_requests([9], seed=1)
    req.block_ids = [0, 1, 2]
    logits = runner.execute(SchedulerOutput(chunks=[ScheduledChunk(req, 5)]))
    assert logits.shape == (0, 300)
    assert runner.execute(SchedulerOutput()).shape == (0, 300)


# ---- loading --------------------------------------------------------------------------------


def first_logits(runner: ModelRunner, seed: int = 2) -> torch.Tensor:
    (req,) = make_requests([6], seed=seed)
    req.block_ids = [0, 1]
    return runner.execute(SchedulerOutput(chunks=[ScheduledChunk(req, 6)]))


def test_sharded_checkpoint_loads_like_single_file(
    tiny_checkpoint: Checkpoint, tiny_hf_model: HFModel, tmp_path: Path
) -> None:
    tiny_hf_model("llama").save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    sharded = first_logits(make_runner(tmp_path))
    single = first_logits(make_runner(tiny_checkpoint("llama")))
    torch.testing.assert_close(sharded, single, atol=0, rtol=0)


def test_dummy_weights_are_seeded(tiny_checkpoint: Checkpoint) -> None:
    def dummy(seed: int) -> torch.Tensor:
        cfg = EngineConfig(
            model=ModelConfig(model=str(tiny_checkpoint("qwen3")), load_format="dummy", seed=seed),
            cache=CacheConfig(block_size=BLOCK, num_gpu_blocks_override=8),
            device="cpu",
        )
        return first_logits(ModelRunner(cfg))

    a, b, c = dummy(1), dummy(1), dummy(2)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(a, c)


def test_dummy_needs_no_weight_files(tiny_checkpoint: Checkpoint, tmp_path: Path) -> None:
    shutil.copy(tiny_checkpoint("llama") / "config.json", tmp_path / "config.json")
    cfg = EngineConfig(
        model=ModelConfig(model=str(tmp_path), load_format="dummy"),
        cache=CacheConfig(num_gpu_blocks_override=4),
        device="cpu",
    )
    assert ModelRunner(cfg).num_blocks == 4


def rewrite_weights(path: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def _drop(t: dict[str, torch.Tensor]) -> None:
    del t["model.layers.1.mlp.down_proj.weight"]


def _reshape(t: dict[str, torch.Tensor]) -> None:
    t["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(16, 64)


def _extra(t: dict[str, torch.Tensor]) -> None:
    t["model.layers.0.self_attn.mystery.weight"] = torch.zeros(3)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_drop, r"missing 1 weight tensor\(s\): model.layers.1.mlp.down_proj.weight"),
        (_reshape, r"model.safetensors: tensor 'model.layers.0.self_attn.k_proj.weight' has "),
        (_extra, r"model.safetensors: tensor 'model.layers.0.self_attn.mystery.weight' is not"),
    ],
)
def test_bad_weights(
    edit: Callable[[dict[str, torch.Tensor]], None],
    message: str,
    tiny_checkpoint: Checkpoint,
    tmp_path: Path,
) -> None:
    path = copy_checkpoint(tiny_checkpoint("llama"), tmp_path / "ckpt")
    rewrite_weights(path, edit)
    with pytest.raises(ValueError, match=message):
        make_runner(path)


def test_missing_directory_config_and_weights(tiny_checkpoint: Checkpoint, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        make_runner(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"config.json: not found"):
        make_runner(tmp_path)
    shutil.copy(tiny_checkpoint("llama") / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no \*.safetensors.*pytorch_model.bin"):
        make_runner(tmp_path)


def test_index_naming_a_missing_shard(tiny_hf_model: HFModel, tmp_path: Path) -> None:
    tiny_hf_model("llama").save_pretrained(tmp_path, max_shard_size="100KB")
    next(iter(sorted(tmp_path.glob("model-*.safetensors")))).unlink()
    with pytest.raises(ValueError, match=r"index.json: lists model-00001-of-.* does not exist"):
        make_runner(tmp_path)


def test_corrupt_safetensors(tiny_checkpoint: Checkpoint, tmp_path: Path) -> None:
    path = copy_checkpoint(tiny_checkpoint("llama"), tmp_path / "ckpt")
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file"):
        make_runner(path)


# ---- config.json ----------------------------------------------------------------------------


def base_config(tiny_checkpoint: Checkpoint, name: str = "llama") -> dict:
    return json.loads((tiny_checkpoint(name) / "config.json").read_text())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_size": None}, "'hidden_size' is missing"),
        ({"num_hidden_layers": "two"}, "'num_hidden_layers' must be an integer"),
        ({"num_key_value_heads": 3}, "'num_key_value_heads' .* must divide"),
        ({"hidden_act": "gelu"}, "'hidden_act' must be 'silu'"),
        ({"architectures": ["GPT2LMHeadModel"]}, "not supported .*LlamaForCausalLM.*Qwen3"),
        ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, "rope_type.*dynamic"),
        ({"rope_parameters": {"rope_type": "linear"}}, "'factor' is missing"),
        ({"torch_dtype": "int8"}, "'torch_dtype' must be one of"),
    ],
)
def test_bad_config_names_file_and_key(
    change: dict, message: str, tiny_checkpoint: Checkpoint, tmp_path: Path
) -> None:
    raw = {**base_config(tiny_checkpoint), **change}
    raw = {k: v for k, v in raw.items() if v is not None}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=f"config.json.*{message}"):
        load_arch_config(tmp_path)


def test_config_dialects(tiny_checkpoint: Checkpoint) -> None:
    """transformers 4.x keys (rope_theta + rope_scaling, torch_dtype) read like 5.x ones."""
    v5 = base_config(tiny_checkpoint, "llama3")
    v4 = {k: v for k, v in v5.items() if k not in ("rope_parameters", "dtype")}
    params = dict(v5["rope_parameters"])
    v4["rope_theta"] = params.pop("rope_theta")
    v4["rope_scaling"] = params
    v4["torch_dtype"] = "bfloat16"
    a, b = parse_arch_config(v5), parse_arch_config(v4)
    assert a.rope == b.rope
    assert a.rope.rope_type == "llama3" and a.rope.theta == 500000.0
    assert b.torch_dtype == "bfloat16"
    assert a.tie_word_embeddings
    qwen3 = parse_arch_config(base_config(tiny_checkpoint, "qwen3"))
    assert (qwen3.head_dim, qwen3.qk_norm, qwen3.qkv_bias) == (32, True, False)
    qwen2 = parse_arch_config(base_config(tiny_checkpoint, "qwen2"))
    assert (qwen2.qkv_bias, qwen2.o_bias, qwen2.sliding_window) == (True, False, None)


@pytest.mark.parametrize(
    "scaling",
    [
        {"rope_type": "linear", "factor": 4.0},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096},
        {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 2048,
         "beta_fast": 16, "mscale": 1.0, "mscale_all_dim": 0.5},
    ],
)  # fmt: skip
def test_rope_scaling_matches_transformers(scaling: dict) -> None:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    raw = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 512,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "vocab_size": 10,
        "max_position_embeddings": 16384,
        "rope_theta": 500000.0,
        "rope_scaling": scaling,
    }
    ours = parse_arch_config(raw)
    hf_cfg = LlamaConfig(**{k: v for k, v in raw.items() if k != "architectures"})
    hf_inv, hf_scale = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](hf_cfg, "cpu")
    inv, scale = inv_frequencies(ours.rope, ours.head_dim)
    torch.testing.assert_close(inv, hf_inv, atol=0, rtol=1e-6)
    assert scale == pytest.approx(hf_scale)
    assert inv_frequencies(RopeConfig(), 128)[1] == 1.0


# ---- GPU ------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_sizing_profile_and_swap(tiny_checkpoint: Checkpoint, tiny_hf_model: HFModel) -> None:
    """KV sized from gpu_memory_utilization after a profile step; swaps through pinned memory."""
    config = EngineConfig(
        model=ModelConfig(model=str(tiny_checkpoint("qwen2"))),
        cache=CacheConfig(gpu_memory_utilization=0.2, swap_space_bytes=1 << 20),
        device="auto",
    )
    runner = ModelRunner(config)
    total = torch.cuda.mem_get_info()[1]
    assert runner.device.type == "cuda" and runner.device.index is not None
    assert runner.dtype == torch.float32  # the checkpoint's torch_dtype
    assert 0 < runner.num_blocks * runner.kv_block_bytes <= 0.2 * total
    assert runner.host_kv_cache.is_pinned()
    pool = BlockPool(runner.num_blocks, block_size=runner.block_size)
    (req,) = make_requests([40], seed=3)
    hf = tiny_hf_model("qwen2")
    step(runner, pool, [(req, 40)], hf, 2e-2)
    old = list(req.block_ids)
    new = [b for b in range(runner.num_blocks) if b not in old][: len(old)]
    host = list(range(len(old)))
    runner.execute(SchedulerOutput(swap_out=list(zip(old, host, strict=True))))
    runner.kv_cache[:, :, old] = 0.0
    runner.execute(SchedulerOutput(swap_in=list(zip(new, host, strict=True))))
    req.block_ids = new
    step(runner, pool, [(req, 1)], hf, 2e-2)
