"""Live migration over CUDA IPC: two replica actors share one GPU (num_gpus=0.5 each); a stream
moves between them with the `cuda_ipc` transport (and with `host`, for comparison) and its
tokens equal the offline engine's. Needs a GPU host (marked gpu)."""

from __future__ import annotations

import asyncio

import pytest
import ray

from actors.common.commands import MigrateOut
from actors.common.config import CacheConfig, EngineConfig, ReplicaOptions, ReplicaSpec
from actors.common.control_client import ReplicaControlClient
from actors.common.replica_client import ReplicaClient
from actors.common.sampling_params import SamplingParams
from actors.common.types import GenerateSpec
from actors.engine.engine import LLMEngine
from actors.replica.actor import ReplicaActor

pytestmark = pytest.mark.gpu

ENGINE = EngineConfig(cache=CacheConfig(num_gpu_blocks_override=512), device="cuda")
# Long enough that the request still runs when the migration commits (tiny model, fast GPU).
PARAMS = SamplingParams(temperature=0.0, max_tokens=1000, ignore_eos=True)
PROMPT = tuple(range(10, 90))


@pytest.mark.parametrize("transport", ["cuda_ipc", "host"])
def test_a_stream_moves_between_replicas_sharing_a_gpu(ray_local: None, transport: str) -> None:
    actors = [
        ray.remote(ReplicaActor)
        .options(num_gpus=0.5)
        .remote(f"g{i}", ReplicaSpec(ENGINE), None, ReplicaOptions())
        for i in range(2)
    ]
    a, b = ray.get([x.address.remote() for x in actors], timeout=300)
    expected = LLMEngine(ENGINE).generate([list(PROMPT)], PARAMS)[0].token_ids[0]

    async def run() -> tuple[list[int], object]:
        ca, cb, control = ReplicaClient(a), ReplicaClient(b), ReplicaControlClient(a)
        tokens: list[int] = []
        report = None
        try:
            async for d in ca.generate(GenerateSpec("gpu-move", PROMPT, PARAMS)):
                tokens.extend(d.token_ids)
                if report is None and len(tokens) >= 8:
                    cmd = MigrateOut("gpu-move", b, transport)
                    result = await control.execute(cmd, f"m-{transport}", 60)
                    assert result.error is None, result.error
                    report = result.body
                if d.migrated_to is not None:
                    tokens.extend([t async for x in cb.attach("gpu-move") for t in x.token_ids])
                    break
        finally:
            for c in (ca, cb, control):
                await c.close()
        return tokens, report

    try:
        tokens, report = asyncio.run(run())
        assert report.outcome == "committed", report
        assert tokens == expected
    finally:
        for x in actors:
            ray.get(x.shutdown.remote(), timeout=30)
            ray.kill(x)
