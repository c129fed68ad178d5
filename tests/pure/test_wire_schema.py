"""The plain types and the protobuf messages that mirror them agree, field for field.

Load, commands, errors and states are defined once as dataclasses or enums and converted
generically (protos/convert.py); these tests are what keeps each mirror honest.
"""

from __future__ import annotations

import dataclasses
import enum

import pytest

from actors.common.commands import (
    COMMANDS,
    RESULTS,
    Abort,
    AbortMigrateIn,
    AbortResult,
    AdapterInfo,
    BlockChunk,
    CommandResult,
    CommitMigrateIn,
    Cordon,
    Done,
    ListRequests,
    LoadAdapter,
    MigrateOut,
    PrepareMigrateIn,
    PullBlocks,
    RequestInfo,
    RequestList,
    Reservation,
    Uncordon,
    UnloadAdapter,
    arm_name,
)
from actors.common.errors import ErrorKind, ReplicaError
from actors.common.migration import DetokenizerState, MigrationReport, RequestState
from actors.common.sampling_params import SamplingParams
from actors.common.types import GenerateSpec, LoadReport, ModelInfo
from actors.common.wire import (
    command_from_pb,
    command_to_pb,
    model_info_from_pb,
    model_info_to_pb,
    result_from_pb,
    result_to_pb,
)
from orchestrator.admin.app import replica_json
from orchestrator.controller.state import ReplicaRecord
from policies.cluster_view import (
    LOAD_FIELDS,
    ReplicaIdentity,
    ReplicaLoad,
    ReplicaState,
    ReplicaView,
)
from protos import common_pb2, controller_pb2, replica_pb2
from protos.convert import check_mirror, enum_prefix

PAIRS = [
    (RequestState, replica_pb2.RequestState),
    (DetokenizerState, replica_pb2.DetokenizerState),
    (MigrationReport, replica_pb2.MigrationReport),
    (MigrateOut, replica_pb2.MigrateOut),
    (PrepareMigrateIn, replica_pb2.PrepareMigrateIn),
    (PullBlocks, replica_pb2.PullBlocks),
    (CommitMigrateIn, replica_pb2.CommitMigrateIn),
    (AbortMigrateIn, replica_pb2.AbortMigrateIn),
    (Reservation, replica_pb2.Reservation),
    (BlockChunk, replica_pb2.BlockChunk),
    (ReplicaLoad, common_pb2.ReplicaLoad),
    (ReplicaIdentity, common_pb2.ReplicaIdentity),
    (LoadReport, common_pb2.LoadReport),
    (ReplicaError, common_pb2.Error),
    (SamplingParams, replica_pb2.SamplingParams),
    (GenerateSpec, replica_pb2.GenerateSpec),
    (ModelInfo, replica_pb2.ModelInfo),
    (RequestInfo, replica_pb2.RequestInfo),
    (RequestList, replica_pb2.RequestList),
    (AbortResult, replica_pb2.AbortResult),
    (Done, replica_pb2.Done),
    (Cordon, replica_pb2.Cordon),
    (Uncordon, replica_pb2.Uncordon),
    (Abort, replica_pb2.Abort),
    (ListRequests, replica_pb2.ListRequests),
]


# Every command and result mirrors the message of its name (derived: a new one is covered).
PAIRS += [
    (c, getattr(replica_pb2, c.__name__))
    for c in (*COMMANDS, *RESULTS)
    if all(c is not known for known, _ in PAIRS)
]


@pytest.mark.parametrize(("cls", "msg"), PAIRS, ids=[c.__name__ for c, _ in PAIRS])
def test_dataclass_and_message_mirror_each_other(cls: type, msg: type) -> None:
    assert check_mirror(cls, msg) == []
    own = {f.name for f in dataclasses.fields(cls)}
    extra = {f.name for f in msg.DESCRIPTOR.fields} - own
    assert extra == set(), f"{msg.__name__} has fields {cls.__name__} lacks"


def test_the_view_message_is_the_views_own_fields_plus_the_load() -> None:
    own = {n for n in ReplicaView.__annotations__}
    fields = {f.name for f in controller_pb2.ReplicaViewMsg.DESCRIPTOR.fields}
    assert fields == own | {"load"}
    # A view is a load: every load field is a view field (added once, present everywhere).
    assert set(LOAD_FIELDS) <= {f.name for f in dataclasses.fields(ReplicaView)}


