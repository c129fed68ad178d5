"""The HTTP surface: FastAPI routes around OpenAIServing (OpenAI API, /health, /metrics).

`build_app` is transport glue only; every decision lives in serving.py. Errors leave in the
OpenAI shape with their status (400 names the field, 404 model, 413 body, 429/503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.admin import PREFIX as ADMIN_PREFIX
from orchestrator.api import errors
from orchestrator.api.errors import APIError
from orchestrator.api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    model_card,
    validation_error_field,
)
from orchestrator.api.responses import SSE_DONE, ResponseBuilder, sse_event
from orchestrator.api.serving import OpenAIServing, Prepared, Relay
from orchestrator.metrics.ingress import CONTENT_TYPE, IngressMetrics

logger = logging.getLogger(__name__)

HealthCheck = Callable[[], Awaitable[dict[str, Any]]]
T = TypeVar("T")
CLIENT_GONE = 499  # nginx's "client closed request": counted in metrics, never sent


class ClientGone(Exception):
    """The client disconnected before its response began."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`work`, or ClientGone as soon as the client disconnects. A request that waits in a
    replica's queue (or a non-streamed one while it decodes) has sent the client nothing yet,
    so only the connection's own end can tell that nobody waits for it: cancelling `work`
    then aborts the request on its replica (Relay.close)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watch.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task  # its cleanup (the abort) runs before the handler returns
    raise ClientGone


async def _disconnect(request: Request) -> None:
    # The body is read: the next ASGI message is the disconnect, whenever it comes.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _collect(relay: Relay, builder: ResponseBuilder) -> None:
    async for d in relay:
        builder.add(d)


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"request body exceeds {limit} bytes", "body", "body_too_large")


