"""Migration faults between real replica servers (in this process, real gRPC, no Ray): every
failure leaves exactly one owner and loses nothing, and no block stays reserved."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from actors.common.commands import (
    Cordon,
    ListRequests,
    MigrateOut,
    PrepareMigrateIn,
    Uncordon,
)
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
# Room for 3 blocks: less than the request holds when it is asked to move there.
SMALL = dataclasses.replace(ENGINE, cache=CacheConfig(block_size=4, num_gpu_blocks_override=3))
FAST = MigrationSettings(
    chunk_bytes=1024,
    downtime_budget_ms=0.0,
    max_stages=50,
    max_concurrent=3,
    reservation_timeout_s=1.0,
    attach_timeout_s=1.0,
    command_timeout_s=2.0,
)
PROMPT = (1, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110)
GREEDY = SamplingParams(temperature=0.0, max_tokens=80, ignore_eos=True)


def _server(name: str, engine: EngineConfig = ENGINE) -> ReplicaServer:
    return ReplicaServer(lambda: LLMEngine(engine), name, migration=FAST)


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[ReplicaServer, ReplicaServer]]:
    a, b = _server("f-a"), _server("f-b")
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def expected() -> list[int]:
    return LLMEngine(ENGINE).generate([list(PROMPT)], GREEDY)[0].token_ids[0]


def _free(server: ReplicaServer) -> int:
    engine = server.engine_loop.engine
    return server.engine_loop.call(lambda: engine.block_manager.num_free_blocks).result(10)


def _wait(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)  # the replicas work meanwhile


async def _migrate_mid_stream(
    source: ReplicaServer,
    target_address: str,
    rid: str,
    during: Callable[[], object] | None = None,
    params: SamplingParams = GREEDY,
) -> tuple[list[GenerateDelta], MigrationReport]:
    """Stream `rid` from `source`, migrate it after a few tokens (running `during` at the same
    time), follow it if it moved; returns every delta and the migration's report."""
    clients: dict[str, ReplicaClient] = {source.address: ReplicaClient(source.address)}
    control = ReplicaControlClient(source.address)
    deltas: list[GenerateDelta] = []
    report = None
    try:
        async for d in clients[source.address].generate(GenerateSpec(rid, PROMPT, params)):
            deltas.append(d)
            if len(deltas) == 3:
                moving = control.execute(MigrateOut(rid, target_address), f"m-{rid}", 60)
                if during is not None:
                    results = await asyncio.gather(moving, asyncio.to_thread(during))
                    report = results[0].body
                else:
                    report = (await moving).body
            if d.migrated_to is not None:
                client = clients.setdefault(d.migrated_to, ReplicaClient(d.migrated_to))
                deltas.extend([x async for x in client.attach(rid)])
                break
    finally:
        for c in clients.values():
            await c.close()
        await control.close()
    assert isinstance(report, MigrationReport), report
    return deltas, report


def _tokens(deltas: list[GenerateDelta]) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


def test_a_cordoned_destination_refuses_and_the_request_stays(
    pair: tuple[ReplicaServer, ReplicaServer], expected: list[int]
) -> None:
    a, b = pair
    free = (_free(a), _free(b))

    async def run() -> tuple[list[GenerateDelta], MigrationReport]:
        control = ReplicaControlClient(b.address)
        try:
            await control.execute(Cordon(), "c-b", 5)
            return await _migrate_mid_stream(a, b.address, "cmpl-cordoned")
        finally:
            await control.execute(Uncordon(), "u-b", 5)
            await control.close()

    deltas, report = asyncio.run(run())
    assert report.outcome == "aborted" and "cordoned" in report.reason
    assert not any(d.migrated_to for d in deltas)
    assert _tokens(deltas) == expected  # it finished where it was, unharmed
    assert (_free(a), _free(b)) == free


def test_a_destination_without_room_refuses(
    pair: tuple[ReplicaServer, ReplicaServer], expected: list[int]
) -> None:
    a, _ = pair
    small = _server("f-small", SMALL)
    try:
        free = (_free(a), _free(small))
        deltas, report = asyncio.run(_migrate_mid_stream(a, small.address, "cmpl-full"))
        assert report.outcome == "aborted" and "not free" in report.reason
        assert _tokens(deltas) == expected
        assert (_free(a), _free(small)) == free
    finally:
        small.stop()


def test_the_destination_dies_mid_copy_and_the_request_goes_on(
    pair: tuple[ReplicaServer, ReplicaServer], expected: list[int]
) -> None:
    a, _ = pair
    doomed = _server("f-doomed")
    free = _free(a)
    # Fault injection at the runner seam: the destination's first block write hangs until the
    # replica is gone, so it dies mid-copy however fast copies are.
    copying, gone = threading.Event(), threading.Event()
    runner = doomed.engine_loop.engine.runner
    write = runner.import_blocks

    def stalled_write(block_ids: list[int], data: object) -> None:
        copying.set()
        gone.wait(10)
        write(block_ids, data)

    runner.import_blocks = stalled_write  # type: ignore[method-assign]

    def kill_once_copying() -> None:
        assert copying.wait(10), "no block write reached the destination"
        doomed.stop()
        gone.set()

    deltas, report = asyncio.run(
        _migrate_mid_stream(a, doomed.address, "cmpl-doomed", kill_once_copying)
    )
    assert report.outcome == "aborted", report
    assert _tokens(deltas) == expected and not any(d.migrated_to for d in deltas)
    _wait(lambda: _free(a) == free)