@pytest.mark.parametrize(
    ("py", "proto"),
    [(ErrorKind, common_pb2.ErrorKind), (ReplicaState, controller_pb2.ReplicaState)],
)
def test_enums_mirror_both_ways(py: type[enum.Enum], proto: object) -> None:
    prefix = enum_prefix(proto.DESCRIPTOR.name)  # type: ignore[attr-defined]
    names = {name.removeprefix(prefix) for name in proto.keys()}  # type: ignore[attr-defined]
    assert names == {m.name for m in py}


def test_every_command_and_result_has_its_oneof_arm() -> None:
    command_arms = {f.name for f in replica_pb2.Command.DESCRIPTOR.oneofs_by_name["body"].fields}
    assert command_arms == {arm_name(c) for c in COMMANDS}
    result_arms = {
        f.name for f in replica_pb2.CommandResult.DESCRIPTOR.oneofs_by_name["body"].fields
    }
    assert result_arms == {arm_name(c) for c in RESULTS}


STATE = RequestState(
    "cmpl-1", (1, 2), (3,), 2, SamplingParams(seed=5), (9,), -1, 0.5, 0, 0, b"\x01\x02",
    DetokenizerState((1, 2, 3), 0, 2, "ab", 1, None), eos_token_id=None, adapter_id="x",
)  # fmt: skip


@pytest.mark.parametrize(
    "command",
    [
        Cordon(),
        Uncordon(),
        Abort("cmpl-1"),
        ListRequests(),
        MigrateOut("cmpl-1", "h:1"),
        PrepareMigrateIn("m1", "cmpl-1", 3, "host"),
        PullBlocks("m1", 2, (5, 6)),
        CommitMigrateIn("m1", STATE, 2),
        AbortMigrateIn("m1"),
        LoadAdapter("sql", "/adapters/sql"),
        UnloadAdapter("sql"),
    ],
)
def test_commands_round_trip_even_with_no_fields(command: object) -> None:
    msg = replica_pb2.Command.FromString(command_to_pb(command, "id-7").SerializeToString())
    assert msg.command_id == "id-7" and command_from_pb(msg) == command


def test_an_unknown_command_arm_is_none_not_an_error() -> None:
    assert command_from_pb(replica_pb2.Command(command_id="x")) is None


@pytest.mark.parametrize(
    "result",
    [
        CommandResult("a", Done()),
        CommandResult("b", AbortResult(found=False), repeated=True),
        CommandResult("c", RequestList(())),
        CommandResult("d", RequestList((RequestInfo("r", "waiting", 2, 3, 0, 0, -1, 5.0, "x"),))),
        CommandResult("e", error=ReplicaError(ErrorKind.CONFLICT, "no", "command_id")),
        CommandResult("f", Reservation(4)),
        CommandResult("g", MigrationReport("m", "r", "committed", stages=2, downtime_ms=1.5)),
        CommandResult("h", AdapterInfo("sql", "ab12", 8, ("q_proj", "v_proj"))),
    ],
)
def test_results_round_trip(result: CommandResult) -> None:
    wire = result_to_pb(result).SerializeToString()
    assert result_from_pb(replica_pb2.CommandResult.FromString(wire)) == result


def test_model_info_round_trip() -> None:
    info = ModelInfo("/m", 4096, 32000, 16, {"tokenizer.json": b"{}"})
    assert model_info_from_pb(model_info_to_pb(info)) == info


def test_admin_replica_json_shows_every_load_field() -> None:
    report = LoadReport(
        ReplicaIdentity("r1", "h:1", "n1", "inc", pid=9, started_at=1.0),
        3,
        ReplicaLoad(running=2, adapters_resident=frozenset({"b", "a"}), prefix_hashes=frozenset()),
    )
    shown = replica_json(ReplicaRecord("r1", 0.0, report=report, reporting=True))
    assert {"id", "state", "node", "address", "pid", "incarnation", "uptime_s"} <= set(shown)
    assert set(LOAD_FIELDS) - {"prefix_hashes"} <= set(shown)
    assert shown["adapters_resident"] == ["a", "b"] and shown["state"] == "ready"
