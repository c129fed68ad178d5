"""Architecture name (config.json `architectures[0]`) -> model class."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from actors.models.config import FAMILIES, ModelArchConfig
from actors.models.llama import LlamaForCausalLM

# Every family shares the decoder; the config's switches carry the differences.
MODEL_CLASSES: Mapping[str, type[LlamaForCausalLM]] = MappingProxyType(
    dict.fromkeys(FAMILIES, LlamaForCausalLM)
)


def supported_architectures() -> list[str]:
    return sorted(MODEL_CLASSES)


def model_class(cfg: ModelArchConfig) -> type[LlamaForCausalLM]:
    cls = MODEL_CLASSES.get(cfg.architecture)
    if cls is None:
        raise ValueError(
            f"architectures: {cfg.architecture!r} is not supported "
            f"(supported: {', '.join(supported_architectures())})"
        )
    return cls
