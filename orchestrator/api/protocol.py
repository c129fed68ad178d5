"""OpenAI request and response models (pydantic), with the real OpenAI field names.

Requests are parsed here and turned into `SamplingParams`; responses are built with the helpers
at the bottom so the completion and chat paths share the shapes. Pure: no torch, no ray.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from actors.common.sampling_params import SamplingParams

# The OpenAI API caps top_logprobs at 20; the engine's default max_logprobs matches.
MAX_LOGPROBS = 20
MAX_N = 128  # choices per request, OpenAI's cap
# Integers travel as int32/int64 on the wire: out-of-range values are a 400 naming the field,
# not an overflow deep in the conversion.
Int32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]
# OpenAI fields this server does not implement: refused by name, so nobody believes e.g. JSON
# mode or tool calling works (ignoring them would return plain text as if they had).
UNSUPPORTED = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "logit_bias",
    "suffix",
    "best_of",
    "parallel_tool_calls",
)


def _text(value: str, field: str) -> str:
    """A string the tokenizer can take: UTF-8 encodable (a lone surrogate such as "\\ud800"
    from JSON is not)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{field}: must be valid Unicode text (no lone surrogates)") from None
    return value


class _Strict(BaseModel):
    # Known fields are strictly typed: "5" is not an integer, "yes" not a boolean.
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class _SamplingFields(_Strict):
    """Fields shared by /v1/completions and /v1/chat/completions (OpenAI + vLLM extras).

    Unknown fields (user tags, metadata...) are ignored, as OpenAI does for fields a model does
    not use; those that would change the output (UNSUPPORTED) are refused by name."""

    model: str
    max_tokens: Int32 | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: Int64 | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    user: str | None = None
    # vLLM-style extras.
    top_k: Int32 = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    stop_token_ids: list[TokenId] | None = None
    include_stop_str_in_output: bool = False
    priority: Int32 = 0
    return_token_ids: bool = False  # vLLM extra: each choice carries its generated token ids

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in UNSUPPORTED:
                value = data.get(name)
                if value in (None, [], {}) or (name == "response_format" and value == _TEXT):
                    continue
                if name == "best_of" and value == 1:
                    continue
                raise ValueError(f"{name}: is not supported by this server")
        return data

    @field_validator("stop")
    @classmethod
    def _stop_text(cls, v: str | list[str] | None) -> str | list[str] | None:
        for s in [v] if isinstance(v, str) else v or []:
            _text(s, "stop")
        return v

    @field_validator("stream_options")
    @classmethod
    def _options_need_stream(cls, v: StreamOptions | None, info: Any) -> StreamOptions | None:
        if v is not None and not info.data.get("stream", False):
            raise ValueError("stream_options is only allowed when stream is true")
        return v

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def _sampling(self, max_tokens: int, logprobs: int | None) -> SamplingParams:
        return SamplingParams(
            n=self.n,
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            seed=self.seed,
            stop=self.stop_strings(),
            stop_token_ids=tuple(self.stop_token_ids or ()),
            include_stop_str_in_output=self.include_stop_str_in_output,
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
        )


