"""LoRA adapters through the whole stack: the deployment YAML's `adapters:` preloads two PEFT
adapters on every replica; the OpenAI `model` field names them as BASE:ADAPTER or ADAPTER; each
completion is token-exact with PEFT's greedy output on the same base; /v1/models lists them with
their parent; an unknown adapter is a 404 naming `model`; a config with an adapter outside
`adapters.allowed_dirs` is refused by `config check` naming the key."""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import peft
import pytest
import torch

from .conftest import free_port, started_stack, tiny_config_yaml

MODEL = "fleetlm/tiny-llama"
SPECS = {"sql": (8, ["q_proj", "v_proj", "down_proj"]), "poet": (4, ["o_proj", "up_proj"])}


def _base_model() -> torch.nn.Module:
    import transformers

    from actors.models.embedded import ensure_embedded_model

    path = ensure_embedded_model()
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _save_adapter(
    out: Path, rank: int, alpha: int, targets: list[str], seed: int
) -> torch.nn.Module:
    """A PEFT adapter of the embedded model with random (non-zero) A and B, saved at `out`."""
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets)
    model = peft.get_peft_model(_base_model(), config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if "lora_" in pname:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    model.save_pretrained(out)
    return model.eval()


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.nn.Module]]:
    root = tmp_path_factory.mktemp("lora-root")
    models = {
        name: _save_adapter(root / name, rank, rank, targets, seed)
        for seed, (name, (rank, targets)) in enumerate(SPECS.items())
    }
    return root, models


def _config_text(root: Path, http_port: int, preload_root: Path | None = None) -> str:
    src = preload_root or root
    lines = "\n".join(f"    - {{name: {n}, path: {src / n}}}" for n in SPECS)
    (root / "ondemand").mkdir(exist_ok=True)
    return tiny_config_yaml(replicas=2, http_port=http_port) + (
        f"adapters:\n  max_loras: 2\n  allowed_dirs: [{root}]\n  preload:\n{lines}\n"
        f"  resolve_dir: {root / 'ondemand'}\n"
    )


@pytest.fixture(scope="module")
def stack(ray_local: None, adapters: tuple[Path, dict]) -> Iterator[object]:
    with started_stack(_config_text(adapters[0], free_port()), http_path="direct") as st:
        _wait_adapters(st.base_url)
        yield st


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
        assert resp.model == model_field  # echoed as the client named it
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
    # The adapter's own config is checked too (torch-free): sql has rank 8.
    low_rank = _config_text(adapters[0], 8000).replace(
        "max_loras: 2", "max_loras: 2\n  max_lora_rank: 4"
    )
    with pytest.raises(ConfigError, match=r"adapters\.preload\.0\.path.*r: rank 8 is over"):
        parse_config(low_rank)


# ---- runtime load / unload (vLLM's endpoints, relayed to the controller's admin API) ---------


def _admin(stack: object) -> dict[str, str]:
    return {"authorization": f"Bearer {stack.cluster.admin_token.value}"}


def _lora_call(stack: object, verb: str, body: dict, auth: bool = True) -> httpx.Response:
    headers = _admin(stack) if auth else {}
    return httpx.post(
        f"{stack.base_url}/v1/{verb}_lora_adapter", json=body, headers=headers, timeout=120
    )


def _served(stack: object) -> set[str]:
    return {m["id"] for m in httpx.get(f"{stack.base_url}/v1/models", timeout=5).json()["data"]}


def _until(predicate: object, timeout_s: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.1)  # polling the stack's view as reports arrive


@pytest.fixture(scope="module")
def late(adapters: tuple[Path, dict]) -> torch.nn.Module:
    """A third adapter in the allowed root, not preloaded."""
    return _save_adapter(adapters[0] / "late", 4, 8, ["k_proj", "gate_proj"], seed=9)


