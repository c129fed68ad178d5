"""The one place that converts the replica's plain types (token plane, load reports, commands)
to and from protobuf messages; most go through protos/convert.py's generic mapping."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from google.protobuf.message import DecodeError

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


# ---- BlockChunk: KV bytes that never pass through protobuf's copies ---------------------------
# A chunk is tens of MiB. Built as a message it would be copied into the message, again when
# serialized, again when parsed and again each time `.data` is read (~8 copies end to end, which
# held the host transport to ~0.1 GB/s). A frame is the same protobuf encoding of BlockChunk
# (any protobuf parser reads it) written by hand: the small fields through protobuf, then `data`'s
# tag and length and the payload itself, joined once; reading it slices the payload in place.

_DATA_FIELD = replica_pb2.BlockChunk.DESCRIPTOR.fields_by_name["data"].number
_LEN = 2  # protobuf wire type of a length-delimited field
_SKIP = {1: 8, 5: 4}  # fixed64 / fixed32 wire types: their sizes


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("frame: a truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def chunk_frame(chunk: BlockChunk, payload: memoryview | bytes) -> bytes:
    """The protobuf encoding of `chunk` with `payload` as its data (chunk.data is ignored)."""
    head = to_pb(replace(chunk, data=b""), replica_pb2.BlockChunk()).SerializeToString()
    tag = _varint(_DATA_FIELD << 3 | _LEN) + _varint(memoryview(payload).nbytes)
    return b"".join((head, tag, payload))


def chunk_from_frame(raw: bytes) -> tuple[BlockChunk, memoryview]:
    """A received BlockChunk (its `data` left empty) and its data, a view into `raw`: no copy.
    ValueError names what is malformed."""
    buf = memoryview(raw)
    pos, data, others = 0, memoryview(b""), []
    while pos < len(buf):
        start = pos
        key, pos = _read_varint(buf, pos)
        wire, size = key & 7, 0
        if wire == 0:
            _, pos = _read_varint(buf, pos)
        elif wire == _LEN:
            size, pos = _read_varint(buf, pos)
        elif wire in _SKIP:
            size = _SKIP[wire]
        else:
            raise ValueError(f"frame: wire type {wire} is not protobuf's")
        if pos + size > len(buf):
            raise ValueError("frame: truncated")
        if wire == _LEN and key >> 3 == _DATA_FIELD:
            data = buf[pos : pos + size]
        else:
            others.append(buf[start : pos + size])
        pos += size
    try:
        head = replica_pb2.BlockChunk.FromString(b"".join(others))
    except DecodeError as exc:
        raise ValueError(f"frame: {exc}") from exc
    return from_pb(head, BlockChunk), data


def model_info_to_pb(info: ModelInfo) -> replica_pb2.ModelInfo:
    return to_pb(info, replica_pb2.ModelInfo())


def model_info_from_pb(msg: replica_pb2.ModelInfo) -> ModelInfo:
    return from_pb(msg, ModelInfo)
