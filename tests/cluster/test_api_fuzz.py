"""Bad input through the real HTTP API, generated with hypothesis: bodies built from the
OpenAI field names with values of every JSON kind (wrong types, huge and negative numbers,
unicode edge cases, nesting, unknown fields). Every answer is a 2xx or a 4xx in the OpenAI error
shape naming a field, never a 5xx, and the server keeps serving afterwards."""

from __future__ import annotations

import json

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .test_api import AUTH, _post, stack  # noqa: F401 (the module's stack fixture)

FIELDS = [
    "model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature",
    "top_p", "n", "stream", "stream_options", "stop", "seed", "presence_penalty",
    "frequency_penalty", "user", "top_k", "min_p", "repetition_penalty", "ignore_eos",
    "stop_token_ids", "include_stop_str_in_output", "priority", "logprobs", "top_logprobs",
    "echo", "tools", "response_format", "return_token_ids", "unknown_field",
]  # fmt: skip
TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=20)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=12,
)
BODIES = st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=8).map(
    lambda d: {"model": "fleetlm/tiny-llama", "prompt": [5, 6], **d}
)


def _raw(body: dict) -> bytes:
    # Lone surrogates are valid JSON escapes; json.dumps writes them escaped, as clients do.
    return json.dumps(body, ensure_ascii=True).encode()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=BODIES, chat=st.booleans())
def test_any_body_is_answered_without_a_5xx(stack: object, body: dict, chat: bool) -> None:  # noqa: F811
    # Keep the valid ones short (out-of-range values stay: they must be refused).
    body.setdefault("max_tokens", 2)
    for field, most in (("max_tokens", 4), ("max_completion_tokens", 4), ("n", 2)):
        value = body.get(field)
        if type(value) is int and most < value < 2**31:
            body[field] = most
    path = "/v1/chat/completions" if chat else "/v1/completions"
    r = _post(stack, path, _raw(body))
    assert r.status_code < 500, (r.status_code, r.text, body)
    if r.status_code >= 400:
        error = r.json()["error"]
        assert error["message"] and error["type"], r.text


def test_still_serving_after_the_fuzz(stack: object) -> None:  # noqa: F811
    body = {"model": "fleetlm/tiny-llama", "prompt": [5, 6, 7], "max_tokens": 3}
    r = httpx.post(f"{stack.base_url}/v1/completions", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