class CompletionRequest(_SamplingFields):
    prompt: str | list[TokenId] | list[str] | list[list[TokenId]]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _prompt_text(cls, v: Any) -> Any:
        for s in [v] if isinstance(v, str) else v:
            if isinstance(s, str):
                _text(s, "prompt")
        return v

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("echo is not supported")
        return v

    def single_prompt(self) -> str | list[int]:
        """The one prompt of this request; a batch of several is refused (field `prompt`)."""
        p = self.prompt
        if isinstance(p, str):
            if not p:
                raise ValueError("prompt: must not be empty")
            return p
        if not p:
            raise ValueError("prompt: must not be empty")
        if all(isinstance(x, int) for x in p):
            return list(p)  # type: ignore[arg-type]
        if len(p) != 1:
            raise ValueError("prompt: batches of several prompts are not supported; send one")
        inner = p[0]
        if not inner:
            raise ValueError("prompt: must not be empty")
        return inner if isinstance(inner, str) else list(inner)

    def to_sampling_params(self) -> SamplingParams:
        # OpenAI's documented default for completions is 16 tokens.
        max_tokens = 16 if self.max_tokens is None else self.max_tokens
        return self._sampling(max_tokens, self.logprobs)


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        """Content as plain text; OpenAI's list-of-parts form may carry only text parts."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return _text(self.content, "messages")
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("messages: only text content parts are supported")
            parts.append(_text(part["text"], "messages"))
        return "".join(parts)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Int32 | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    add_generation_prompt: bool = True

    def template_messages(self) -> list[dict[str, str]]:
        out = []
        for m in self.messages:
            d = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            out.append(d)
        return out

    def requested_max_tokens(self) -> int | None:
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else (self.max_tokens)
        )

    def to_sampling_params(self, default_max_tokens: int) -> SamplingParams:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: requires logprobs to be true")
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        requested = self.requested_max_tokens()
        return self._sampling(requested if requested is not None else default_max_tokens, logprobs)


_TEXT = {"type": "text"}  # the one response_format that is plain text, i.e. supported


def validation_error_field(exc: ValidationError) -> tuple[str, str]:
    """(field path, reason) of the first pydantic error, for a 400 that names the field.

    For a union (e.g. `prompt`: text or token ids) pydantic reports every member's mismatch;
    a value error (out of range, a validator's) on the member the input did match is the one
    that says what is wrong, so it goes first."""
    errs = exc.errors()
    values = [e for e in errs if not str(e.get("type", "")).endswith("_type")]
    err = (values or errs)[0]
    loc = [str(p) for p in err.get("loc", ()) if not _is_type_tag(p)]
    field = ".".join(loc) or "body"
    msg = err.get("msg", "invalid value")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    # Our validators say "field: reason"; a whole-body check (loc empty) names its field so.
    named, sep, reason = msg.partition(": ")
    if sep and named.isidentifier() and (field == "body" or field == named):
        return named, reason
    return field, msg


def _is_type_tag(p: object) -> bool:
    # pydantic puts union member names ("str", "list[int]") into error locations.
    return isinstance(p, str) and (p in ("str", "int", "float", "bool") or "[" in p)


# ---- responses ------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    rid: str, model: str, created: int, choices: list[dict], usage_: dict | None, chunk: bool
) -> dict[str, Any]:
    """A /v1/completions response or stream chunk (OpenAI uses one object name for both)."""
    body: dict[str, Any] = {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage_ is not None or not chunk:
        body["usage"] = usage_
    return body


def chat_body(
    rid: str, model: str, created: int, choices: list[dict], usage_: dict | None, chunk: bool
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk" if chunk else "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage_ is not None or not chunk:
        body["usage"] = usage_
    return body


def completion_logprobs(
    tokens: list[str], logprobs: list[float], tops: list[dict[str, float]], offset: int
) -> dict[str, Any]:
    """The legacy completions logprobs object; `offset` is the text length before these tokens."""
    offsets = []
    pos = offset
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def chat_logprob_entry(
    token: tuple[str, bytes], logprob: float, top: list[tuple[tuple[str, bytes], float]]
) -> dict[str, Any]:
    """`token`: (text, raw bytes); `bytes` are the token's own, not its text's re-encoding."""
    return {
        "token": token[0],
        "logprob": logprob,
        "bytes": list(token[1]),
        "top_logprobs": [
            {"token": text, "logprob": lp, "bytes": list(raw)} for (text, raw), lp in top
        ],
    }


def model_card(model_id: str, created: int, max_model_len: int | None, vocab_size: int) -> dict:
    # max_model_len / vocab_size are vLLM-style extras; the openai client ignores them and the
    # load generator uses them to shape synthetic prompts.
    return {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": "fleetlm",
        "root": model_id,
        "max_model_len": max_model_len,
        "vocab_size": vocab_size,
    }
