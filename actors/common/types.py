"""Plain frozen types of the token plane and of load reports; the wire types stay in protos/
(actors/common/wire.py converts)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from types import MappingProxyType

from actors.common.errors import ReplicaError
from actors.common.sampling_params import SamplingParams
from policies.cluster_view import ReplicaIdentity, ReplicaLoad


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token_id, logprob), best first


@dataclass(frozen=True)
class GenerateSpec:
    """One request as the ingress sends it to a replica."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    priority: int = 0
    adapter_id: str | None = None
    # Tokens the client already received from a replica that died: the new replica continues
    # after them and never sends them again.
    resume_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class GenerateDelta:
    """What one choice of one request produced in one engine step."""

    request_id: str
    index: int
    token_ids: tuple[int, ...]
    text: str
    finished: bool
    finish_reason: str | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    error: ReplicaError | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    migrated_to: str | None = None

    @property
    def ends_request(self) -> bool:
        """A final error that ends every choice (validation or replica failure), not just one."""
        return self.finished and self.error is not None and self.error.whole_request


# Every field's value in a running delta, from the dataclass itself (read-only; copied per delta).
_RUNNING_DEFAULTS = MappingProxyType(
    {
        "request_id": "",
        "index": 0,
        "token_ids": (),
        "text": "",
        "finished": False,
        **{f.name: f.default for f in fields(GenerateDelta) if f.default is not MISSING},
    }
)


def running_delta(
    request_id: str,
    index: int,
    token_ids: tuple[int, ...],
    text: str,
    num_prompt_tokens: int,
    num_output_tokens: int,
) -> GenerateDelta:
    """A delta of a choice that goes on (not finished, no logprobs, no error).

    The very object `GenerateDelta(...)` makes, built without the frozen dataclass __init__'s
    one object.__setattr__ per field: a client builds one per token per request (3x faster)."""
    delta = object.__new__(GenerateDelta)
    values = dict(_RUNNING_DEFAULTS)
    values["request_id"] = request_id
    values["index"] = index
    values["token_ids"] = token_ids
    values["text"] = text
    values["num_prompt_tokens"] = num_prompt_tokens
    values["num_output_tokens"] = num_output_tokens
    object.__setattr__(delta, "__dict__", values)
    return delta


@dataclass(frozen=True)
class LoadReport:
    """What a replica pushes to the controller: who it is, a sequence number, its load."""

    identity: ReplicaIdentity
    seq: int
    load: ReplicaLoad


@dataclass(frozen=True)
class ModelInfo:
    """What the ingress needs of a replica's model: the limits the engine enforces and the files
    its tokenizer is built from (so the ingress never re-reads, or re-guesses, the checkpoint)."""

    model: str
    max_model_len: int
    vocab_size: int
    block_size: int
    tokenizer_files: dict[str, bytes] = field(default_factory=dict)
