"""The one place that converts between the token plane's plain types and protobuf messages."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from actors.engine.outputs import RequestOutput, TokenLogprob
from actors.engine.sampling_params import SamplingParams
from actors.replica.types import GenerateDelta, GenerateSpec, LoadSnapshot, running_delta
from protos import common_pb2, replica_pb2

_OPTIONAL_SAMPLING = ("seed", "logprobs")
_REPEATED_SAMPLING = ("stop", "stop_token_ids")


def sampling_to_pb(p: SamplingParams) -> replica_pb2.SamplingParams:
    msg = replica_pb2.SamplingParams()
    for f in dataclasses.fields(SamplingParams):
        value = getattr(p, f.name)
        if f.name in _REPEATED_SAMPLING:
            getattr(msg, f.name).extend(value)
        elif f.name in _OPTIONAL_SAMPLING:
            if value is not None:
                setattr(msg, f.name, value)
        else:
            setattr(msg, f.name, value)
    return msg


def sampling_from_pb(msg: replica_pb2.SamplingParams) -> SamplingParams:
    kwargs: dict[str, object] = {}
    for f in dataclasses.fields(SamplingParams):
        if f.name in _REPEATED_SAMPLING:
            kwargs[f.name] = tuple(getattr(msg, f.name))
        elif f.name in _OPTIONAL_SAMPLING:
            kwargs[f.name] = getattr(msg, f.name) if msg.HasField(f.name) else None
        else:
            kwargs[f.name] = getattr(msg, f.name)
    return SamplingParams(**kwargs)


def spec_to_pb(spec: GenerateSpec) -> replica_pb2.GenerateSpec:
    msg = replica_pb2.GenerateSpec(
        request_id=spec.request_id,
        prompt_token_ids=spec.prompt_token_ids,
        sampling=sampling_to_pb(spec.sampling),
        priority=spec.priority,
        resume_token_ids=spec.resume_token_ids,
    )
    if spec.adapter_id is not None:
        msg.adapter_id = spec.adapter_id
    return msg


def spec_from_pb(msg: replica_pb2.GenerateSpec) -> GenerateSpec:
    return GenerateSpec(
        request_id=msg.request_id,
        prompt_token_ids=tuple(msg.prompt_token_ids),
        sampling=sampling_from_pb(msg.sampling),
        priority=msg.priority,
        adapter_id=msg.adapter_id if msg.HasField("adapter_id") else None,
        resume_token_ids=tuple(msg.resume_token_ids),
    )


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
    for name in ("finish_reason", "error", "migrated_to"):
        value = getattr(d, name)
        if value is not None:
            setattr(msg, name, value)
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
        error=opt("error"),
        num_prompt_tokens=msg.num_prompt_tokens,
        num_output_tokens=msg.num_output_tokens,
        migrated_to=opt("migrated_to"),
    )


class Usage(Protocol):
    """What a replica adds to the engine's counts: the client's prompt, tokens resumed after."""

    num_prompt_tokens: int
    num_resumed: int


def is_column_entry(out: RequestOutput) -> bool:
    """Whether an output travels in a DeltaBatch's columns (the common case) or whole."""
    return not out.finished and out.logprobs is None and out.error is None


def batch_to_pb(
    outs: Sequence[RequestOutput],
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


def load_to_pb(s: LoadSnapshot) -> common_pb2.LoadReport:
    return common_pb2.LoadReport(**dataclasses.asdict(s))


def load_from_pb(msg: common_pb2.LoadReport) -> LoadSnapshot:
    kwargs: dict[str, object] = {}
    for f in dataclasses.fields(LoadSnapshot):
        value = getattr(msg, f.name)
        kwargs[f.name] = tuple(value) if f.name in ("adapters_resident", "prefix_hashes") else value
    return LoadSnapshot(**kwargs)
