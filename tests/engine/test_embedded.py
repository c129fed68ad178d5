"""The embedded default model: deterministic, cached, loadable by transformers, raced safely."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from actors.common.config import EMBEDDED_MODEL
from actors.common.tokenizer import Tokenizer
from actors.models.embedded import (
    EOS_ID,
    VOCAB_SIZE,
    build_weights,
    embedded_model_dir,
    ensure_embedded_model,
    resolve_model_path,
)


def _hashes(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FLEETLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_created_under_cache_deterministically(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = ensure_embedded_model()
    assert first.parent.parent == cache and first.is_dir()
    monkeypatch.setenv("FLEETLM_CACHE", str(tmp_path / "other"))
    second = ensure_embedded_model()
    assert second != first
    assert _hashes(first) == _hashes(second)
    size = sum(p.stat().st_size for p in first.iterdir())
    assert 1 << 20 < size < 8 << 20  # "a few MB"


# The weights must be the same on every machine (replicas on different nodes serve, and migrate
# requests between, "the same" model), whatever the numpy/torch version: pinned here.
WEIGHTS_SHA256 = "9e58e571849e9a3a400100abc2413d470c48d1374b2de6ac7d9fdbe66203106a"


def test_weights_are_pinned_across_machines() -> None:
    digest = hashlib.sha256()
    for name, tensor in sorted(build_weights().items()):
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    assert digest.hexdigest() == WEIGHTS_SHA256


def test_cache_dir_fallbacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETLM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert embedded_model_dir().is_relative_to(tmp_path / "xdg" / "fleetlm")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert embedded_model_dir().is_relative_to(tmp_path / "home" / ".cache" / "fleetlm")


def test_second_call_reuses_the_directory(cache: Path) -> None:
    path = ensure_embedded_model()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_embedded_model() == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp


def test_concurrent_creators_agree_and_leave_no_temp_dirs(cache: Path) -> None:
    results: list[Path] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            results.append(ensure_embedded_model())
        except BaseException as exc:  # surfaced below; a thread would swallow it
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1
    assert [p.name for p in results[0].parent.iterdir()] == [results[0].name]
    assert len(_hashes(results[0])) == 5


def test_transformers_loads_it(cache: Path) -> None:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    path = ensure_embedded_model()
    config = json.loads((path / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["vocab_size"] == VOCAB_SIZE
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    weights = load_file(str(path / "model.safetensors"))
    state = model.state_dict()
    assert set(weights) == set(state)
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    assert model.config.num_key_value_heads == 2 and model.config.num_hidden_layers == 4

    hf_tok = PreTrainedTokenizerFast.from_pretrained(path)
    ours = Tokenizer.from_dir(path)
    text = "Hello, fleetlm! naïve 🙂"
    ids = hf_tok.encode(text)
    assert ids == ours.encode(text) and ids[0] == hf_tok.bos_token_id
    assert hf_tok.decode(ids, skip_special_tokens=True) == text == ours.decode(ids)
    assert ours.eos_token_id == EOS_ID == hf_tok.eos_token_id
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits  # [1, S, V]
    assert logits.shape == (1, len(ids), VOCAB_SIZE) and torch.isfinite(logits).all()


def test_resolve_model_path(cache: Path, tmp_path: Path) -> None:
    assert resolve_model_path(EMBEDDED_MODEL) == ensure_embedded_model()
    assert resolve_model_path(str(tmp_path)) == tmp_path
    with pytest.raises(ValueError, match="model: .* is not a directory and not the embedded"):
        resolve_model_path("meta-llama/Llama-3-8B")
    with pytest.raises(ValueError, match="model: "):
        resolve_model_path(str(tmp_path / "missing"))