def test_the_source_dies_mid_copy_and_the_reservation_is_freed(
    pair: tuple[ReplicaServer, ReplicaServer],
) -> None:
    """A source that reserved and went silent: the destination frees the blocks in time."""
    _, b = pair
    free = _free(b)

    async def reserve() -> None:
        control = ReplicaControlClient(b.address)
        try:
            result = await control.execute(
                PrepareMigrateIn("m-orphan", "cmpl-orphan", 10, "host"), "m-orphan:prepare", 5
            )
            assert result.body.num_blocks == 10
        finally:
            await control.close()

    asyncio.run(reserve())
    assert _free(b) == free - 10 and b.engine_loop.migrating_in == 1
    _wait(lambda: _free(b) == free and b.engine_loop.migrating_in == 0)


def test_a_client_that_leaves_mid_migration_leaves_nothing_behind(
    pair: tuple[ReplicaServer, ReplicaServer],
) -> None:
    a, b = pair
    free = (_free(a), _free(b))

    async def run() -> MigrationReport:
        client, control = ReplicaClient(a.address), ReplicaControlClient(a.address)
        try:
            stream = client.generate(GenerateSpec("cmpl-leaves", PROMPT, GREEDY))
            await stream.__anext__()
            moving = asyncio.create_task(
                control.execute(MigrateOut("cmpl-leaves", b.address), "m-leaves", 60)
            )
            await stream.aclose()  # the client disconnects: the request is aborted
            return (await moving).body
        finally:
            await client.close()
            await control.close()

    report = asyncio.run(run())
    assert report.outcome in ("committed", "aborted")  # either way: nothing left anywhere
    _wait(lambda: (_free(a), _free(b)) == free)
    assert _listed(a) == [] and _listed(b) == []


def test_a_committed_request_nobody_follows_is_aborted(
    pair: tuple[ReplicaServer, ReplicaServer],
) -> None:
    a, b = pair
    free = (_free(a), _free(b))

    async def run() -> MigrationReport:
        client, control = ReplicaClient(a.address), ReplicaControlClient(a.address)
        try:
            stream = client.generate(GenerateSpec("cmpl-lost", PROMPT, GREEDY))
            await stream.__anext__()
            report = (await control.execute(MigrateOut("cmpl-lost", b.address), "m-lost", 60)).body
            async for d in stream:  # the stream ends with migrated_to; nobody attaches
                assert d.migrated_to is None or d.migrated_to == b.address
            return report
        finally:
            await client.close()
            await control.close()

    assert asyncio.run(run()).outcome == "committed"
    _wait(lambda: (_free(a), _free(b)) == free)  # attach_timeout_s: b aborted it
    assert _listed(b) == []


def test_several_migrations_at_once_and_a_repeated_id_is_one_migration(
    pair: tuple[ReplicaServer, ReplicaServer], expected: list[int]
) -> None:
    a, b = pair
    free = (_free(a), _free(b))

    async def run() -> list[tuple[list[GenerateDelta], MigrationReport]]:
        return await asyncio.gather(
            *(_migrate_mid_stream(a, b.address, f"cmpl-many-{i}") for i in range(3))
        )

    for deltas, report in asyncio.run(run()):
        assert report.outcome == "committed", report
        assert _tokens(deltas) == expected
    assert (_free(a), _free(b)) == free

    async def twice() -> list[MigrationReport]:
        client, control = ReplicaClient(a.address), ReplicaControlClient(a.address)
        try:
            stream = client.generate(GenerateSpec("cmpl-twice", PROMPT, GREEDY))
            await stream.__anext__()
            cmd = MigrateOut("cmpl-twice", b.address)
            first, second = await asyncio.gather(
                control.execute(cmd, "m-same", 60), control.execute(cmd, "m-same", 60)
            )
            async for d in stream:
                if d.migrated_to:
                    async for _ in ReplicaClient(d.migrated_to).attach("cmpl-twice"):
                        pass
            return [first, second]
        finally:
            await client.close()
            await control.close()

    first, second = asyncio.run(twice())
    assert first.body == second.body and first.body.outcome == "committed"
    assert first.repeated != second.repeated  # one ran it, the other got its answer
    _wait(lambda: (_free(a), _free(b)) == free)


def _listed(server: ReplicaServer) -> list:
    async def ask() -> list:
        control = ReplicaControlClient(server.address)
        try:
            return list((await control.execute(ListRequests(), "l", 5)).body.requests)
        finally:
            await control.close()

    return asyncio.run(ask())
