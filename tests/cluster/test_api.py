"""The whole stack on a local Ray: controller + replica + Serve ingress, driven over real HTTP.

One module-scoped stack (the same `start_stack` path `fleetlm serve` runs) serves every test:
the official `openai` client for the happy paths, raw httpx for bad input and disconnects.
Requests go to the ingress replicas' own listener (the default); Ray Serve's proxy runs in front
of the same replicas on a second port, and test_serve_proxy_path_* drives that path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from .conftest import free_port, started_stack, tiny_config_yaml

MODEL = "fleetlm/tiny-llama"
MAX_BODY = 64 * 1024
API_KEY = "test-key-1"
AUTH = {"authorization": f"Bearer {API_KEY}"}
PROMPT = "The quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def stack(ray_local: None) -> Iterator[object]:
    text = tiny_config_yaml(replicas=2, http_port=free_port(), max_body_bytes=MAX_BODY)
    text += f"security:\n  api_keys: [{API_KEY}]\n"
    with started_stack(text, http_path="direct", serve_proxy_port=free_port()) as st:
        yield st


@pytest.fixture(scope="module")
def client(stack: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def offline_engine(stack: object) -> object:
    """The engine the replica runs, built in-process from the same deployment config."""
    from actors.engine.engine import LLMEngine
    from orchestrator.controller.deployment import replica_spec

    return LLMEngine(replica_spec(stack.config).engine)


def _post(stack: object, path: str, body: object, **kw: object) -> httpx.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json", **AUTH}
    return httpx.post(f"{stack.base_url}{path}", content=data, headers=headers, timeout=60, **kw)


# ---- happy paths through the openai client ---------------------------------------------------


def test_models_and_health(stack: object, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]
    health = httpx.get(f"{stack.base_url}/health", timeout=10).json()
    assert health["ok"] and health["controller"] and health["replica_answering"]


def test_greedy_completion_equals_offline_engine(
    stack: object, client: openai.OpenAI, offline_engine: object
) -> None:
    from actors.common.sampling_params import SamplingParams

    prompt_ids = offline_engine.tokenizer.encode(PROMPT)
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    offline = offline_engine.generate([prompt_ids], params)[0]
    resp = client.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=24,
        temperature=0,
        extra_body={"ignore_eos": True, "return_token_ids": True},
    )
    choice = resp.choices[0]
    assert choice.model_extra["token_ids"] == offline.token_ids[0]
    assert choice.text == offline.texts[0]
    assert choice.finish_reason == "length"
    assert resp.usage.prompt_tokens == len(prompt_ids) and resp.usage.completion_tokens == 24

    # Streaming the same request relays the same tokens, then the usage chunk.
    stream = client.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == offline.texts[0]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24


def test_chat_stream_and_non_stream_agree(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    full = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=16,
        temperature=0,
        extra_body={"return_token_ids": True},
    )
    msg = full.choices[0].message
    assert msg.role == "assistant" and full.object == "chat.completion"
    assert full.usage.completion_tokens == len(full.choices[0].model_extra["token_ids"]) >= 1
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=16, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == msg.content
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason


def test_n_choices_seeded(client: openai.OpenAI) -> None:
    kw = {
        "model": MODEL,
        "prompt": PROMPT,
        "max_tokens": 8,
        "temperature": 1.0,
        "seed": 7,
        "extra_body": {"ignore_eos": True},
    }
    a = client.completions.create(n=3, **kw)
    assert sorted(c.index for c in a.choices) == [0, 1, 2]
    assert a.usage.completion_tokens == 3 * 8  # usage counts every choice
    b = client.completions.create(n=3, **kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]  # the seed fixes them
    assert len({c.text for c in a.choices}) > 1  # choices are sampled independently
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        n=2,
        max_tokens=4,
        temperature=1.0,
        seed=3,
    )
    assert sorted(c.index for c in chat.choices) == [0, 1]


def test_stop_string_cuts_the_output(client: openai.OpenAI) -> None:
    base = (
        client.completions.create(
            model=MODEL,
            prompt=PROMPT,
            max_tokens=32,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        .choices[0]
        .text
    )
    stop = next(base[i : i + 2] for i in range(4, len(base) - 2) if base[i : i + 2].strip())
    cut = client.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=32,
        temperature=0,
        stop=[stop],
        extra_body={"ignore_eos": True},
    ).choices[0]
    assert cut.text == base[: base.index(stop)]
    assert cut.finish_reason == "stop"


def test_logprobs(client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=6,
        temperature=0,
        logprobs=3,
        extra_body={"ignore_eos": True},
    )
    lp = resp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert 1 <= len(top) <= 3
        assert chosen == pytest.approx(max(top.values()), abs=1e-4)  # greedy takes the best
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        extra_body={"ignore_eos": True},
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == 4 and all(len(e.top_logprobs) == 2 for e in content)


# ---- bad input: status, message, and the server keeps serving -------------------------------

_BAD = [
    ({"prompt": "x", "temperature": -1}, 400, "temperature"),
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "x", "n": "many"}, 400, "n"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"prompt": "x", "logprobs": 99}, 400, "logprobs"),
    ({"prompt": [1, 2, 999999]}, 400, "prompt"),
    ({"prompt": ["a", "b"]}, 400, "prompt"),
    ({"prompt": "x", "max_tokens": 100000}, 400, "max_tokens"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ({"prompt": "x", "stop": [str(i) for i in range(17)]}, 400, "stop"),
    ({"prompt": "x", "model": "nope"}, 404, "model"),
    ({"prompt": "x", "model": f"{MODEL}:my-adapter"}, 404, "model"),
]


@pytest.mark.parametrize(("patch", "status", "param"), _BAD)
def test_bad_completion_requests(stack: object, patch: dict, status: int, param: str) -> None:
    body = {"model": MODEL, "max_tokens": 4, **patch}
    resp = _post(stack, "/v1/completions", body)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and param in err["message"]


def test_bad_bodies(stack: object) -> None:
    resp = _post(stack, "/v1/completions", b"{not json")
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "body"
    resp = _post(stack, "/v1/chat/completions", {"model": MODEL, "messages": []})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "messages"
    resp = _post(
        stack,
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
    )
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "top_logprobs"
    resp = _post(stack, "/v1/completions", {"model": MODEL, "prompt": "x" * (MAX_BODY + 10)})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "body_too_large"


def test_api_keys(stack: object) -> None:
    body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": API_KEY}):
        resp = httpx.post(f"{stack.base_url}/v1/completions", json=body, headers=headers)
        assert resp.status_code == 401, headers
        assert resp.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{stack.base_url}/v1/models").status_code == 401
    assert httpx.get(f"{stack.base_url}/v1/models", headers=AUTH).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="x", max_retries=0).models.list()


def test_server_keeps_serving_and_counts_errors(stack: object, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="x", max_tokens=2, temperature=-5)
    ok = client.completions.create(model=MODEL, prompt="x", max_tokens=2)
    assert ok.choices[0].finish_reason in ("stop", "length")
    metrics = httpx.get(f"{stack.base_url}/metrics", timeout=10).text
    assert 'fleetlm_errors_total{code="400",ingress=' in metrics  # ingress: the process
    assert "fleetlm_time_to_first_token_seconds_count" in metrics
    assert "fleetlm_generation_tokens_total" in metrics


def test_serve_proxy_path_serves_the_same_app(stack: object) -> None:
    proxy = stack.serve_proxy_url
    assert proxy is not None and proxy != stack.base_url
    assert httpx.get(f"{proxy}/v1/models", timeout=10).status_code == 401
    models = httpx.get(f"{proxy}/v1/models", headers=AUTH, timeout=10).json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 8, "temperature": 0}
    body |= {"ignore_eos": True, "return_token_ids": True}
    via_proxy = httpx.post(f"{proxy}/v1/completions", json=body, headers=AUTH, timeout=60)
    direct = _post(stack, "/v1/completions", body)
    assert via_proxy.status_code == direct.status_code == 200
    ids = [r.json()["choices"][0]["token_ids"] for r in (via_proxy, direct)]
    assert ids[0] == ids[1] and len(ids[0]) == 8


def test_serve_proxy_path_streams(stack: object) -> None:
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 6, "temperature": 0}
    body["ignore_eos"] = True
    full = _post(stack, "/v1/completions", body).json()["choices"][0]["text"]
    url = f"{stack.serve_proxy_url}/v1/completions"
    with httpx.stream("POST", url, json={**body, "stream": True}, headers=AUTH, timeout=60) as r:
        assert r.status_code == 200
        lines = [ln.removeprefix("data: ") for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    assert "".join(json.loads(ln)["choices"][0]["text"] for ln in lines[:-1]) == full


# ---- client disconnect ------------------------------------------------------------------------


def _requests(stack: object) -> list[dict]:
    """Every running and waiting request, asked of the replicas live (the admin API)."""
    with stack.cluster.admin() as admin:
        return admin.requests()["requests"]


def _replica_load(stack: object) -> tuple[int, int]:
    """(running + waiting requests, engine steps from the replicas' reports), over replicas."""
    with stack.cluster.admin() as admin:
        busy = len(admin.requests()["requests"])
        steps = sum(r.get("num_steps", 0) for r in admin.replicas()["replicas"])
    return busy, steps


def test_client_disconnect_aborts_on_the_replica(stack: object) -> None:
    body = {
        "model": MODEL,
        "prompt": PROMPT,
        "max_tokens": 1900,
        "ignore_eos": True,
        "stream": True,
    }
    _, steps_before = _replica_load(stack)
    with httpx.Client(timeout=30) as http:
        url = f"{stack.base_url}/v1/completions"
        with http.stream("POST", url, json=body, headers=AUTH) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            assert next(ln for ln in lines if ln.startswith("data: "))  # generating
            assert _replica_load(stack)[0] == 1
    # The connection is closed: the replica must drop the request within about a second.
    gone_at = None
    start = time.monotonic()
    while time.monotonic() - start < 3.0:
        busy, steps = _replica_load(stack)
        if busy == 0:
            gone_at = time.monotonic() - start
            break
        time.sleep(0.05)  # polling the replica's stats
    assert gone_at is not None and gone_at < 1.0, gone_at
    # Aborted, not finished: far fewer steps ran than the 1900 tokens asked for.
    assert steps - steps_before < 1000


def _ready_replicas(stack: object) -> int:
    with stack.cluster.admin() as admin:
        return sum(r["state"] == "ready" for r in admin.replicas()["replicas"])


def _kv_blocks(stack: object) -> tuple[int, int]:
    """(free, total) KV blocks over the replicas, from their latest reports."""
    with stack.cluster.admin() as admin:
        replicas = admin.replicas()["replicas"]
    return sum(r["kv_blocks_free"] for r in replicas), sum(r["kv_blocks_total"] for r in replicas)


def _until(predicate: object, timeout_s: float, what: object = "") -> float:
    """Seconds until `predicate()` held (polling the admin API), or an AssertionError."""
    start = time.monotonic()
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() - start < timeout_s, what() if callable(what) else what
        time.sleep(0.05)  # polling the replicas' state through the admin API
    return time.monotonic() - start


def test_client_disconnect_while_queued_drops_it_unrun(stack: object) -> None:
    """Both replicas full (n=16 each, max_num_seqs 16), a third request waits in a replica's
    queue; its client leaves. It must leave the queue within a second without ever running,
    and once the fillers are gone too, every KV block is free again."""
    _until(lambda: _ready_replicas(stack) == 2, 90)
    _until(lambda: len(set(_kv_blocks(stack))) == 1, 10, lambda: _kv_blocks(stack))  # all free
    # 16 x 460 tokens fill most of a replica's KV cache (8k tokens) and run for seconds.
    long = {"model": MODEL, "prompt": PROMPT, "max_tokens": 450, "ignore_eos": True}

    async def run() -> tuple[float, list[str]]:
        async with httpx.AsyncClient(base_url=stack.base_url, headers=AUTH, timeout=60) as http:
            fillers = []

            def full() -> bool:  # every replica runs a filler: 16 sequences, its max_num_seqs
                running = {q["replica"] for q in _requests(stack) if q["state"] == "running"}
                return len(running) == 2

            # Routing decides where each filler lands: add them until both replicas are full.
            while not full():
                assert len(fillers) < 4, _requests(stack)
                ctx = http.stream("POST", "/v1/completions", json=long | {"n": 16, "stream": True})
                resp = await ctx.__aenter__()
                assert resp.status_code == 200, await resp.aread()
                fillers.append(ctx)
                await asyncio.sleep(0.3)  # a report interval: the admin API lists it

            async def queued() -> None:
                body = long | {"stream": True, "max_tokens": 50}
                async with http.stream("POST", "/v1/completions", json=body) as resp:
                    await resp.aread()

            def waiting() -> list[dict]:
                return [q for q in _requests(stack) if q["n"] == 1]

            client = asyncio.create_task(queued())
            await asyncio.to_thread(_until, lambda: bool(waiting()), 30, lambda: _requests(stack))
            seen = [q["state"] for q in waiting()]
            client.cancel()  # the client leaves while its request waits: the connection closes
            with contextlib.suppress(asyncio.CancelledError):
                await client
            gone_s = await asyncio.to_thread(_until, lambda: not waiting(), 5, waiting)
            for ctx in fillers:
                await ctx.__aexit__(None, None, None)
            return gone_s, seen

    gone_s, states = asyncio.run(run())
    assert states == ["waiting"], states  # it was queued, not running, when its client left
    assert gone_s < 1.0, gone_s
    _until(lambda: not _requests(stack), 5, lambda: _requests(stack))
    _until(lambda: len(set(_kv_blocks(stack))) == 1, 5, lambda: _kv_blocks(stack))  # all free


# ---- the admin API sees and steers what the OpenAI API serves ---------------------------------


def _stream(stack: object, max_tokens: int) -> tuple[object, object, dict]:
    """Open a streaming completion; returns (context, line iterator, first chunk)."""
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": max_tokens, "ignore_eos": True}
    body |= {"stream": True, "temperature": 0, "return_token_ids": True}
    ctx = httpx.stream(
        "POST", f"{stack.base_url}/v1/completions", json=body, headers=AUTH, timeout=60
    )
    resp = ctx.__enter__()
    assert resp.status_code == 200
    lines = (ln[6:] for ln in resp.iter_lines() if ln.startswith("data: "))
    return ctx, lines, json.loads(next(lines))


def _drain(lines: object) -> list[dict]:
    return [json.loads(ln) for ln in lines if ln != "[DONE]"]


def test_admin_lists_a_streaming_request_under_its_openai_id(
    stack: object, offline_engine: object
) -> None:
    ctx, lines, first = _stream(stack, max_tokens=1500)
    try:
        request_id = first["id"]
        assert request_id.startswith("cmpl-")
        listed = {q["id"]: q for q in _requests(stack)}
        assert request_id in listed
        entry = listed[request_id]
        assert entry["state"] == "running" and entry["n"] == 1
        assert entry["prompt_tokens"] == len(offline_engine.tokenizer.encode(PROMPT))
        assert entry["output_tokens"] >= 1 and entry["kv_blocks"] >= 1 and entry["age_s"] >= 0
        with stack.cluster.admin() as admin:
            assert entry["replica"] in {r["id"] for r in admin.replicas()["replicas"]}
            assert admin.request(request_id)["replica"] == entry["replica"]
            assert admin.abort(request_id)["command"]["ok"]
        chunks = _drain(lines)  # the abort ends the stream well before 1500 tokens
        assert sum(len(c["choices"][0]["token_ids"]) for c in chunks if c.get("choices")) < 1400
    finally:
        ctx.__exit__(None, None, None)
    deadline = time.monotonic() + 5
    while request_id in {q["id"] for q in _requests(stack)}:
        assert time.monotonic() < deadline
        time.sleep(0.05)  # the replica drops the aborted request


def test_cordoned_replica_takes_no_new_requests_while_its_running_one_finishes(
    stack: object,
) -> None:
    ctx, lines, first = _stream(stack, max_tokens=300)
    try:
        (running,) = [q for q in _requests(stack) if q["id"] == first["id"]]
        cordoned = running["replica"]
        with stack.cluster.admin() as admin:
            assert admin.cordon(cordoned)["replica"]["state"] == "cordoned"
            try:
                for _ in range(3):  # new requests all land on the other replica
                    c2, l2, f2 = _stream(stack, max_tokens=200)
                    try:
                        (new,) = [q for q in _requests(stack) if q["id"] == f2["id"]]
                        assert new["replica"] != cordoned
                    finally:
                        c2.__exit__(None, None, None)
                # The running request runs to its end on the cordoned replica.
                chunks = _drain(lines)
                assert chunks[-1]["choices"][0]["finish_reason"] == "length"
                got = [t for c in [first, *chunks] for t in c["choices"][0]["token_ids"]]
                assert len(got) == 300  # nothing lost on the cordoned replica
            finally:
                admin.uncordon(cordoned)
    finally:
        ctx.__exit__(None, None, None)


# ---- a replica dies mid-stream (last: it leaves the cluster one replica short) ----------------


def _stream_and_kill(stack: object, body: dict) -> tuple[dict[int, list[int]], str, dict]:
    """Stream `body`, kill the replica serving it once 10 tokens came; the tokens per choice,
    the killed replica and the usage chunk."""
    import ray

    from orchestrator.controller.settings import NAMESPACE, REPLICA_NAME_PREFIX

    got: dict[int, list[int]] = {}
    killed, usage = None, {}
    url = f"{stack.base_url}/v1/completions"
    body = body | {"stream": True, "return_token_ids": True}
    body |= {"stream_options": {"include_usage": True}}
    with httpx.stream("POST", url, json=body, headers=AUTH, timeout=60) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            msg = json.loads(line[6:])
            assert "error" not in msg, msg
            usage = msg.get("usage") or usage
            for choice in msg["choices"]:
                got.setdefault(choice["index"], []).extend(choice["token_ids"])
            if killed is None and sum(map(len, got.values())) >= 10:
                busy = {q["replica"] for q in _requests(stack)}
                assert len(busy) == 1
                killed = busy.pop()
                actor = ray.get_actor(REPLICA_NAME_PREFIX + killed, namespace=NAMESPACE)
                ray.kill(actor, no_restart=True)
    assert killed is not None
    return got, killed, usage


def test_replica_death_mid_stream_resumes_on_another(stack: object, offline_engine: object) -> None:
    from actors.common.sampling_params import SamplingParams

    n = 400
    prompt_ids = offline_engine.tokenizer.encode(PROMPT)
    params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    expected = offline_engine.generate([prompt_ids], params)[0].token_ids[0]
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": n, "temperature": 0}
    got, _, usage = _stream_and_kill(stack, body | {"ignore_eos": True})
    assert got == {0: expected}  # nothing lost, nothing repeated, greedy continues exactly
    assert usage["completion_tokens"] == n and usage["prompt_tokens"] == len(prompt_ids)


def test_replica_death_resumes_each_of_n_choices(stack: object, offline_engine: object) -> None:
    """n = 3: each unfinished choice goes on as its own request, resumed after its own tokens."""
    from actors.common.sampling_params import SamplingParams

    _until(lambda: _ready_replicas(stack) == 2, 90)  # the previous test killed one
    n = 300
    prompt_ids = offline_engine.tokenizer.encode(PROMPT)
    params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    expected = offline_engine.generate([prompt_ids], params)[0].token_ids[0]
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": n, "temperature": 0, "n": 3}
    got, _, usage = _stream_and_kill(stack, body | {"ignore_eos": True})
    assert got == {0: expected, 1: expected, 2: expected}
    assert usage["completion_tokens"] == 3 * n and usage["prompt_tokens"] == len(prompt_ids)
    # The resumed choices ran elsewhere as requests of their own, and none is left behind.
    _until(lambda: not _requests(stack), 5, lambda: _requests(stack))
