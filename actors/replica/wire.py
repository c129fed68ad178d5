"""The one place that converts between the token plane's plain types and protobuf messages."""

from __future__ import annotations

import dataclasses

from actors.engine.outputs import TokenLogprob
from actors.engine.sampling_params import SamplingParams
from actors.replica.types import GenerateDelta, GenerateSpec, LoadSnapshot
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


def load_to_pb(s: LoadSnapshot) -> common_pb2.LoadReport:
    return common_pb2.LoadReport(**dataclasses.asdict(s))


def load_from_pb(msg: common_pb2.LoadReport) -> LoadSnapshot:
    kwargs: dict[str, object] = {}
    for f in dataclasses.fields(LoadSnapshot):
        value = getattr(msg, f.name)
        kwargs[f.name] = tuple(value) if f.name in ("adapters_resident", "prefix_hashes") else value
    return LoadSnapshot(**kwargs)
