"""Transport faults injected into a real replica server's gRPC: a Generate stream that fails
UNAVAILABLE mid-request, as a network partition or a proxy reset would end it.

The client must see ReplicaUnavailable (what the ingress re-dispatches on, resuming after the
tokens it has) and the replica must abort every request that stream carried, freeing their KV
blocks. The injector joins the server's interceptors while the replica builds its server;
everything else is the real replica.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from actors.common.config import CacheConfig, EngineConfig, GrpcSecurity
from actors.common.replica_client import ReplicaClient, ReplicaUnavailable
from actors.common.sampling_params import SamplingParams
from actors.common.types import GenerateSpec
from actors.engine.engine import LLMEngine
from actors.replica.server import ReplicaServer

SECURITY = GrpcSecurity(secret="fault-injection-secret-0123")
LONG = SamplingParams(temperature=0.0, max_tokens=1500, ignore_eos=True)


class FakeUnavailableAfter(grpc.aio.ServerInterceptor):
    """Fails each Generate stream UNAVAILABLE after `after` response batches."""

    def __init__(self, after: int) -> None:
        self.after = after

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or not details.method.endswith("/Generate"):
            return handler
        inner, after = handler.stream_stream, self.after

        async def behavior(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            sent = 0
            async for batch in inner(requests, context):
                yield batch
                sent += 1
                if sent >= after:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "injected: link reset")

        return grpc.stream_stream_rpc_method_handler(
            behavior, handler.request_deserializer, handler.response_serializer
        )


@pytest.fixture(scope="module")
def faulty_replica() -> Iterator[ReplicaServer]:
    real = grpc.aio.server

    def server_with_faults(*args: Any, interceptors: Any = (), **kwargs: Any) -> grpc.aio.Server:
        # After the secret check, so only an admitted stream is reset.
        chain = [*interceptors, FakeUnavailableAfter(5)]
        return real(*args, interceptors=chain, **kwargs)

    engine = EngineConfig(cache=CacheConfig(cpu_kv_cache_bytes=8 << 20), device="cpu")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(grpc.aio, "server", server_with_faults)  # while the replica builds its own
        server = ReplicaServer(lambda: LLMEngine(engine), "r-faulty", security=SECURITY)
    yield server
    server.stop()


def test_a_reset_stream_is_replica_unavailable_and_its_requests_are_aborted(
    faulty_replica: ReplicaServer,
) -> None:
    loop = faulty_replica.engine_loop
    free_before = loop.snapshot().load.kv_blocks_free

    async def run() -> list[BaseException | list[int]]:
        client = ReplicaClient(faulty_replica.address, SECURITY)

        async def one(i: int) -> list[int]:
            spec = GenerateSpec(f"f{i}", (3, 4, 5, i + 6), LONG)
            return [t async for d in client.generate(spec) for t in d.token_ids]

        try:
            return await asyncio.gather(*(one(i) for i in range(3)), return_exceptions=True)
        finally:
            await client.close()

    outcomes = asyncio.run(run())
    # Every request on the reset stream ends in ReplicaUnavailable, none silently short.
    assert all(isinstance(o, ReplicaUnavailable) for o in outcomes), outcomes
    deadline = time.monotonic() + 5
    while True:
        load = loop.snapshot().load
        if load.running == load.waiting == 0 and load.kv_blocks_free == free_before:
            break
        assert time.monotonic() < deadline, f"the replica kept the reset stream's requests: {load}"
        time.sleep(0.05)  # the engine thread aborts them between two steps
