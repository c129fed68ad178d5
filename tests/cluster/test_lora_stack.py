"""LoRA adapters through the whole stack: the deployment YAML's `adapters:` preloads two PEFT
adapters on every replica; the OpenAI `model` field names them as BASE:ADAPTER or ADAPTER; each
completion is token-exact with PEFT's greedy output on the same base; /v1/models lists them with
their parent; an unknown adapter is a 404 naming `model`; a config with an adapter outside
`adapters.allowed_dirs` is refused by `config check` naming the key."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import peft
import pytest
import torch

from .conftest import tiny_config_yaml
from .test_api import _free_port, _wait_healthy

MODEL = "fleetlm/tiny-llama"
SPECS = {"sql": (8, ["q_proj", "v_proj", "down_proj"]), "poet": (4, ["o_proj", "up_proj"])}


def _base_model() -> torch.nn.Module:
    import transformers

    from actors.models.embedded import ensure_embedded_model

    path = ensure_embedded_model()
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.nn.Module]]:
    root = tmp_path_factory.mktemp("lora-root")
    models = {}
    for seed, (name, (rank, targets)) in enumerate(SPECS.items()):
        config = peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=targets)
        model = peft.get_peft_model(_base_model(), config)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for pname, param in model.named_parameters():
                if "lora_" in pname:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
        model.save_pretrained(root / name)
        models[name] = model.eval()
    return root, models


def _config_text(root: Path, http_port: int, preload_root: Path | None = None) -> str:
    src = preload_root or root
    lines = "\n".join(f"    - {{name: {n}, path: {src / n}}}" for n in SPECS)
    return tiny_config_yaml(replicas=2, http_port=http_port) + (
        f"adapters:\n  max_loras: 2\n  allowed_dirs: [{root}]\n  preload:\n{lines}\n"
    )


@pytest.fixture(scope="module")
def stack(ray_local: None, adapters: tuple[Path, dict]) -> Iterator[object]:
    from orchestrator.api.launch import ServeOptions, start_stack
    from orchestrator.config.load import parse_config

    cfg = parse_config(_config_text(adapters[0], _free_port()))
    st = start_stack(
        ServeOptions(config=cfg, http_path="direct", admin_port=0, write_admin_files=False)
    )
    try:
        _wait_healthy(st.base_url)
        _wait_adapters(st.base_url)
        yield st
    finally:
        st.shutdown()


def _wait_adapters(url: str, timeout_s: float = 30.0) -> None:
    """Until the replicas' load reports (which list their adapters) reached the ingress."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ids = {m["id"] for m in httpx.get(f"{url}/v1/models", timeout=5).json()["data"]}
        if set(SPECS) <= ids:
            return
        time.sleep(0.1)  # polling the stack's own view as it fills in
    raise AssertionError("the adapters never showed in /v1/models")


def _greedy(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


def test_adapters_by_name_equal_peft(stack: object, adapters: tuple[Path, dict]) -> None:
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="x", max_retries=0)
    rng = random.Random(5)
    prompt = [rng.randrange(4, 250) for _ in range(12)]
    cases = [(f"{MODEL}:sql", "sql"), ("poet", "poet"), (MODEL, None)]
    for model_field, name in cases:
        resp = client.completions.create(
            model=model_field,
            prompt=prompt,
            max_tokens=10,
            temperature=0,
            extra_body={"ignore_eos": True, "return_token_ids": True},
        )
        reference = adapters[1][name] if name else _base_model()
        assert resp.choices[0].model_extra["token_ids"] == _greedy(reference, prompt, 10), name
    outs = {
        m: client.completions.create(
            model=m, prompt=prompt, max_tokens=10, temperature=0, extra_body={"ignore_eos": True}
        )
        .choices[0]
        .text
        for m in ("sql", "poet", MODEL)
    }
    assert len(set(outs.values())) == 3  # the adapters change the output


def test_models_lists_adapters_with_their_parent(stack: object) -> None:
    data = httpx.get(f"{stack.base_url}/v1/models", timeout=10).json()["data"]
    by_id = {m["id"]: m for m in data}
    assert set(by_id) == {MODEL, *SPECS}
    assert all(by_id[n]["parent"] == MODEL for n in SPECS)


def test_unknown_adapter_is_a_404_naming_model(stack: object) -> None:
    for name in (f"{MODEL}:nope", "nope"):
        r = httpx.post(
            f"{stack.base_url}/v1/completions",
            json={"model": name, "prompt": "hi", "max_tokens": 2},
            timeout=10,
        )
        assert r.status_code == 404, r.text
        assert r.json()["error"]["param"] == "model"


def test_config_check_refuses_adapters_outside_allowed_dirs(
    adapters: tuple[Path, dict], tmp_path: Path
) -> None:
    from orchestrator.config.errors import ConfigError
    from orchestrator.config.load import parse_config

    with pytest.raises(ConfigError, match=r"adapters\.preload\.0\.path.*outside"):
        parse_config(_config_text(tmp_path, 8000, preload_root=adapters[0]))
    no_slots = _config_text(adapters[0], 8000).replace("max_loras: 2", "max_loras: 0")
    with pytest.raises(ConfigError, match=r"adapters\.max_loras"):
        parse_config(no_slots)
