"""Malformed requests found by trying the API as a new user (issue 13): each is a 400 naming
the field, never a 500. Parsed exactly as the ingress parses them (app.parse_request)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from actors.common.sampling_params import SamplingParams
from orchestrator.api.app import build_app, parse_request
from orchestrator.api.errors import APIError
from orchestrator.api.protocol import ChatCompletionRequest, CompletionRequest
from orchestrator.api.serving import RequestLimits

BASE = {"model": "m", "prompt": "hi"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def refused(raw: bytes, model: type = CompletionRequest) -> APIError:
    with pytest.raises(APIError) as info:
        parse_request(raw, model)
    assert info.value.status == 400, info.value
    return info.value


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**BASE, "seed": 2**70}, "seed"),
        ({**BASE, "max_tokens": 2**40}, "max_tokens"),
        ({**BASE, "n": 1000}, "n"),
        ({**BASE, "n": 0}, "n"),
        ({**BASE, "max_tokens": "5"}, "max_tokens"),
        ({**BASE, "stream": "yes"}, "stream"),
        ({**BASE, "temperature": "0.5"}, "temperature"),
        ({**BASE, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({**BASE, "response_format": {"type": "json_object"}}, "response_format"),
        ({**BASE, "logit_bias": {"5": 100}}, "logit_bias"),
        ({**BASE, "stop_token_ids": [2**40]}, "stop_token_ids.0"),
        ({**BASE, "prompt": [5, 2**40]}, "prompt.1"),
        ({**BASE, "logprobs": 50}, "logprobs"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_completion_field_errors_name_the_field(body: dict, field: str) -> None:
    err = refused(json.dumps(body).encode())
    assert err.param == field, err.message
    assert err.message.startswith(f"{field}: ")


def test_chat_top_logprobs_over_the_limit_names_top_logprobs() -> None:
    body = {**CHAT, "logprobs": True, "top_logprobs": 50}
    assert refused(json.dumps(body).encode(), ChatCompletionRequest).param == "top_logprobs"


def test_a_lone_surrogate_is_a_400_naming_the_field() -> None:
    raw = b'{"model": "m", "prompt": "\\ud800x"}'  # valid JSON, not valid Unicode text
    assert refused(raw).param == "prompt"
    assert refused(b'{"model": "m", "prompt": "a", "stop": ["\\udfff"]}').param == "stop"
    chat = b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}'
    with pytest.raises(ValueError, match="messages: must be valid Unicode"):
        parse_request(chat, ChatCompletionRequest).template_messages()


def test_json_nested_100k_deep_is_a_400() -> None:
    raw = b'{"model": "m", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    err = refused(raw)
    assert err.param == "body" and "nested too deeply" in err.message


def test_supported_values_of_refused_fields_pass() -> None:
    body = {**BASE, "response_format": {"type": "text"}, "tools": [], "best_of": 1, "n": 128}
    assert parse_request(json.dumps(body).encode(), CompletionRequest).n == 128


def test_unknown_routes_and_methods_answer_in_the_openai_shape() -> None:
    # build_app only calls its handlers from the routes it defines: none runs here.
    client = TestClient(build_app(handlers=None))  # type: ignore[arg-type]
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["message"] == "no route /v1/nothing"
    r = client.get("/v1/completions")
    assert r.status_code == 405 and r.json()["error"]["type"]
    assert "detail" not in r.json()


class _Touch:
    """Unpickling this would create `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("model", [CompletionRequest, ChatCompletionRequest])
def test_a_pickle_body_is_a_400_and_never_unpickled(model: type, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    err = refused(pickle.dumps(_Touch(marker)), model)
    assert err.param == "body", err.message
    assert not marker.exists()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (SamplingParams(n=9), "n"),
        (SamplingParams(stop=tuple("abcde")), "stop"),
        (SamplingParams(stop_token_ids=(1, 2, 3, 4, 5)), "stop_token_ids"),
    ],
)
def test_request_limits_from_the_deployment_name_the_field(
    params: SamplingParams, field: str
) -> None:
    limits = RequestLimits(max_n=8, max_stop=4)
    with pytest.raises(APIError) as info:
        limits.check(params)
    assert info.value.status == 400 and info.value.param == field
    assert "server." in info.value.message  # says which setting bounds it
    limits.check(SamplingParams(n=8, stop=tuple("abcd"), stop_token_ids=(1, 2, 3, 4)))
