"""Shared fixtures: tiny random Hugging Face checkpoints of every supported architecture.

    def test_x(tiny_checkpoint, tiny_hf_model):
        path = tiny_checkpoint("qwen3")      # a directory: config.json, model.safetensors,
                                             # tokenizer.json, tokenizer_config.json
        hf = tiny_hf_model("qwen3")          # the same weights as a transformers model (fp32, eval)

Each checkpoint is built once per session (a few hundred KB; hidden 64, 2 layers, 4 heads / 2 KV
heads) with transformers' own classes and `save_pretrained`, so our loader reads exactly what HF
writes. Weights are re-drawn with a larger spread than HF's init (and biases / norm weights made
non-trivial) so that logits differ clearly between tokens and a wrongly loaded tensor shows.
The tokenizer is the embedded model's byte-level one (ids 0..263), so engine tests can run text.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from actors.models.embedded import BOS_ID, EOS_ID, PAD_ID, ensure_embedded_model

TINY_BASE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 300,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
    "pad_token_id": PAD_ID,
}

# name -> (transformers config class name, overrides). Covers: untied / tied embeddings, llama3
# and linear rope scaling, Llama's q/k/v/o and MLP biases, Mistral's sliding window (clamps
# max_model_len), Qwen2 qkv bias, Qwen3 q/k norm with a head_dim that is not hidden / heads.
TINY_SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {"tie_word_embeddings": False}),
    "llama_bias": (
        "LlamaConfig",
        {
            "attention_bias": True,
            "mlp_bias": True,
            "rope_scaling": {"type": "linear", "factor": 2.0},
        },
    ),
    "llama3": (
        "LlamaConfig",
        {
            "tie_word_embeddings": True,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        },
    ),
    "mistral": ("MistralConfig", {"sliding_window": 128, "tie_word_embeddings": False}),
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": True}),
    "qwen3": ("Qwen3Config", {"head_dim": 32, "tie_word_embeddings": False}),
}


def build_hf_model(name: str, seed: int = 0) -> torch.nn.Module:
    import transformers

    cls_name, overrides = TINY_SPECS[name]
    config = getattr(transformers, cls_name)(**{**TINY_BASE, **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if pname.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * torch.rand(param.shape, generator=gen) - 0.1)
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    return model.eval()


def write_tokenizer(path: Path) -> None:
    """The embedded model's byte-level tokenizer files, copied as they are."""
    src = ensure_embedded_model()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, path / name)


@pytest.fixture(scope="session")
def _tiny_cache(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Path, torch.nn.Module]]:
    return {}


@pytest.fixture(scope="session")
def tiny_checkpoint(
    tmp_path_factory: pytest.TempPathFactory,
    _tiny_cache: dict[str, tuple[Path, torch.nn.Module]],
) -> Callable[[str], Path]:
    """name -> checkpoint directory (built once per session)."""

    def get(name: str) -> Path:
        if name not in _tiny_cache:
            model = build_hf_model(name)
            path = tmp_path_factory.mktemp(f"tiny-{name}")
            model.save_pretrained(path)
            write_tokenizer(path)
            _tiny_cache[name] = (path, model)
        return _tiny_cache[name][0]

    return get


@pytest.fixture(scope="session")
def tiny_hf_model(
    tiny_checkpoint: Callable[[str], Path],
    _tiny_cache: dict[str, tuple[Path, torch.nn.Module]],
) -> Callable[[str], torch.nn.Module]:
    """name -> the transformers model whose weights the checkpoint holds."""

    def get(name: str) -> torch.nn.Module:
        tiny_checkpoint(name)
        return _tiny_cache[name][1]

    return get


@pytest.fixture(scope="session")
def build_hf() -> Callable[[str], torch.nn.Module]:
    """name -> a fresh transformers model with the tiny checkpoint's weights (for wrapping, e.g.
    by PEFT, without touching the shared one)."""
    return build_hf_model
