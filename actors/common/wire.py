"""The one place that converts the replica's plain types (token plane, load reports, commands)
to and from protobuf messages; most go through protos/convert.py's generic mapping."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from actors.common.commands import (
    COMMANDS,
    RESULTS,
    BlockChunk,
    Command,
    CommandResult,
    arm_name,
)
from actors.common.errors import ReplicaError
from actors.common.types import (
    GenerateDelta,
    GenerateSpec,
    LoadReport,
    ModelInfo,
    TokenLogprob,
    running_delta,
)
from protos import common_pb2, replica_pb2
from protos.convert import from_pb, to_pb


def spec_to_pb(spec: GenerateSpec) -> replica_pb2.GenerateSpec:
    return to_pb(spec, replica_pb2.GenerateSpec())


def spec_from_pb(msg: replica_pb2.GenerateSpec) -> GenerateSpec:
    return from_pb(msg, GenerateSpec)


def _logprob_to_pb(lp: TokenLogprob) -> replica_pb2.TokenLogprob:
    return replica_pb2.TokenLogprob(
        token_id=lp.token_id,
        logprob=lp.logprob,
        top_token_ids=[t for t, _ in lp.top],
        top_logprobs=[v for _, v in lp.top],
    )


def _logprob_from_pb(msg: replica_pb2.TokenLogprob) -> TokenLogprob:
    top = tuple(zip(msg.top_token_ids, msg.top_logprobs, strict=True))
    return TokenLogprob(token_id=msg.token_id, logprob=msg.logprob, top=top)


def delta_to_pb(d: GenerateDelta) -> replica_pb2.GenerateDelta:
    msg = replica_pb2.GenerateDelta(
        request_id=d.request_id,
        index=d.index,
        token_ids=d.token_ids,
        text=d.text,
        finished=d.finished,
        has_logprobs=d.logprobs is not None,
        logprobs=[_logprob_to_pb(lp) for lp in d.logprobs or ()],
        num_prompt_tokens=d.num_prompt_tokens,
        num_output_tokens=d.num_output_tokens,
    )
    for name in ("finish_reason", "migrated_to"):
        value = getattr(d, name)
        if value is not None:
            setattr(msg, name, value)
    if d.error is not None:
        to_pb(d.error, msg.error)
    return msg


def delta_from_pb(msg: replica_pb2.GenerateDelta) -> GenerateDelta:
    def opt(name: str) -> str | None:
        return getattr(msg, name) if msg.HasField(name) else None

    logprobs = tuple(_logprob_from_pb(lp) for lp in msg.logprobs) if msg.has_logprobs else None
    return GenerateDelta(
        request_id=msg.request_id,
        index=msg.index,
        token_ids=tuple(msg.token_ids),
        text=msg.text,
        finished=msg.finished,
        finish_reason=opt("finish_reason"),
        logprobs=logprobs,
        error=from_pb(msg.error, ReplicaError) if msg.HasField("error") else None,
        num_prompt_tokens=msg.num_prompt_tokens,
        num_output_tokens=msg.num_output_tokens,
        migrated_to=opt("migrated_to"),
    )


class StepOutput(Protocol):
    """What the engine produced for one choice this step (actors.engine.outputs.RequestOutput)."""

    request_id: str
    index: int
    new_token_ids: list[int]
    new_text: str
    finished: bool
    logprobs: Sequence[TokenLogprob] | None
    error: str | None
    num_output_tokens: int


class Usage(Protocol):
    """What a replica adds to the engine's counts: the client's prompt, tokens resumed after."""

    num_prompt_tokens: int
    num_resumed: int


def is_column_entry(out: StepOutput) -> bool:
    """Whether an output travels in a DeltaBatch's columns (the common case) or whole."""
    return not out.finished and out.logprobs is None and out.error is None


