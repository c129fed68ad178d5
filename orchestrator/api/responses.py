"""Turn a request's GenerateDelta stream into OpenAI bodies: whole responses and SSE chunks.

One `ResponseBuilder` per HTTP request; the completion and chat shapes differ only in how a
choice's text and logprobs are wrapped, so both live here side by side.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from actors.common.types import GenerateDelta, TokenLogprob
from orchestrator.api import protocol

TokenInfo = Callable[[int], tuple[str, bytes]]  # token id -> its text and raw bytes (logprobs)


@dataclass
class ChoiceState:
    """What one choice has produced so far."""

    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    num_tokens: int = 0
    finish_reason: str | None = None
    text_len: int = 0  # characters already emitted (legacy logprobs text_offset)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    wants_logprobs: bool = False

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


def _finish_reason(reason: str | None) -> str | None:
    # OpenAI knows stop | length; an aborted or failed choice is reported as stop so clients
    # that validate the enum keep working (errors themselves travel as error events).
    if reason in (None, "stop", "length"):
        return reason
    return "stop"


@dataclass
class ResponseBuilder:
    chat: bool
    model: str
    n: int
    num_prompt_tokens: int
    token_info: TokenInfo
    logprobs: bool
    request_id: str = ""
    return_token_ids: bool = False
    created: int = field(default_factory=protocol.now)
    choices: dict[int, ChoiceState] = field(default_factory=dict)
    sent_role: bool = False

    def __post_init__(self) -> None:
        if not self.request_id:
            self.request_id = protocol.new_id("chatcmpl" if self.chat else "cmpl")
        self.choices = {i: ChoiceState(wants_logprobs=self.logprobs) for i in range(self.n)}

    @property
    def finished(self) -> bool:
        return all(c.finished for c in self.choices.values())

    @property
    def completion_tokens(self) -> int:
        return sum(c.num_tokens for c in self.choices.values())

    def usage(self) -> dict[str, int]:
        return protocol.usage(self.num_prompt_tokens, self.completion_tokens)

    def add(self, d: GenerateDelta) -> dict[str, Any] | None:
        """Record a delta; returns its choice entry for a stream chunk (None if nothing new)."""
        c = self.choices[d.index]
        if d.num_prompt_tokens:
            self.num_prompt_tokens = d.num_prompt_tokens
        c.num_tokens = max(c.num_tokens + len(d.token_ids), d.num_output_tokens)
        c.token_ids.extend(d.token_ids)
        lps = list(d.logprobs or ())
        if c.wants_logprobs:
            c.logprobs.extend(lps)
        if d.finished:
            c.finish_reason = _finish_reason(d.finish_reason) or "stop"
        # A token that ends mid-character has no text yet: send nothing unless the client
        # asked for per-token data (logprobs, token ids) or the choice just finished.
        per_token = (c.wants_logprobs and lps) or (self.return_token_ids and d.token_ids)
        if not d.text and not d.finished and not per_token:
            return None
        offset = c.text_len
        c.text.append(d.text)
        c.text_len += len(d.text)
        choice = self._choice(d.index, d.text, lps if c.wants_logprobs else None, offset, c, True)
        if self.return_token_ids:
            choice["token_ids"] = list(d.token_ids)
        return choice

    def _choice(
        self,
        index: int,
        text: str,
        lps: list[TokenLogprob] | None,
        offset: int,
        c: ChoiceState,
        chunk: bool,
    ) -> dict[str, Any]:
        finish = c.finish_reason if (c.finished or not chunk) else None
        logprobs = None if lps is None else self._logprobs(lps, offset)
        if not self.chat:
            return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        key = "delta" if chunk else "message"
        content: dict[str, Any] = {"content": text} if (text or not chunk) else {}
        if not chunk:
            content = {"role": "assistant", "content": text}
        return {"index": index, key: content, "logprobs": logprobs, "finish_reason": finish}

    def _logprobs(self, lps: list[TokenLogprob], offset: int) -> dict[str, Any]:
        info = self.token_info
        if self.chat:
            return {
                "content": [
                    protocol.chat_logprob_entry(
                        info(lp.token_id), lp.logprob, [(info(t), v) for t, v in lp.top]
                    )
                    for lp in lps
                ]
            }
        tokens = [info(lp.token_id)[0] for lp in lps]
        tops = [{info(t)[0]: v for t, v in lp.top} for lp in lps]
        return protocol.completion_logprobs(tokens, [lp.logprob for lp in lps], tops, offset)

    # ---- whole response -------------------------------------------------------------------

    def final_body(self) -> dict[str, Any]:
        choices = []
        for i, c in sorted(self.choices.items()):
            lps = c.logprobs if c.wants_logprobs else None
            choice = self._choice(i, "".join(c.text), lps, 0, c, False)
            if self.return_token_ids:
                choice["token_ids"] = list(c.token_ids)
            choices.append(choice)
        make = protocol.chat_body if self.chat else protocol.completion_body
        return make(self.request_id, self.model, self.created, choices, self.usage(), False)

    # ---- stream ---------------------------------------------------------------------------

    def role_chunk(self) -> str | None:
        """Chat streams open each choice with the assistant role (as OpenAI does)."""
        if not self.chat or self.sent_role:
            return None
        self.sent_role = True
        choices = [
            {
                "index": i,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
            for i in range(self.n)
        ]
        return self.sse(choices, None)

    def sse(self, choices: list[dict[str, Any]], usage: dict[str, int] | None) -> str:
        make = protocol.chat_body if self.chat else protocol.completion_body
        body = make(self.request_id, self.model, self.created, choices, usage, True)
        return sse_event(body)

    def usage_chunk(self) -> str:
        return self.sse([], self.usage())


def sse_event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"
