"""The embedded default model `fleetlm/tiny-llama`: a tiny random Llama built on first use.

`make serve` must work offline with nothing to download, so the default model is generated
deterministically (fixed seed) into the user's cache dir as an ordinary Hugging Face checkpoint
directory (config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
generation_config.json). The loader reads it like any other checkpoint.

No transformers at run time: weights come from numpy's legacy RandomState (its stream is frozen
by numpy's compatibility policy, and the float ops on it are exact IEEE ops, so the bytes are the
same on every machine and version) and are written with safetensors; the tokenizer is built with
the `tokenizers` library.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

from actors.common.config import EMBEDDED_MODEL, cache_root

# Bump when anything below changes: a new version lands in a new directory, never over an old one.
EMBEDDED_VERSION = 1
_SEED = 20260101

SPECIAL_TOKENS = (
    "<s>",
    "</s>",
    "<pad>",
    "<unk>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|reserved_0|>",
)  # ids 256.. (256 byte tokens first, so token id == byte value); 264 is a multiple of 8
BOS_ID, EOS_ID, PAD_ID = 256, 257, 258
VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)

# Zephyr-style turns; no bos_token in the template because encode() adds it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role'] + "
    "' (expected system, user or assistant)') }}"
    "{% endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

MODEL_CONFIG: dict[str, object] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 344,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "attention_bias": False,
    "mlp_bias": False,
    "vocab_size": VOCAB_SIZE,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
    "pad_token_id": PAD_ID,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "initializer_range": 0.02,
}

_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)


def embedded_model_dir() -> Path:
    return cache_root() / "models" / f"fleetlm--tiny-llama-v{EMBEDDED_VERSION}"


def ensure_embedded_model() -> Path:
    """Return the embedded model's directory, building it first if it is not there yet.

    Built in a temp dir beside the target and renamed into place, so concurrent builders (several
    Ray replicas on one node) never see a half-written directory: the first rename wins and the
    others discard their copy.
    """
    target = embedded_model_dir()
    if _is_complete(target):
        return target
    if target.exists():  # only reachable if someone edited the cache by hand
        shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-llama-", dir=target.parent))
    try:
        write_embedded_model(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(name_or_path: str | os.PathLike[str]) -> Path:
    """The embedded name -> its (built on demand) directory; a directory -> itself. No downloads."""
    name = str(name_or_path)
    if name == EMBEDDED_MODEL:
        return ensure_embedded_model()
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    raise ValueError(
        f"model: {name!r} is not a directory and not the embedded model {EMBEDDED_MODEL} "
        "(fleetlm never downloads models; pass a local checkpoint directory)"
    )


def write_embedded_model(out_dir: Path) -> None:
    """Write every file of the checkpoint into `out_dir` (which must exist)."""
    _write_json(out_dir / "config.json", MODEL_CONFIG)
    _write_json(
        out_dir / "generation_config.json",
        {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID},
    )
    save_file(build_weights(), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "tokenizer.json").write_text(build_tokenizer().to_str(pretty=True) + "\n")
    _write_json(out_dir / "tokenizer_config.json", _tokenizer_config())


def build_weights() -> dict[str, torch.Tensor]:
    """Llama weights named as transformers names them, uniform with the init's std of 0.02."""
    cfg = MODEL_CONFIG
    hidden = int(cfg["hidden_size"])
    inter = int(cfg["intermediate_size"])
    head_dim = int(cfg["head_dim"])
    q_dim = int(cfg["num_attention_heads"]) * head_dim
    kv_dim = int(cfg["num_key_value_heads"]) * head_dim
    rng = np.random.RandomState(_SEED)
    weights: dict[str, torch.Tensor] = {"model.embed_tokens.weight": _init(rng, VOCAB_SIZE, hidden)}
    for i in range(int(cfg["num_hidden_layers"])):
        p = f"model.layers.{i}."
        weights[p + "self_attn.q_proj.weight"] = _init(rng, q_dim, hidden)
        weights[p + "self_attn.k_proj.weight"] = _init(rng, kv_dim, hidden)
        weights[p + "self_attn.v_proj.weight"] = _init(rng, kv_dim, hidden)
        weights[p + "self_attn.o_proj.weight"] = _init(rng, hidden, q_dim)
        weights[p + "mlp.gate_proj.weight"] = _init(rng, inter, hidden)
        weights[p + "mlp.up_proj.weight"] = _init(rng, inter, hidden)
        weights[p + "mlp.down_proj.weight"] = _init(rng, hidden, inter)
        weights[p + "input_layernorm.weight"] = torch.ones(hidden)
        weights[p + "post_attention_layernorm.weight"] = torch.ones(hidden)
    weights["model.norm.weight"] = torch.ones(hidden)
    weights["lm_head.weight"] = _init(rng, VOCAB_SIZE, hidden)
    return weights


def _init(rng: np.random.RandomState, rows: int, cols: int) -> torch.Tensor:
    # Uniform on [-b, b] has std b / sqrt(3); b chosen for std 0.02.
    bound = 0.02 * 3.0**0.5
    u = rng.random_sample((rows, cols))  # float64 in [0, 1)
    return torch.from_numpy(((u * 2.0 - 1.0) * bound).astype(np.float32))


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable char table, the alphabet of the ByteLevel pre-tokenizer."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def build_tokenizer() -> HFTokenizer:
    """Byte-level BPE with no merges: token id == byte value, special tokens from 256 on."""
    vocab = {ch: b for b, ch in bytes_to_unicode().items()}
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
    )
    return tok


def _tokenizer_config() -> dict[str, object]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MODEL_CONFIG["max_position_embeddings"],
        "chat_template": CHAT_TEMPLATE,
    }


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _is_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in _FILES)