def test_load_serve_unload_at_run_time(
    stack: object, adapters: tuple[Path, dict], late: torch.nn.Module
) -> None:
    from orchestrator.admin.client import AdminClient

    path = str(adapters[0] / "late")
    assert (
        _lora_call(stack, "load", {"lora_name": "late", "lora_path": path}, auth=False).status_code
        == 401
    )
    r = _lora_call(stack, "load", {"lora_name": "late", "lora_path": path})
    assert r.status_code == 200, r.text
    assert r.json()["replicas"] == "all" and r.json()["rank"] == 4
    _until(lambda: "late" in _served(stack))
    prompt = list(range(30, 42))
    body = {"model": "late", "prompt": prompt, "max_tokens": 8, "temperature": 0}
    body |= {"ignore_eos": True, "return_token_ids": True}
    resp = httpx.post(f"{stack.base_url}/v1/completions", json=body, timeout=60).json()
    assert resp["choices"][0]["token_ids"] == _greedy(late, prompt, 8)
    with AdminClient(stack.admin_url, stack.cluster.admin_token.value) as admin:
        # loaded_on is built from replica reports; the second replica's may come a beat later
        _until(lambda: len({a["name"]: a for a in admin.adapters()}["late"]["loaded_on"]) == 2)

    r = _lora_call(stack, "unload", {"lora_name": "late"})
    assert r.status_code == 200, r.text
    _until(lambda: "late" not in _served(stack))
    with AdminClient(stack.admin_url, stack.cluster.admin_token.value) as admin:
        assert "late" not in {a["name"] for a in admin.adapters()}  # not re-adopted from reports
    gone = httpx.post(f"{stack.base_url}/v1/completions", json=body, timeout=60)
    assert gone.status_code == 404 and gone.json()["error"]["param"] == "model"
    assert _lora_call(stack, "unload", {"lora_name": "late"}).status_code == 404


def test_bad_runtime_loads_are_refused_and_load_nothing(
    stack: object, adapters: tuple[Path, dict], tmp_path: Path
) -> None:
    root = adapters[0]
    outside = _lora_call(stack, "load", {"lora_name": "x", "lora_path": str(tmp_path)})
    assert outside.status_code == 400 and outside.json()["error"]["param"] == "lora_path"
    assert "outside adapters.allowed_dirs" in outside.json()["error"]["message"]
    escape = _lora_call(
        stack, "load", {"lora_name": "x", "lora_path": f"{root}/../{tmp_path.name}"}
    )
    assert escape.status_code == 400
    pickle = root / "pickled"
    shutil.copytree(root / "sql", pickle)
    (pickle / "adapter_model.safetensors").rename(pickle / "adapter_model.bin")
    refused = _lora_call(stack, "load", {"lora_name": "pickled", "lora_path": str(pickle)})
    assert refused.status_code == 400, refused.text
    assert "pickle" in refused.json()["error"]["message"]
    bad_name = _lora_call(stack, "load", {"lora_name": "../x", "lora_path": str(root / "sql")})
    assert bad_name.status_code == 400 and bad_name.json()["error"]["param"] == "lora_name"
    assert "pickled" not in _served(stack) and "x" not in _served(stack)


def test_a_replacement_replica_serves_runtime_loaded_adapters(
    stack: object, adapters: tuple[Path, dict], late: torch.nn.Module
) -> None:
    import ray

    from orchestrator.admin.client import AdminClient
    from orchestrator.controller.settings import NAMESPACE, REPLICA_NAME_PREFIX

    path = str(adapters[0] / "late")
    assert _lora_call(stack, "load", {"lora_name": "late", "lora_path": path}).status_code == 200
    with AdminClient(stack.admin_url, stack.cluster.admin_token.value) as admin:
        before = {r["id"] for r in admin.replicas()["replicas"]}
        victim = sorted(before)[0]
        ray.kill(ray.get_actor(REPLICA_NAME_PREFIX + victim, namespace=NAMESPACE))

        def replaced() -> bool:
            rows = admin.replicas()["replicas"]
            fresh = [r for r in rows if r["id"] not in before and r["state"] == "ready"]
            return bool(fresh) and "late" in fresh[0].get("adapters_loaded", [])

        _until(replaced, 120)
    assert _lora_call(stack, "unload", {"lora_name": "late"}).status_code == 200


