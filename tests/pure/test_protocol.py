"""OpenAI request parsing, error mapping and metrics text: no torch, no ray."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from actors.common.errors import ErrorKind, ReplicaError
from orchestrator.api import errors
from orchestrator.api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    completion_logprobs,
    validation_error_field,
)
from orchestrator.metrics.ingress import IngressMetrics


def _field_of(cls: type, body: dict) -> tuple[str, str]:
    with pytest.raises(ValidationError) as info:
        cls.model_validate(body)
    return validation_error_field(info.value)


def test_completion_fields_map_to_sampling_params() -> None:
    req = CompletionRequest.model_validate(
        {
            "model": "m",
            "prompt": "hi",
            "max_tokens": 7,
            "temperature": 0,
            "top_p": 0.5,
            "n": 2,
            "stop": "x",
            "seed": 3,
            "logprobs": 2,
            "presence_penalty": 0.1,
            "frequency_penalty": 0.2,
            "top_k": 4,
            "min_p": 0.05,
            "repetition_penalty": 1.1,
            "ignore_eos": True,
            "metadata": {"team": "x"},  # unknown and harmless: ignored, as OpenAI does
        }
    )
    p = req.to_sampling_params()
    assert (p.n, p.max_tokens, p.temperature, p.top_p, p.top_k) == (2, 7, 0.0, 0.5, 4)
    assert (p.stop, p.seed, p.logprobs, p.ignore_eos) == (("x",), 3, 2, True)
    assert (p.presence_penalty, p.frequency_penalty, p.min_p) == (0.1, 0.2, 0.05)
    assert p.repetition_penalty == 1.1
    assert req.single_prompt() == "hi"
    assert CompletionRequest(model="m", prompt="a").to_sampling_params().max_tokens == 16


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("abc", "abc"), ([1, 2, 3], [1, 2, 3]), (["abc"], "abc"), ([[4, 5]], [4, 5])],
)
def test_prompt_forms(prompt: object, expected: object) -> None:
    assert CompletionRequest(model="m", prompt=prompt).single_prompt() == expected


@pytest.mark.parametrize("prompt", ["", [], ["a", "b"], [[1], [2]]])
def test_bad_prompts_name_the_field(prompt: object) -> None:
    with pytest.raises(ValueError, match="^prompt: "):
        CompletionRequest(model="m", prompt=prompt).single_prompt()


def test_validation_errors_name_the_field() -> None:
    assert _field_of(CompletionRequest, {"model": "m", "prompt": "x", "n": "many"})[0] == "n"
    assert _field_of(CompletionRequest, {"prompt": "x"})[0] == "model"
    assert _field_of(CompletionRequest, {"model": "m", "prompt": 5})[0] == "prompt"
    field, reason = _field_of(
        CompletionRequest,
        {"model": "m", "prompt": "x", "stream_options": {"include_usage": True}},
    )
    assert field == "stream_options" and "stream" in reason
    field, _ = _field_of(ChatCompletionRequest, {"model": "m", "messages": []})
    assert field == "messages"
    field, _ = _field_of(
        ChatCompletionRequest, {"model": "m", "messages": [{"role": "wizard", "content": "x"}]}
    )
    assert field.startswith("messages.0.role")


def test_chat_logprobs_and_max_tokens() -> None:
    msgs = [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}]
    req = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": msgs, "logprobs": True, "top_logprobs": 3, "max_tokens": 9}
    )
    p = req.to_sampling_params(default_max_tokens=100)
    assert (p.logprobs, p.max_tokens) == (3, 9)
    assert req.template_messages()[0] == {"role": "system", "content": "be brief"}
    req = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": msgs, "max_completion_tokens": 5, "max_tokens": 9}
    )
    assert req.to_sampling_params(default_max_tokens=100).max_tokens == 5
    assert req.to_sampling_params(100).logprobs is None
    req = ChatCompletionRequest.model_validate({"model": "m", "messages": msgs})
    assert req.to_sampling_params(default_max_tokens=100).max_tokens == 100
    bad = ChatCompletionRequest.model_validate({"model": "m", "messages": msgs, "top_logprobs": 2})
    with pytest.raises(ValueError, match="^top_logprobs: "):
        bad.to_sampling_params(10)


def test_chat_content_parts() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    req = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": parts}]}
    )
    assert req.template_messages() == [{"role": "user", "content": "ab"}]
    img = [{"type": "image_url", "image_url": {"url": "x"}}]
    req = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": img}]}
    )
    with pytest.raises(ValueError, match="^messages: "):
        req.template_messages()


def test_error_mapping() -> None:
    e = errors.from_replica_error(
        ReplicaError.from_value_error(ValueError("temperature: must be >= 0, got -1.0"))
    )
    assert (e.status, e.param, e.message) == (
        400,
        "temperature",
        "temperature: must be >= 0, got -1.0",
    )
    body = e.body()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert body["type"] == "invalid_request_error"
    busy = errors.from_replica_error(ReplicaError(ErrorKind.OVERLOADED, "queue full"))
    assert busy.status == 429 and busy.headers() == {"Retry-After": "1"}
    assert errors.from_replica_error(ReplicaError.internal(RuntimeError("boom"))).status == 500
    # Every kind but NONE has a status, and each status has an error type.
    for kind in ErrorKind:
        if kind is not ErrorKind.NONE:
            err = errors.from_replica_error(ReplicaError(kind, "x", "f"))
            assert err.status == errors.STATUS_OF[kind] and err.type != "api_error"
    v = errors.from_value_error(ValueError("max_tokens: must be >= 1, got 0"))
    assert (v.status, v.param) == (400, "max_tokens")
    assert errors.no_replica().status == 503 and "Retry-After" in errors.no_replica().headers()
    busy_all = errors.no_replica("all healthy replicas are full", overloaded=True)
    assert busy_all.status == 429 and busy_all.headers() == {"Retry-After": "1"}


def test_completion_logprobs_offsets() -> None:
    lp = completion_logprobs(["ab", "c"], [-0.1, -0.2], [{"ab": -0.1}, {"c": -0.2}], offset=3)
    assert lp["text_offset"] == [3, 5]


def test_metrics_render_prometheus_text() -> None:
    m = IngressMetrics("ing-1")
    m.observe_request("/v1/completions", 200, "base")
    m.observe_request("/v1/completions", 400)
    m.observe_tokens(5, 7, "sql")
    m.ttft.observe(0.02)
    text = m.render().decode()
    assert (
        'fleetlm_requests_total{endpoint="/v1/completions",ingress="ing-1",model="",status="400"}'
        " 1.0" in text
    )
    assert 'fleetlm_requests_total{endpoint="/v1/completions",ingress="ing-1",model="base"' in text
    assert 'fleetlm_errors_total{code="400",ingress="ing-1"} 1.0' in text
    assert 'fleetlm_generation_tokens_total{ingress="ing-1",model="sql"} 7.0' in text
    assert 'fleetlm_time_to_first_token_seconds_bucket{ingress="ing-1",le="0.025"} 1.0' in text
    # Two instances do not share counters; each has its own identity.
    other = IngressMetrics().render().decode()
    assert "fleetlm_requests_total{" not in other and 'ingress="ing-1"' not in other


def test_metrics_tpot_is_the_time_after_the_first_token_per_later_token() -> None:
    m = IngressMetrics("i")
    # 5 tokens of one choice: 1 s after the first token over 4 later tokens = 0.25 s each.
    m.observe_finished("base", 3, 5, 10, arrival=10.0, first_token=10.5, now=11.5)
    m.observe_finished("base", 3, 1, 1, arrival=0.0, first_token=0.1, now=0.1)  # one token: none
    m.route.observe(2e-5)
    text = m.render().decode()
    assert 'fleetlm_time_per_output_token_seconds_count{ingress="i"} 1.0' in text
    assert 'fleetlm_time_per_output_token_seconds_sum{ingress="i"} 0.25' in text
    assert 'fleetlm_e2e_request_latency_seconds_count{ingress="i"} 2.0' in text
    assert 'fleetlm_prompt_tokens_total{ingress="i",model="base"} 6.0' in text
    assert 'fleetlm_route_decision_seconds_bucket{ingress="i",le="2.5e-05"} 1.0' in text


def test_protocol_modules_import_no_torch_or_ray() -> None:
    # A fresh interpreter: other tests in the same process may have imported anything.
    code = (
        "import sys, orchestrator.api.protocol, orchestrator.api.responses, "
        "orchestrator.api.errors, orchestrator.metrics.ingress, orchestrator.cli.loadgen; "
        "bad = {'torch', 'ray', 'grpc'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
