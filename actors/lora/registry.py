"""The adapters one engine can serve, with their weights in host memory (the host tier; the device
tier is actors/lora/pool.py). Engine thread only.

Unloading an adapter that requests still use refuses new requests at once and lets those finish;
the weights go when the last one does. Loading a name again with the same content is a no-op;
with other content it is a new version (the prefix cache keys include it), refused while the old
one is in use.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch

from actors.common.config import LoRAConfig
from actors.lora.adapter import AdapterError, LoRAAdapter, load_adapter
from actors.lora.peft_config import ADAPTER_NAME, ADAPTER_NAME_RULE
from actors.models.config import ModelArchConfig

_NAME = re.compile(ADAPTER_NAME)


class AdapterRegistry:
    def __init__(
        self, arch: ModelArchConfig, lora: LoRAConfig, dtype: torch.dtype, pin: bool
    ) -> None:
        self._arch = arch
        self._lora = lora
        self._dtype = dtype  # the model's: a page-in is then a plain copy, no conversion
        self._pin = pin  # pinned host memory: the copies to the device run asynchronously
        self._adapters: dict[str, LoRAAdapter] = {}
        self._unloading: set[str] = set()

    def prepare(self, name: str, path: str) -> LoRAAdapter:
        """Read and check an adapter (any thread: it touches no state); AdapterError if bad."""
        if not self._lora.enabled:
            raise AdapterError("lora_name: adapters are off here (lora.max_loras is 0)")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise AdapterError(f"lora_name: {name!r} must be {ADAPTER_NAME_RULE}")
        adapter = load_adapter(name, Path(path), self._arch, self._lora.max_lora_rank)
        return for_device(adapter, self._dtype, self._pin)

    def install(self, adapter: LoRAAdapter, in_use: bool) -> LoRAAdapter:
        """Serve a prepared adapter (engine thread); what is served under its name after."""
        name = adapter.name
        old = self._adapters.get(name)
        if old is not None and old.version == adapter.version:
            self._unloading.discard(name)
            return old
        if old is not None and in_use:
            raise AdapterError(
                f"lora_name: {name!r} is in use with other content; unload it and wait for its "
                "requests to finish first"
            )
        self._adapters[name] = adapter
        self._unloading.discard(name)
        return adapter

    def remove(self, name: str, in_use: bool) -> None:
        if name not in self._adapters or name in self._unloading:
            raise AdapterError(f"lora_name: {name!r} is not loaded")
        if in_use:
            self._unloading.add(name)
        else:
            del self._adapters[name]

    def finished(self, name: str, in_use: bool) -> bool:
        """A request of `name` ended; True when this dropped an adapter being unloaded."""
        if name in self._unloading and not in_use:
            self._unloading.discard(name)
            del self._adapters[name]
            return True
        return False

    def for_request(self, name: str) -> LoRAAdapter:
        """The adapter a new request names; AdapterError if it cannot take requests."""
        adapter = self._adapters.get(name)
        if adapter is None or name in self._unloading:
            raise AdapterError(f"model: adapter {name!r} is not loaded here")
        return adapter

    def get(self, name: str) -> LoRAAdapter:
        """An adapter in-flight requests use (also while it is being unloaded)."""
        return self._adapters[name]

    def listing(self) -> list[LoRAAdapter]:
        return [a for n, a in self._adapters.items() if n not in self._unloading]


def for_device(adapter: LoRAAdapter, dtype: torch.dtype, pin: bool) -> LoRAAdapter:
    """The adapter's weights in `dtype`, in pinned memory if `pin` (host copies of them)."""

    def host(t: torch.Tensor) -> torch.Tensor:
        t = t.to(dtype)
        return t.pin_memory() if pin else t

    weights = {k: (host(a), host(b)) for k, (a, b) in adapter.weights.items()}
    return replace(adapter, weights=weights)
