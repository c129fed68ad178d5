"""Live migration between two real replica servers (engine loop + gRPC, in this process, no Ray),
over the host transport: the client's stream follows the request with no gap and no repeat, the
tokens are exactly the unmigrated run's, and every block is back where it was afterwards."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator

import pytest

from actors.common.commands import MigrateOut
from actors.common.config import CacheConfig, EngineConfig, MigrationSettings, SchedulerConfig
from actors.common.control_client import ReplicaControlClient
from actors.common.migration import MigrationReport
from actors.common.replica_client import ReplicaClient
from actors.common.sampling_params import SamplingParams
from actors.common.types import GenerateDelta, GenerateSpec
from actors.engine.engine import LLMEngine
from actors.replica.server import ReplicaServer

ENGINE = EngineConfig(
    cache=CacheConfig(block_size=4, num_gpu_blocks_override=256),
    scheduler=SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=8),
    device="cpu",
)
# Small chunks: a stage's blocks travel as several PushBlocks messages.
MIGRATION = MigrationSettings(chunk_bytes=2048, downtime_budget_ms=0.0, max_stages=3)
PROMPT = (1, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110)
GREEDY = SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True)
SEEDED = SamplingParams(temperature=0.8, top_k=50, seed=11, max_tokens=60, ignore_eos=True)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[ReplicaServer, ReplicaServer]]:
    a = ReplicaServer(lambda: LLMEngine(ENGINE), "mig-a", migration=MIGRATION)
    b = ReplicaServer(lambda: LLMEngine(ENGINE), "mig-b", migration=MIGRATION)
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def offline() -> LLMEngine:
    return LLMEngine(ENGINE)


def _free(server: ReplicaServer) -> int:
    engine = server.engine_loop.engine
    return server.engine_loop.call(lambda: engine.block_manager.num_free_blocks).result(10)


async def _follow(
    spec: GenerateSpec, source: ReplicaServer, move_after: int, target: ReplicaServer
) -> tuple[list[GenerateDelta], MigrationReport]:
    """Stream `spec` from `source`; after `move_after` deltas migrate it to `target` and follow
    it there, as the ingress does."""
    clients = {s.address: ReplicaClient(s.address) for s in (source, target)}
    control = ReplicaControlClient(source.address)
    deltas: list[GenerateDelta] = []
    report = None
    try:
        stream = clients[source.address].generate(spec)
        async for d in stream:
            deltas.append(d)
            if len(deltas) == move_after:
                command = MigrateOut(spec.request_id, target.address)
                result = await control.execute(command, f"mig-{spec.request_id}", 60)
                report = result.body
            if d.migrated_to is not None:
                async for d2 in clients[d.migrated_to].attach(spec.request_id):
                    deltas.append(d2)
                break
    finally:
        for c in clients.values():
            await c.close()
        await control.close()
    assert isinstance(report, MigrationReport), report
    return deltas, report


def _tokens(deltas: list[GenerateDelta]) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
@pytest.mark.parametrize("move_after", [1, 3, 20])
def test_a_migrated_stream_equals_the_unmigrated_one(
    servers: tuple[ReplicaServer, ReplicaServer],
    offline: LLMEngine,
    params: SamplingParams,
    move_after: int,
) -> None:
    a, b = servers
    free = (_free(a), _free(b))
    expected = offline.generate([list(PROMPT)], params)[0]
    rid = f"cmpl-{params.temperature}-{move_after}"
    deltas, report = asyncio.run(_follow(GenerateSpec(rid, PROMPT, params), a, move_after, b))
    assert report.outcome == "committed", report
    assert report.bytes > 0 and report.downtime_ms > 0 and report.target == b.address
    moved = [d for d in deltas if d.migrated_to is not None]
    assert len(moved) == 1 and moved[0].migrated_to == b.address
    assert _tokens(deltas) == expected.token_ids[0]  # no gap, no repeat, same tokens
    assert "".join(d.text for d in deltas) == expected.texts[0]
    last = deltas[-1]
    assert last.finished and last.finish_reason == "length"
    assert last.num_output_tokens == params.max_tokens and last.num_prompt_tokens == len(PROMPT)
    assert (_free(a), _free(b)) == free  # no reservation or block left behind


def test_migrate_back_and_forth(
    servers: tuple[ReplicaServer, ReplicaServer], offline: LLMEngine
) -> None:
    """Twice: a -> b, then b -> a, in one stream."""
    a, b = servers
    free = (_free(a), _free(b))
    params = dataclasses.replace(GREEDY, max_tokens=80)
    expected = offline.generate([list(PROMPT)], params)[0].token_ids[0]

    async def run() -> list[GenerateDelta]:
        ca, cb = ReplicaClient(a.address), ReplicaClient(b.address)
        controls = {
            a.address: ReplicaControlClient(a.address),
            b.address: ReplicaControlClient(b.address),
        }
        deltas: list[GenerateDelta] = []
        try:
            hops = {a.address: b.address, b.address: a.address}
            clients = {a.address: ca, b.address: cb}
            where = a.address
            stream = ca.generate(GenerateSpec("cmpl-twice", PROMPT, params))
            for hop in range(3):
                async for d in stream:
                    deltas.append(d)
                    if len(deltas) in (5, 30) and hop < 2:
                        cmd = MigrateOut("cmpl-twice", hops[where])
                        result = await controls[where].execute(cmd, f"twice-{hop}", 60)
                        assert result.body.outcome == "committed", result
                    if d.migrated_to is not None:
                        where = d.migrated_to
                        stream = clients[where].attach("cmpl-twice")
                        break
                else:
                    break
        finally:
            for c in (ca, cb, *controls.values()):
                await c.close()
        return deltas

    deltas = asyncio.run(run())
    assert sum(d.migrated_to is not None for d in deltas) == 2
    assert _tokens(deltas) == expected
    assert (_free(a), _free(b)) == free
