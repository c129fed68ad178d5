"""ModelArchConfig: the frozen architecture description parsed from a Hugging Face config.json.

Both config.json dialects are accepted: transformers 4.x (`rope_theta` + `rope_scaling`,
`torch_dtype`) and 5.x (`rope_parameters` holding `rope_theta`, `dtype`). Every problem raises a
ValueError that names config.json and the offending key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

# Architecture name -> the per-family switches the shared decoder reads. The model classes are
# registered in actors/models/registry.py; this table only says how to read each config.
FAMILIES: Mapping[str, str] = MappingProxyType(
    {
        "LlamaForCausalLM": "llama",
        "MistralForCausalLM": "mistral",
        "Qwen2ForCausalLM": "qwen2",
        "Qwen3ForCausalLM": "qwen3",
    }
)
MODEL_TYPES: Mapping[str, str] = MappingProxyType({fam: arch for arch, fam in FAMILIES.items()})
ROPE_TYPES = ("default", "linear", "llama3", "yarn")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class RopeConfig:
    rope_type: str = "default"  # default | linear | llama3 | yarn
    theta: float = 10000.0
    factor: float = 1.0
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    original_max_position_embeddings: int | None = None  # llama3, yarn
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    attention_factor: float | None = None  # yarn: None means derived from factor
    mscale: float | None = None  # yarn
    mscale_all_dim: float | None = None  # yarn
    truncate: bool = True  # yarn


@dataclass(frozen=True)
class ModelArchConfig:
    architecture: str
    family: str  # llama | mistral | qwen2 | qwen3
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope: RopeConfig
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over each q and k head before RoPE
    sliding_window: int | None = None  # None: full attention everywhere
    torch_dtype: str | None = None  # the checkpoint's dtype, if it says
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim


class _Reader:
    """Typed access to config.json keys; every error names the file and the key."""

    def __init__(self, raw: dict[str, Any], source: str) -> None:
        self.raw = raw
        self.source = source

    def fail(self, key: str, reason: str) -> ValueError:
        return ValueError(f"{self.source}: key {key!r} {reason}")

    def int_(self, key: str, default: int | None = None, minimum: int = 1) -> int:
        value = self.raw.get(key, default)
        if value is None:
            raise self.fail(key, "is missing")
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"must be an integer >= {minimum}, got {value!r}")
        return value

    def float_(self, key: str, default: float | None = None) -> float:
        value = self.raw.get(key, default)
        if value is None:
            raise self.fail(key, "is missing")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise self.fail(key, f"must be a positive number, got {value!r}")
        return float(value)

    def bool_(self, key: str, default: bool) -> bool:
        value = self.raw.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        return value


def load_arch_config(model_dir: str | Path) -> ModelArchConfig:
    """Reads `<model_dir>/config.json`."""
    path = Path(model_dir)
    if not path.is_dir():
        raise ValueError(f"model: directory {str(path)!r} does not exist")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{cfg_path}: not found (a model directory needs config.json)")
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{cfg_path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{cfg_path}: must hold a JSON object")
    return parse_arch_config(raw, str(cfg_path))


def parse_arch_config(raw: dict[str, Any], source: str = "config.json") -> ModelArchConfig:
    r = _Reader(raw, source)
    arch = _architecture(r)
    family = FAMILIES[arch]
    hidden = r.int_("hidden_size")
    heads = r.int_("num_attention_heads")
    kv_heads = r.int_("num_key_value_heads", heads)
    if heads % kv_heads:
        raise r.fail(
            "num_key_value_heads", f"({kv_heads}) must divide num_attention_heads ({heads})"
        )
    head_dim = raw.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            raise r.fail("hidden_size", f"({hidden}) must be divisible by num_attention_heads")
        head_dim = hidden // heads
    head_dim = r.int_("head_dim", head_dim)
    if head_dim % 2:
        raise r.fail("head_dim", f"must be even for rotary embeddings, got {head_dim}")
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise r.fail("hidden_act", f"must be 'silu' (the Llama family's MLP), got {act!r}")
    attention_bias = r.bool_("attention_bias", False)
    torch_dtype = raw.get("torch_dtype", raw.get("dtype"))
    if torch_dtype is not None and torch_dtype not in DTYPES:
        raise r.fail("torch_dtype", f"must be one of {', '.join(DTYPES)}, got {torch_dtype!r}")
    max_pos = r.int_("max_position_embeddings", 4096)
    return ModelArchConfig(
        architecture=arch,
        family=family,
        vocab_size=r.int_("vocab_size"),
        hidden_size=hidden,
        intermediate_size=r.int_("intermediate_size"),
        num_layers=r.int_("num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=r.float_("rms_norm_eps", 1e-6),
        max_position_embeddings=max_pos,
        rope=_rope(r, max_pos),
        tie_word_embeddings=r.bool_("tie_word_embeddings", False),
        qkv_bias=family == "qwen2" or attention_bias,
        o_bias=family != "qwen2" and attention_bias,
        mlp_bias=r.bool_("mlp_bias", False),
        qk_norm=family == "qwen3",
        sliding_window=_sliding_window(r, family),
        torch_dtype=torch_dtype,
        bos_token_id=raw.get("bos_token_id"),
        eos_token_id=raw.get("eos_token_id"),
    )


def _architecture(r: _Reader) -> str:
    supported = ", ".join(FAMILIES)
    archs = r.raw.get("architectures")
    if archs is None:  # configs saved without a model name their family only
        model_type = r.raw.get("model_type")
        if model_type in MODEL_TYPES:
            return MODEL_TYPES[model_type]
        raise r.fail(
            "architectures", f"is missing and model_type {model_type!r} is not one of {supported}"
        )
    if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
        raise r.fail("architectures", f"must be a non-empty list of names, got {archs!r}")
    if archs[0] not in FAMILIES:
        raise r.fail("architectures", f"names {archs[0]!r}, which is not supported ({supported})")
    return archs[0]


def _rope(r: _Reader, max_pos: int) -> RopeConfig:
    params = r.raw.get("rope_parameters") or r.raw.get("rope_scaling") or {}
    key = "rope_parameters" if "rope_parameters" in r.raw else "rope_scaling"
    if not isinstance(params, dict):
        raise r.fail(key, f"must be an object, got {params!r}")
    theta = params.get("rope_theta", r.raw.get("rope_theta", 10000.0))
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 0:
        raise r.fail("rope_theta", f"must be a positive number, got {theta!r}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise r.fail(
            f"{key}.rope_type", f"{rope_type!r} is not supported ({', '.join(ROPE_TYPES)})"
        )
    if rope_type == "default":
        return RopeConfig(theta=float(theta))
    sub = _Reader(params, f"{r.source} {key}")
    factor = sub.float_("factor")
    if rope_type == "linear":
        return RopeConfig(rope_type="linear", theta=float(theta), factor=factor)
    orig = sub.int_("original_max_position_embeddings", max_pos)
    if rope_type == "llama3":
        return RopeConfig(
            rope_type="llama3",
            theta=float(theta),
            factor=factor,
            low_freq_factor=sub.float_("low_freq_factor"),
            high_freq_factor=sub.float_("high_freq_factor"),
            original_max_position_embeddings=orig,
        )
    return RopeConfig(
        rope_type="yarn",
        theta=float(theta),
        factor=factor,
        original_max_position_embeddings=orig,
        beta_fast=float(params.get("beta_fast") or 32.0),
        beta_slow=float(params.get("beta_slow") or 1.0),
        attention_factor=params.get("attention_factor"),
        mscale=params.get("mscale"),
        mscale_all_dim=params.get("mscale_all_dim"),
        truncate=bool(params.get("truncate", True)),
    )


def _sliding_window(r: _Reader, family: str) -> int | None:
    window = r.raw.get("sliding_window")
    if window is None:
        return None
    # Qwen configs always carry a window but only use it behind use_sliding_window.
    if family in ("qwen2", "qwen3") and not r.bool_("use_sliding_window", False):
        return None
    return r.int_("sliding_window")
