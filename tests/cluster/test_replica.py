"""A replica actor on a local Ray, driven over real gRPC: the token plane by ReplicaClient, the
control plane (typed commands) by ReplicaControlClient."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator

import grpc
import pytest
import ray

from actors.common.commands import (
    Abort,
    AbortResult,
    Command,
    CommandResult,
    Cordon,
    Done,
    ListRequests,
    RequestList,
    Uncordon,
)
from actors.common.config import CacheConfig, EngineConfig, ReplicaSpec, SchedulerConfig
from actors.common.control_client import ReplicaControlClient
from actors.common.errors import ErrorKind
from actors.common.replica_client import ReplicaClient
from actors.common.sampling_params import SamplingParams
from actors.common.tokenizer import Tokenizer
from actors.common.types import GenerateDelta, GenerateSpec
from actors.common.wire import batch_from_pb, spec_to_pb
from actors.engine.engine import LLMEngine
from actors.replica.actor import ReplicaActor
from protos import replica_pb2, replica_pb2_grpc

ENGINE = EngineConfig(
    cache=CacheConfig(cpu_kv_cache_bytes=16 << 20),
    scheduler=SchedulerConfig(max_num_batched_tokens=256, max_num_seqs=16),
    device="cpu",
)
PROMPTS = ["The quick brown fox", "Paged attention keeps KV in blocks", "hi"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def replica(ray_local: None) -> Iterator[tuple[object, str]]:
    actor = ray.remote(ReplicaActor).options(num_cpus=1).remote("r-test", ReplicaSpec(ENGINE), None)
    address = ray.get(actor.address.remote(), timeout=120)
    yield actor, address
    ray.get(actor.shutdown.remote(), timeout=30)
    ray.kill(actor)


@pytest.fixture(scope="module")
def offline() -> LLMEngine:
    return LLMEngine(ENGINE)


async def _collect(client: ReplicaClient, spec: GenerateSpec) -> list[GenerateDelta]:
    return [d async for d in client.generate(spec)]


def _tokens(deltas: list[GenerateDelta], index: int = 0) -> list[int]:
    return [t for d in deltas if d.index == index for t in d.token_ids]


def test_greedy_equals_offline_engine(replica: tuple, offline: LLMEngine) -> None:
    _, address = replica
    prompt_ids = [offline.tokenizer.encode(p) for p in PROMPTS]
    expected = offline.generate(prompt_ids, GREEDY)

    async def run() -> list[list[GenerateDelta]]:
        client = ReplicaClient(address)
        try:
            specs = [GenerateSpec(f"g{i}", tuple(ids), GREEDY) for i, ids in enumerate(prompt_ids)]
            return await asyncio.gather(*(_collect(client, s) for s in specs))
        finally:
            await client.close()

    results = asyncio.run(run())
    for exp, deltas in zip(expected, results, strict=True):
        assert _tokens(deltas) == exp.token_ids[0]
        assert "".join(d.text for d in deltas) == exp.texts[0]
        last = deltas[-1]
        assert last.finished and last.finish_reason == "length"
        assert last.num_output_tokens == GREEDY.max_tokens
        assert last.num_prompt_tokens == len(exp.prompt_token_ids)


def test_one_message_per_step_per_connection(replica: tuple) -> None:
    """Two requests on one stream arrive together in the same DeltaBatch messages."""
    actor, address = replica
    # Long enough that m0 is still running when its repeated call is read off the stream (with
    # 6 tokens a loaded machine could finish it first, and the repeat then ran as a new request).
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    calls = [
        replica_pb2.GenerateCall(spec=spec_to_pb(GenerateSpec(f"m{i}", (5, 6, 7, i + 8), params)))
        for i in (0, 1, 0)  # the repeated command for m0 is idempotent: it runs once
    ]
    with grpc.insecure_channel(address) as channel:
        stub = replica_pb2_grpc.ReplicaStub(channel)
        steps_before = ray.get(actor.stats.remote())["num_steps"]
        batches = list(stub.Generate(iter(calls), timeout=60))
        steps = ray.get(actor.stats.remote())["num_steps"] - steps_before
    per_batch = [batch_from_pb(b) for b in batches]
    deltas = [d for ds in per_batch for d in ds]
    assert sum(len(d.token_ids) for d in deltas) == 2 * params.max_tokens
    assert {d.request_id for d in deltas if d.finished} == {"m0", "m1"}
    # One message per step at most, never one per token: both requests share messages.
    assert len(batches) <= steps < 2 * params.max_tokens
    assert any(len(ds) == 2 for ds in per_batch)
    for ds in per_batch:
        assert len({d.request_id for d in ds}) == len(ds)
    # Running requests' tokens travel column-wise; only the final deltas travel whole.
    assert all(len(b.request_ids) == len(b.token_counts) for b in batches)
    assert sum(len(b.deltas) for b in batches) == 2


def test_resume_continues_after_sent_tokens(replica: tuple, offline: LLMEngine) -> None:
    _, address = replica
    ids = offline.tokenizer.encode(PROMPTS[0])
    full = offline.generate([ids], GREEDY)[0].token_ids[0]
    spec = GenerateSpec("resume", tuple(ids), GREEDY, resume_token_ids=tuple(full[:5]))

    async def run() -> list[GenerateDelta]:
        client = ReplicaClient(address)
        try:
            return await _collect(client, spec)
        finally:
            await client.close()

    deltas = asyncio.run(run())
    assert _tokens(deltas) == full[5:]
    assert deltas[-1].num_output_tokens == GREEDY.max_tokens
    assert deltas[-1].num_prompt_tokens == len(ids)


def test_invalid_input_abort_and_disconnect(replica: tuple) -> None:
    actor, address = replica
    long = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)

    async def run() -> None:
        client, control = ReplicaClient(address), ReplicaControlClient(address)
        try:
            assert await client.health()
            # Validation errors come back typed and named, and the replica keeps serving.
            for spec, field in _bad_specs(long):
                deltas = await _collect(client, spec)
                assert len(deltas) == 1 and deltas[0].finish_reason == "error", spec
                error = deltas[0].error
                assert error.kind is ErrorKind.INVALID_ARGUMENT and error.field == field, error
            # Abort by id (a command): the stream ends with finish_reason "abort".
            seen: list[GenerateDelta] = []
            async for delta in client.generate(GenerateSpec("long", (1, 2, 3), long)):
                seen.append(delta)
                if len(seen) == 2:
                    result = await control.execute(Abort("long"), "abort-1", 10)
                    assert result.body == AbortResult(found=True)
            assert seen[-1].finished and seen[-1].finish_reason == "abort"
            assert len(_tokens(seen)) < long.max_tokens
            # A retry of that command id gets the first answer; a new id sees it gone.
            again = await control.execute(Abort("long"), "abort-1", 10)
            assert again.repeated and again.body == AbortResult(found=True)
            fresh = await control.execute(Abort("long"), "abort-2", 10)
            assert not fresh.repeated and fresh.body == AbortResult(found=False)
            # Leaving the iterator early aborts too (a client disconnect).
            stream = client.generate(GenerateSpec("dropped", (4, 5, 6), long))
            await stream.__anext__()
            await stream.aclose()
            assert await _until_idle(control)
            load = ray.get(actor.stats.remote())
            assert load["running"] == 0 and load["waiting"] == 0
            assert 0 < load["kv_blocks_free"] <= load["kv_blocks_total"]
        finally:
            await client.close()
            await control.close()

    asyncio.run(run())


def test_commands_apply_once_and_a_cordon_lets_running_requests_finish(replica: tuple) -> None:
    actor, address = replica
    long = SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True)
    short = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)

    async def run() -> None:
        client, control = ReplicaClient(address), ReplicaControlClient(address)

        async def send(command: Command, command_id: str) -> CommandResult:
            return await control.execute(command, command_id, 10)

        try:
            running = client.generate(GenerateSpec("cmpl-running", (7, 8, 9), long))
            first = await running.__anext__()
            assert await send(Cordon(), "c1") == CommandResult("c1", Done())
            assert (await send(Cordon(), "c1")).repeated  # a retry: not applied again
            assert ray.get(actor.stats.remote())["cordoned"]
            # New requests are refused (kind UNAVAILABLE: route elsewhere) ...
            refused = await _collect(client, GenerateSpec("cmpl-new", (1, 2), short))
            assert len(refused) == 1 and refused[0].error.kind is ErrorKind.UNAVAILABLE
            assert refused[0].ends_request
            # ... the running one is listed under its id and runs to the end.
            listed = (await send(ListRequests(), "l1")).body
            assert isinstance(listed, RequestList)
            (info,) = listed.requests
            assert (info.request_id, info.state, info.prompt_tokens) == (
                "cmpl-running",
                "running",
                3,
            )
            assert info.kv_blocks >= 1 and info.n == 1 and info.arrival_time > 0
            rest = [d async for d in running]
            assert len(_tokens([first, *rest])) == long.max_tokens
            assert rest[-1].finish_reason == "length"
            # Uncordon (once: its repeat is the first answer); then repeating the first cordon's
            # id must not cordon again.
            assert (await send(Uncordon(), "u1")).ok
            assert (await send(Uncordon(), "u1")).repeated
            assert (await send(Cordon(), "c1")).repeated
            accepted = await _collect(client, GenerateSpec("cmpl-after", (1, 2), short))
            assert len(_tokens(accepted)) == short.max_tokens
            # An id used for another command, a missing id: typed refusals.
            assert (await send(Uncordon(), "c1")).error.kind is ErrorKind.CONFLICT
            assert (await send(Uncordon(), "")).error.field == "command_id"
            assert (await send(Abort("nope"), "a9")).body == AbortResult(found=False)
            again = await send(Abort("nope"), "a9")
            assert again.repeated and again.body == AbortResult(found=False)
        finally:
            await send(Uncordon(), "u-final")
            await client.close()
            await control.close()

    asyncio.run(run())


def test_describe_model_gives_the_engines_limits_and_tokenizer(
    replica: tuple, offline: LLMEngine
) -> None:
    _, address = replica

    async def run() -> None:
        client = ReplicaClient(address)
        try:
            info = await client.describe_model()
        finally:
            await client.close()
        assert info.max_model_len == offline.max_model_len
        assert info.vocab_size == offline.runner.vocab_size
        assert info.block_size == ENGINE.cache.block_size
        tokenizer = Tokenizer.from_files(info.tokenizer_files)
        for text in PROMPTS:
            assert tokenizer.encode(text) == offline.tokenizer.encode(text)

    asyncio.run(run())


def _bad_specs(p: SamplingParams) -> list[tuple[GenerateSpec, str]]:
    return [
        (GenerateSpec("b1", (1, 2, 3), dataclasses.replace(p, temperature=-1.0)), "temperature"),
        (GenerateSpec("b2", (), p), "prompt"),
        (GenerateSpec("b3", (1, 10**9), p), "prompt"),
        (GenerateSpec("b4", (1, 2), dataclasses.replace(p, max_tokens=10**6)), "max_tokens"),
        (GenerateSpec("b5", (1, 2), dataclasses.replace(p, top_p=0.0)), "top_p"),
        (
            GenerateSpec("b6", (1, 2), dataclasses.replace(p, n=2), resume_token_ids=(5,)),
            "resume_token_ids",
        ),
        (GenerateSpec("", (1, 2), p), "request_id"),
    ]


async def _until_idle(control: ReplicaControlClient, timeout_s: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        listed = (await control.execute(ListRequests(), "idle?", 5)).body
        if not listed.requests:
            return True
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)  # polls the replica; it works meanwhile