def batch_to_pb(
    outs: Sequence[StepOutput],
    usage: Sequence[Usage],
    whole: Sequence[tuple[int, GenerateDelta]] = (),
) -> replica_pb2.DeltaBatch:
    """One step's message for one connection.

    `outs[i]` (each `is_column_entry`) with `usage[i]` become column entry i; `whole` holds
    (position, delta) pairs: each delta goes before column entry `position`. One comprehension
    per column and protobuf's C-level extend: no per-request message objects.
    """
    batch = replica_pb2.DeltaBatch(
        request_ids=[o.request_id for o in outs],
        indexes=[o.index for o in outs],
        token_counts=[len(o.new_token_ids) for o in outs],
        token_ids=[t for o in outs for t in o.new_token_ids],
        texts=[o.new_text for o in outs],
        num_prompt_tokens=[u.num_prompt_tokens for u in usage],
        num_output_tokens=[
            o.num_output_tokens + u.num_resumed for o, u in zip(outs, usage, strict=True)
        ],
    )
    for position, delta in whole:
        msg = delta_to_pb(delta)
        msg.position = position
        batch.deltas.append(msg)
    return batch


def batch_from_pb(batch: replica_pb2.DeltaBatch) -> list[GenerateDelta]:
    """Every delta of a DeltaBatch, in the order the replica produced them."""
    whole = batch.deltas
    if not batch.request_ids:
        return [delta_from_pb(msg) for msg in whole]
    columns = (batch.request_ids, batch.indexes, _token_tuples(batch), batch.texts)
    usage = (batch.num_prompt_tokens, batch.num_output_tokens)
    running = list(map(running_delta, *columns, *usage))
    if not whole:
        return running
    out: list[GenerateDelta] = []
    done = 0
    for msg in whole:  # each goes before column entry msg.position
        out.extend(running[done : msg.position])
        done = max(done, msg.position)
        out.append(delta_from_pb(msg))
    out.extend(running[done:])
    return out


def _token_tuples(batch: replica_pb2.DeltaBatch) -> list[tuple[int, ...]]:
    tokens, counts = list(batch.token_ids), list(batch.token_counts)
    if len(tokens) == len(counts) and counts.count(1) == len(counts):
        return [(t,) for t in tokens]  # a decode step: one token each
    out, start = [], 0
    for count in counts:
        out.append(tuple(tokens[start : start + count]))
        start += count
    return out


def report_to_pb(report: LoadReport) -> common_pb2.LoadReport:
    return to_pb(report, common_pb2.LoadReport())


def report_from_pb(msg: common_pb2.LoadReport) -> LoadReport:
    return from_pb(msg, LoadReport)


def command_to_pb(command: Command, command_id: str) -> replica_pb2.Command:
    msg = replica_pb2.Command(command_id=command_id)
    body = getattr(msg, arm_name(type(command)))
    body.SetInParent()  # an arm with no fields (Cordon) is still the arm that is set
    to_pb(command, body)
    return msg


def command_from_pb(msg: replica_pb2.Command) -> Command | None:
    """The command `msg` carries; None when its arm is unknown here (a newer controller)."""
    arm = msg.WhichOneof("body")
    cls = _COMMAND_ARMS.get(arm or "")
    return None if cls is None else from_pb(getattr(msg, arm), cls)


def result_to_pb(result: CommandResult) -> replica_pb2.CommandResult:
    msg = replica_pb2.CommandResult(command_id=result.command_id, repeated=result.repeated)
    if result.error is not None:
        to_pb(result.error, msg.error)
    if result.body is not None:
        body = getattr(msg, arm_name(type(result.body)))
        body.SetInParent()
        to_pb(result.body, body)
    return msg


def result_from_pb(msg: replica_pb2.CommandResult) -> CommandResult:
    arm = msg.WhichOneof("body")
    body = from_pb(getattr(msg, arm), _RESULT_ARMS[arm]) if arm in _RESULT_ARMS else None
    error = from_pb(msg.error, ReplicaError) if msg.HasField("error") else None
    return CommandResult(msg.command_id, body, error, msg.repeated)


_COMMAND_ARMS = {arm_name(c): c for c in COMMANDS}
_RESULT_ARMS = {arm_name(c): c for c in RESULTS}


def chunk_to_pb(chunk: BlockChunk) -> replica_pb2.BlockChunk:
    return to_pb(chunk, replica_pb2.BlockChunk())


def chunk_from_pb(msg: replica_pb2.BlockChunk) -> BlockChunk:
    return from_pb(msg, BlockChunk)


def model_info_to_pb(info: ModelInfo) -> replica_pb2.ModelInfo:
    return to_pb(info, replica_pb2.ModelInfo())


def model_info_from_pb(msg: replica_pb2.ModelInfo) -> ModelInfo:
    return from_pb(msg, ModelInfo)
