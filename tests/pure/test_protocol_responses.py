"""Response and SSE chunk shapes built from GenerateDelta streams: no torch, no ray."""

from __future__ import annotations

import json

from actors.common.types import GenerateDelta, TokenLogprob
from orchestrator.api.responses import SSE_DONE, ResponseBuilder


def _tok(i: int) -> tuple[str, bytes]:
    return f"<{i}>", f"<{i}>".encode()


def _delta(index: int, ids: tuple[int, ...], text: str, done: bool = False, **kw) -> GenerateDelta:
    return GenerateDelta(
        request_id="r",
        index=index,
        token_ids=ids,
        text=text,
        finished=done,
        finish_reason=kw.pop("reason", "length" if done else None),
        num_prompt_tokens=4,
        **kw,
    )


def _parse(chunk: str) -> dict:
    assert chunk.startswith("data: ") and chunk.endswith("\n\n")
    return json.loads(chunk[6:])


def test_completion_n2_with_logprobs_and_usage() -> None:
    b = ResponseBuilder(
        chat=False, model="m", n=2, num_prompt_tokens=0, token_info=_tok, logprobs=True
    )
    lp = (TokenLogprob(7, -0.5, ((7, -0.5), (8, -1.0))),)
    b.add(_delta(0, (7,), "ab", logprobs=lp))
    b.add(_delta(1, (9,), "x", True, reason="stop", logprobs=(TokenLogprob(9, -0.1),)))
    b.add(_delta(0, (7,), "c", True, logprobs=lp))
    assert b.finished
    body = b.final_body()
    assert body["object"] == "text_completion" and body["model"] == "m"
    c0, c1 = body["choices"]
    assert (c0["text"], c0["finish_reason"], c1["text"], c1["finish_reason"]) == (
        "abc",
        "length",
        "x",
        "stop",
    )
    assert c0["logprobs"]["tokens"] == ["<7>", "<7>"]
    assert c0["logprobs"]["top_logprobs"][0] == {"<7>": -0.5, "<8>": -1.0}
    assert c0["logprobs"]["text_offset"] == [0, 3]
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


def test_chat_stream_chunks() -> None:
    b = ResponseBuilder(
        chat=True, model="m", n=1, num_prompt_tokens=4, token_info=_tok, logprobs=False
    )
    role = _parse(b.role_chunk())
    assert role["object"] == "chat.completion.chunk"
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert b.role_chunk() is None  # once
    first = _parse(b.sse([b.add(_delta(0, (5,), "he"))], None))
    assert first["choices"][0]["delta"] == {"content": "he"}
    assert first["choices"][0]["finish_reason"] is None and "usage" not in first
    last = _parse(b.sse([b.add(_delta(0, (), "", True, reason="abort"))], None))
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "stop"
    usage = _parse(b.usage_chunk())
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 1
    assert b.add(_delta(0, (), "")) is None  # an empty, unfinished delta yields no chunk
    assert b.add(_delta(0, (7,), "")) is None  # nor does a token that is half a character
    assert SSE_DONE == "data: [DONE]\n\n"


def test_chat_final_message_and_logprobs() -> None:
    b = ResponseBuilder(
        chat=True,
        model="m",
        n=1,
        num_prompt_tokens=4,
        token_info=_tok,
        logprobs=True,
        return_token_ids=True,
    )
    b.add(_delta(0, (3,), "hi", True, logprobs=(TokenLogprob(3, -0.2, ((3, -0.2),)),)))
    body = b.final_body()
    choice = body["choices"][0]
    assert body["object"] == "chat.completion"
    assert choice["message"] == {"role": "assistant", "content": "hi"}
    entry = choice["logprobs"]["content"][0]
    assert entry["token"] == "<3>" and entry["top_logprobs"][0]["logprob"] == -0.2
    assert entry["bytes"] == list(b"<3>")
    assert choice["token_ids"] == [3]