def test_an_adapter_under_resolve_dir_loads_on_its_first_request(
    stack: object, adapters: tuple[Path, dict]
) -> None:
    root = adapters[0]
    model = _save_adapter(root / "ondemand" / "fresh", 8, 16, ["q_proj", "up_proj"], seed=21)
    prompt = list(range(50, 60))
    body = {"model": f"{MODEL}:fresh", "prompt": prompt, "max_tokens": 6, "temperature": 0}
    body |= {"ignore_eos": True, "return_token_ids": True}
    resp = httpx.post(f"{stack.base_url}/v1/completions", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["token_ids"] == _greedy(model.eval(), prompt, 6)
    assert "fresh" in _served(stack)
    for missing in ("absent", "../sql", f"{MODEL}:absent"):
        r = httpx.post(
            f"{stack.base_url}/v1/completions",
            json={"model": missing, "prompt": "hi", "max_tokens": 2},
            timeout=60,
        )
        assert r.status_code == 404, (missing, r.text)
        assert r.json()["error"]["param"] == "model"


def test_a_lora_request_migrates_only_where_its_adapter_is_served(
    adapters: tuple[Path, dict],
) -> None:
    """Two replica servers (no Ray): a migration to one without the request's adapter is refused
    before any block moves, and the request goes on at the source; once the destination loads
    the adapter, the move commits and the stream is PEFT's exact tokens."""
    import asyncio

    from actors.common.commands import LoadAdapter, MigrateOut
    from actors.common.config import CacheConfig, EngineConfig, LoRAConfig, MigrationSettings
    from actors.common.control_client import ReplicaControlClient
    from actors.common.sampling_params import SamplingParams
    from actors.common.types import GenerateSpec
    from actors.engine.engine import LLMEngine
    from actors.replica.server import ReplicaServer

    from .conftest import generate_following

    config = EngineConfig(
        cache=CacheConfig(num_gpu_blocks_override=256), device="cpu", lora=LoRAConfig(max_loras=2)
    )
    settings = MigrationSettings(downtime_budget_ms=0.0)
    a = ReplicaServer(lambda: LLMEngine(config), "lora-a", migration=settings)
    b = ReplicaServer(lambda: LLMEngine(config), "lora-b", migration=settings)
    path = str(adapters[0] / "sql")
    prompt = tuple(range(60, 72))
    params = SamplingParams(temperature=0.0, max_tokens=300, ignore_eos=True)

    async def run() -> tuple[list, list]:
        control = ReplicaControlClient(a.address)
        reports: list = []

        async def move(delta: object) -> None:
            command = MigrateOut("mig", b.address)
            reports.append((await control.execute(command, f"m{len(reports)}", 30)).body)

        moves: list[asyncio.Task] = []
        seen = [0]

        def on_delta(d: object) -> None:
            seen[0] += len(d.token_ids)  # type: ignore[attr-defined]
            if seen[0] >= 5 and not moves:
                moves.append(asyncio.create_task(move(d)))
            if len(reports) == 1 and len(moves) == 1:  # refused: load on b, move again
                moves.append(asyncio.create_task(load_then_move()))

        async def load_then_move() -> None:
            to_b = ReplicaControlClient(b.address)
            try:
                loaded = await to_b.execute(LoadAdapter("sql", path), "load-on-b", 60)
            finally:
                await to_b.close()
            assert loaded.error is None, loaded.error
            await move(None)

        try:
            deltas = await generate_following(
                a.address, GenerateSpec("mig", prompt, params, adapter_id="sql"), on_delta
            )
            await asyncio.gather(*moves)
        finally:
            await control.close()
        return deltas, reports

    try:
        a.engine_loop.call(lambda: a.engine_loop.engine.add_adapter("sql", path)).result(60)
        deltas, reports = asyncio.run(run())
    finally:
        a.stop()
        b.stop()
    assert reports[0].outcome == "aborted" and "adapter" in reports[0].reason
    assert reports[0].bytes == 0
    assert reports[1].outcome == "committed", reports[1]
    tokens = [t for d in deltas for t in d.token_ids]
    assert tokens == _greedy(adapters[1]["sql"], list(prompt), 300)


def test_a_restarted_controller_rebuilds_its_adapter_catalog(
    stack: object, adapters: tuple[Path, dict], late: torch.nn.Module
) -> None:
    """Runs last (it restarts the controller): an adapter loaded at run time is known again
    after a controller restart, rebuilt from the replicas that serve it."""
    import time

    import ray

    from orchestrator.admin.client import AdminClient
    from orchestrator.controller.settings import CONTROLLER_NAME, NAMESPACE

    path = str(adapters[0] / "late")
    assert _lora_call(stack, "load", {"lora_name": "late", "lora_path": path}).status_code == 200
    old = stack.cluster.controller_address
    ray.kill(ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE), no_restart=False)
    deadline = time.monotonic() + 60
    while True:
        try:
            actor = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
            address = ray.get(actor.grpc_address.remote(), timeout=60)
            if address != old:
                stack.cluster.admin_url = ray.get(actor.admin_url.remote(), timeout=60)
                stack.cluster.controller_address = address
                break
        except (ray.exceptions.RayError, ValueError):
            pass
        assert time.monotonic() < deadline, "the controller did not come back"
        time.sleep(0.2)  # the actor is restarting
    with AdminClient(stack.cluster.admin_url, stack.cluster.admin_token.value) as admin:

        def rebuilt() -> bool:
            listed = {a["name"]: a for a in admin.adapters()}
            return "late" in listed and listed["late"]["path"] == path

        _until(rebuilt, 60)
        names = {a["name"] for a in admin.adapters()}
    assert {"sql", "poet", "late"} <= names