def parse_request(raw: bytes, model: type[BaseModel]) -> Any:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.invalid("body", f"not valid JSON: {exc}") from exc
    except RecursionError:
        raise errors.invalid("body", "JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise errors.invalid("body", "must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        field, reason = validation_error_field(exc)
        raise errors.invalid(field, reason) from exc


def key_digest(key: str) -> str:
    """What the ingress keeps of an API key: its SHA-256, never the key itself."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def check_api_key(request: Request, digests: frozenset[str]) -> None:
    """401 unless `Authorization: Bearer KEY` carries a configured key (none configured: open)."""
    if not digests:
        return
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    presented = key_digest(key.strip()) if scheme.lower() == "bearer" and key.strip() else ""
    # Compare against every digest in constant time so timing does not tell which one is close.
    if not any(hmac.compare_digest(presented, d) for d in digests):
        raise APIError(401, "missing or invalid API key", code="invalid_api_key")


class Handlers:
    """The route bodies; one instance per ingress replica."""

    def __init__(
        self,
        serving: OpenAIServing,
        metrics: IngressMetrics,
        health_check: HealthCheck,
        max_body_bytes: int,
        api_key_digests: frozenset[str] = frozenset(),
        admin_url: str | None = None,
    ) -> None:
        self.serving = serving
        self.admin_url = admin_url
        self.metrics = metrics
        self.health_check = health_check
        self.max_body_bytes = max_body_bytes
        self.api_key_digests = api_key_digests
        self.started = int(time.time())

    async def generate(self, request: Request, chat: bool) -> Response:
        endpoint = "/v1/chat/completions" if chat else "/v1/completions"
        arrival = time.perf_counter()  # TTFT and E2E count from here, parsing included
        model = ""  # the label: known once the `model` field resolved
        try:
            check_api_key(request, self.api_key_digests)
            raw = await read_body(request, self.max_body_bytes)
            if chat:
                chat_req = parse_request(raw, ChatCompletionRequest)
                await self.serving.ensure_model(chat_req.model)
                prep = self.serving.prepare_chat(chat_req)
            else:
                req = parse_request(raw, CompletionRequest)
                await self.serving.ensure_model(req.model)
                prep = self.serving.prepare_completion(req)
            prep = replace(prep, arrival=arrival)
            model = self._model_label(prep)
            relay = await unless_disconnected(request, self.serving.open(prep))
            first_token = time.perf_counter()
            self.metrics.ttft.observe(first_token - prep.arrival)
            builder = self._builder(prep)
            if prep.stream:
                self.metrics.observe_request(endpoint, 200, model)
                return StreamingResponse(
                    self._sse(relay, builder, prep, first_token),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                )
            await unless_disconnected(request, _collect(relay, builder))
        except ClientGone:
            self.metrics.aborts.inc()
            self.metrics.observe_request(endpoint, CLIENT_GONE, model)
            return Response(status_code=CLIENT_GONE)
        except APIError as exc:
            self.metrics.observe_request(endpoint, exc.status, model)
            return error_response(exc)
        except Exception:
            logger.exception("%s failed", endpoint)
            self.metrics.observe_request(endpoint, 500, model)
            return error_response(APIError(500, "internal error", code="internal_error"))
        self.metrics.observe_request(endpoint, 200, model)
        self._finished(prep, builder, first_token)
        return JSONResponse(builder.final_body())

    def _model_label(self, prep: Prepared) -> str:
        """The adapter the request runs with, else the served model: registered names only."""
        return prep.adapter or self.serving.model.name

    def _finished(self, prep: Prepared, builder: ResponseBuilder, first_token: float) -> None:
        per_choice = max((c.num_tokens for c in builder.choices.values()), default=0)
        self.metrics.observe_finished(
            self._model_label(prep),
            builder.num_prompt_tokens,
            per_choice,
            builder.completion_tokens,
            prep.arrival,
            first_token,
            time.perf_counter(),
        )

    def _builder(self, prep: Prepared) -> ResponseBuilder:
        return ResponseBuilder(
            chat=prep.chat,
            model=prep.model or self.serving.model.name,
            n=prep.params.n,
            num_prompt_tokens=len(prep.prompt_token_ids),
            token_info=self.serving.token_info,
            logprobs=prep.params.logprobs is not None,
            request_id=prep.request_id,
            return_token_ids=prep.return_token_ids,
        )

    async def _sse(
        self, relay: Relay, builder: ResponseBuilder, prep: Prepared, first_token: float
    ) -> AsyncIterator[str]:
        try:
            role = builder.role_chunk()
            if role is not None:
                yield role
            async for d in relay:
                choice = builder.add(d)
                if choice is not None:
                    yield builder.sse([choice], None)
            if prep.include_usage:
                yield builder.usage_chunk()
            self._finished(prep, builder, first_token)
            yield SSE_DONE
        except APIError as exc:
            self.metrics.errors.labels(code=str(exc.status)).inc()
            yield sse_event(exc.body())
            yield SSE_DONE
        except (asyncio.CancelledError, GeneratorExit):
            self.metrics.aborts.inc()
            raise
        except Exception:
            logger.exception("stream of %s failed", prep.request_id)
            self.metrics.errors.labels(code="500").inc()
            yield sse_event(APIError(500, "internal error", code="internal_error").body())
            yield SSE_DONE
        finally:
            relay.close()  # synchronous: releases the slot, aborts what is left on the replica

    async def models(self, request: Request) -> JSONResponse:
        try:
            check_api_key(request, self.api_key_digests)
        except APIError as exc:
            self.metrics.observe_request("/v1/models", exc.status)
            return error_response(exc)
        m = self.serving.model
        cards = [model_card(m.name, self.started, m.max_model_len, m.vocab_size)]
        for name in sorted(self.serving.loaded_adapters()):
            card = model_card(name, self.started, m.max_model_len, m.vocab_size)
            cards.append({**card, "parent": m.name})  # vLLM's shape: root = the adapter
        return JSONResponse({"object": "list", "data": cards})

    async def lora_adapter(self, request: Request, load: bool) -> Response:
        """vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter: relayed to the controller's
        admin API (the one adapter catalog), which checks the caller's admin token."""
        if self.admin_url is None:
            return error_response(APIError(501, "adapter loading is not available here"))
        try:
            body = json.loads(await read_body(request, self.max_body_bytes))
        except APIError as exc:
            return error_response(exc)
        except ValueError:
            return error_response(errors.invalid("body", "must be JSON"))
        name = body.get("lora_name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            return error_response(errors.invalid("lora_name", "must be a non-empty string"))
        auth = {"authorization": request.headers.get("authorization", "")}
        url = f"{self.admin_url}{ADMIN_PREFIX}/adapters"
        try:
            async with httpx.AsyncClient(timeout=120) as client:
                if load:
                    answer = await client.post(url, json=body, headers=auth)
                else:
                    answer = await client.delete(f"{url}/{quote(name, safe='/')}", headers=auth)
        except httpx.HTTPError as exc:
            reason = f"the controller's admin API did not answer ({type(exc).__name__})"
            return error_response(APIError(503, reason, retry_after_s=1))
        return Response(answer.content, answer.status_code, media_type="application/json")

    async def health(self) -> JSONResponse:
        report = await self.health_check()
        return JSONResponse(report, status_code=200 if report.get("ok") else 503)

    async def render_metrics(self) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)


def build_app(handlers: Handlers) -> FastAPI:
    app = FastAPI(title="fleetlm", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # An unknown route (404) or method (405): the OpenAI error shape, not FastAPI's.
        what = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed"}
        return error_response(APIError(exc.status_code, what.get(exc.status_code, exc.detail)))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await handlers.generate(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await handlers.generate(request, chat=True)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        return await handlers.models(request)

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: Request) -> Response:
        return await handlers.lora_adapter(request, load=True)

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: Request) -> Response:
        return await handlers.lora_adapter(request, load=False)

    @app.get("/health")
    async def health() -> Response:
        return await handlers.health()

    @app.get("/metrics")
    async def metrics() -> Response:
        return await handlers.render_metrics()

    return app
