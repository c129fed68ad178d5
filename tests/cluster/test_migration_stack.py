"""Live migration through the whole stack on a local Ray: controller, two replica actors, the
Serve ingress, the admin API. A client's stream follows its request across replicas and gets
exactly the text it would have got unmigrated; a drain and a scale-in under load move every
request instead of losing or re-running one."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from .conftest import free_port, tiny_config_yaml

MODEL = "fleetlm/tiny-llama"


@pytest.fixture(scope="module")
def stack(ray_local: None) -> Iterator[object]:
    from orchestrator.api.launch import ServeOptions, start_stack
    from orchestrator.config.load import parse_config

    text = tiny_config_yaml(replicas=2, http_port=free_port())
    text += "migration:\n  downtime_budget_ms: 5\n  max_concurrent_per_replica: 4\n"
    st = start_stack(ServeOptions(config=parse_config(text), admin_port=0, write_admin_files=False))
    try:
        deadline = time.monotonic() + 60
        while httpx.get(f"{st.base_url}/health", timeout=5).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)  # the stack is starting
        yield st
    finally:
        st.shutdown()


def _body(prompt: str, max_tokens: int, stream: bool) -> dict:
    return {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
        "return_token_ids": True,
    }


def _reference(stack: object, prompt: str, max_tokens: int) -> list[int]:
    r = httpx.post(
        f"{stack.base_url}/v1/completions", json=_body(prompt, max_tokens, False), timeout=60
    )
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["token_ids"]


def _ready(admin: object) -> list[dict]:
    return [r for r in admin.replicas()["replicas"] if r["state"] == "ready"]


def test_admin_migrates_a_streaming_completion_and_the_text_is_unchanged(stack: object) -> None:
    prompt = "A request that moves while it speaks"
    expected = _reference(stack, prompt, 200)
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="none", max_retries=0)
    stream = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=200, temperature=0, stream=True,
        extra_body={"ignore_eos": True, "return_token_ids": True},
    )  # fmt: skip
    tokens: list[int] = []
    moved = None
    with stack.cluster.admin() as admin:
        for chunk in stream:
            tokens.extend(chunk.choices[0].model_extra.get("token_ids") or [])
            if moved is None and len(tokens) >= 20:
                moved = admin.migrate(chunk.id)  # answers once the migration has ended
        assert moved is not None and moved["outcome"] == "committed", moved
        assert moved["downtime_ms"] > 0 and moved["bytes"] > 0
        assert moved["source_replica"] != moved["target_replica"]
        replicas = {r["id"]: r["address"] for r in admin.replicas()["replicas"]}
        assert replicas[moved["target_replica"]] == moved["target"]
        events = [e for e in admin.events(limit=1000) if e["kind"] == "migration"]
        assert events and events[-1]["ok"] and moved["request_id"] in events[-1]["message"]
        assert admin.migrations()[-1]["migration_id"] == moved["migration_id"]
    assert tokens == expected  # one unbroken stream: no gap, no repeat, the same tokens


async def _stream_all(stack: object, prompts: list[str], n: int, started: asyncio.Event) -> list:
    async def one(prompt: str) -> list[int]:
        async with httpx.AsyncClient(timeout=120) as http:
            url = f"{stack.base_url}/v1/completions"
            async with http.stream("POST", url, json=_body(prompt, n, True)) as r:
                assert r.status_code == 200
                tokens: list[int] = []
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    msg = json.loads(line[6:])
                    assert "error" not in msg, msg
                    tokens.extend(msg["choices"][0]["token_ids"])
                    if len(tokens) >= 3:
                        started.set()
                return tokens

    return await asyncio.gather(*(one(p) for p in prompts))


def test_drain_under_load_moves_every_request(stack: object) -> None:
    prompts = [f"stream number {i} keeps going" for i in range(16)]
    n = 400  # long enough to be running still when the drain's cordon lands
    with ThreadPoolExecutor(8) as pool:
        expected = list(pool.map(lambda p: _reference(stack, p, n), prompts))
    with stack.cluster.admin() as admin:
        victim = _ready(admin)[0]["id"]

        async def run() -> list:
            started = asyncio.Event()
            streams = asyncio.create_task(_stream_all(stack, prompts, n, started))
            await started.wait()
            await asyncio.sleep(0.3)  # every stream is running by now
            reply = await asyncio.to_thread(admin.drain, victim)
            assert reply["replica"]["state"] in ("draining", "drained")
            return await streams

        got = asyncio.run(run())
        assert got == expected  # every stream complete and unchanged, none re-run
        deadline = time.monotonic() + 30
        while admin.replica(victim)["state"] != "drained":
            assert time.monotonic() < deadline, admin.replica(victim)
            time.sleep(0.2)  # the next load report shows it empty
        moved = [m for m in admin.migrations(limit=200) if m["outcome"] == "committed"]
        assert moved, "the drain moved nothing: the requests just finished"
        # A drained replica takes nothing new; uncordon brings it back.
        assert admin.uncordon(victim)["replica"]["id"] == victim
        deadline = time.monotonic() + 10
        while admin.replica(victim)["state"] != "ready":
            assert time.monotonic() < deadline
            time.sleep(0.1)  # the uncordon reaches the next report


def test_scale_in_moves_requests_instead_of_waiting_for_them(stack: object) -> None:
    prompts = [f"scale in while this one runs {i}" for i in range(4)]
    n = 1200
    with ThreadPoolExecutor(4) as pool:
        expected = list(pool.map(lambda p: _reference(stack, p, n), prompts))
    with stack.cluster.admin() as admin:

        async def run() -> tuple[list, float]:
            started = asyncio.Event()
            streams = asyncio.create_task(_stream_all(stack, prompts, n, started))
            await started.wait()
            await asyncio.sleep(0.3)
            await asyncio.to_thread(admin.scale, 1)
            while len(admin.replicas()["replicas"]) > 1:  # drained by migration, then stopped
                await asyncio.sleep(0.1)  # polls the admin API
            removed_while_running = not streams.done()
            return await streams, removed_while_running

        got, removed_while_running = asyncio.run(run())
        assert got == expected
        assert removed_while_running  # it did not wait for its requests to finish
        admin.scale(2)
        deadline = time.monotonic() + 120
        while len(_ready(admin)) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.2)  # a new replica starts
