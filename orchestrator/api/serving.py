"""The ingress's request path: validate -> tokenize -> route -> Generate on a replica -> relay.

`OpenAIServing` is transport-free (app.py puts HTTP around it): it turns a parsed OpenAI request
into a `Prepared` request, then `open()` routes it and returns a `Relay`, an async iterator of the
request's deltas that owns the dispatch slot and aborts the request on its replica when it is
closed early (client disconnect, error). A replica that dies mid-request is replaced: the request
is routed again and resumes after the tokens the client already has. With n > 1 choices, each
unfinished choice resumes as a request of its own (one resume list per choice), merged back.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from actors.common.config import GrpcSecurity
from actors.common.errors import ErrorKind, ReplicaError
from actors.common.replica_client import ReplicaClient, ReplicaUnavailable
from actors.common.sampling_params import SamplingParams
from actors.common.tokenizer import Tokenizer
from actors.common.types import GenerateDelta, GenerateSpec, ModelInfo
from orchestrator.api import errors
from orchestrator.api.errors import APIError
from orchestrator.api.protocol import ChatCompletionRequest, CompletionRequest
from policies.cluster_view import ClusterView, RequestMeta
from policies.prefix import block_hashes

logger = logging.getLogger(__name__)

MAX_REDISPATCH = 2  # replicas that may die under one request before it fails
# After a replica dies, the views may list it as healthy until its reports are missed: wait this
# long for a route to another replica, re-asking every REROUTE_POLL_S.
REROUTE_WAIT_S = 10.0
REROUTE_POLL_S = 0.1


class RouteLike(Protocol):
    replica_id: str
    address: str


class OutcomeLike(Protocol):
    result: RouteLike | None
    reason: str
    overloaded: bool


class RouterLike(Protocol):
    """orchestrator.controller.router.Router's routing surface."""

    async def decide(self, meta: RequestMeta) -> OutcomeLike: ...

    def release(self, replica_id: str) -> None: ...

    def replica_id_at(self, address: str) -> str | None: ...

    @property
    def view(self) -> ClusterView | None: ...


@dataclass(frozen=True)
class ServedModel:
    """What the ingress knows about the model: its name, tokenizer and limits, all as a replica
    described them (Replica.DescribeModel), so the ingress admits exactly what engines admit."""

    name: str
    tokenizer: Tokenizer
    max_model_len: int
    vocab_size: int
    block_size: int

    @classmethod
    def from_info(cls, name: str, info: ModelInfo) -> ServedModel:
        return cls(
            name=name,
            tokenizer=Tokenizer.from_files(info.tokenizer_files, name=info.model),
            max_model_len=info.max_model_len,
            vocab_size=info.vocab_size,
            block_size=info.block_size,
        )


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask for beyond the model's own limits (server.* in the YAML)."""

    max_n: int = 128  # choices per request
    max_stop: int = 16  # stop strings, and separately stop_token_ids

    def check(self, params: SamplingParams) -> None:
        """A 400 naming the field that asks for more than the deployment allows."""
        asked = (("n", params.n, self.max_n, "server.max_n"),
                 ("stop", len(params.stop), self.max_stop, "server.max_stop_sequences"),
                 ("stop_token_ids", len(params.stop_token_ids), self.max_stop,
                  "server.max_stop_sequences"))  # fmt: skip
        for name, value, bound, key in asked:
            if value > bound:
                raise errors.invalid(name, f"at most {bound} ({key}), got {value}")


@dataclass(frozen=True)
class Prepared:
    """A validated, tokenized request, ready to route."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    params: SamplingParams
    priority: int
    stream: bool
    include_usage: bool
    chat: bool
    return_token_ids: bool = False
    adapter: str | None = None  # the LoRA adapter the `model` field named
    model: str = ""  # the `model` field as the client sent it (echoed in responses)
    arrival: float = field(default_factory=time.perf_counter)


class ReplicaPool:
    """One ReplicaClient (one channel, one multiplexed stream) per replica address."""

    def __init__(self, security: GrpcSecurity | None = None) -> None:
        self._security = security
        self._clients: dict[str, ReplicaClient] = {}

    def get(self, address: str) -> ReplicaClient:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = ReplicaClient(address, self._security)
        return client

    def drop(self, address: str) -> ReplicaClient | None:
        """Forget a replica whose stream broke; the next request to it reconnects afresh."""
        return self._clients.pop(address, None)

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            await c.close()


# Asks the controller to serve an adapter nobody serves yet: None when served, else why not.
AdapterResolver = Callable[[str], Awaitable[str | None]]
# Told how long each routing decision took, in seconds (the ingress's route histogram).
RouteTimer = Callable[[float], None]
ADAPTER_VIEW_WAIT_S = 10.0  # after a resolve, until the replicas' reports show the adapter


class OpenAIServing:
    def __init__(
        self,
        model: ServedModel,
        router: RouterLike,
        pool: ReplicaPool,
        resolver: AdapterResolver | None = None,
        on_route: RouteTimer | None = None,
        limits: RequestLimits | None = None,
    ) -> None:
        self.model = model
        self.limits = limits or RequestLimits()
        self.router = router
        self.pool = pool
        self._resolver = resolver
        self._on_route = on_route
        self._background: set[asyncio.Task] = set()  # fire-and-forget aborts, kept alive here
        self._token_info: dict[int, tuple[str, bytes]] = {}  # logprobs' view of each token

    # ---- validation and tokenization -------------------------------------------------------

    def loaded_adapters(self) -> frozenset[str]:
        """The LoRA adapters some ready replica serves (as their load reports say)."""
        view = self.router.view
        if view is None:
            return frozenset()
        return frozenset().union(*(r.adapters_loaded for r in view.replicas if r.healthy))

    async def ensure_model(self, name: str) -> None:
        """Before a request is prepared: an adapter nobody serves yet is asked of the controller
        (its adapters.resolve_dir); the first request waits until the replicas serve it."""
        base, sep, adapter = name.partition(":")
        if name == self.model.name or (sep and base != self.model.name):
            return
        wanted = adapter if sep else name
        if self._resolver is None or wanted in self.loaded_adapters():
            return
        reason = await self._resolver(wanted)
        if reason:
            raise APIError(404, f"model {name!r}: {reason}", "model", "model_not_found")
        if reason is not None:
            return  # nothing to resolve from: resolve_model answers the usual 404
        deadline = time.monotonic() + ADAPTER_VIEW_WAIT_S
        while wanted not in self.loaded_adapters() and time.monotonic() < deadline:
            await asyncio.sleep(REROUTE_POLL_S)  # the replicas' next reports carry it

    def resolve_model(self, name: str) -> str | None:
        """The adapter `model` names (None: the base model): BASE, BASE:ADAPTER or ADAPTER."""
        if name == self.model.name:
            return None
        loaded = self.loaded_adapters()
        base, sep, adapter = name.partition(":")
        if sep and base == self.model.name:
            if adapter in loaded:
                return adapter
            raise APIError(
                404,
                f"model {name!r}: adapter {adapter!r} is not loaded",
                "model",
                "model_not_found",
            )
        if name in loaded:
            return name
        raise APIError(
            404,
            f"model {name!r} not found; this server serves {self.model.name!r}",
            "model",
            "model_not_found",
        )

    def prepare_completion(self, req: CompletionRequest) -> Prepared:
        adapter = self.resolve_model(req.model)
        try:
            prompt = req.single_prompt()
            ids = self._encode(prompt)
            params = req.to_sampling_params()
        except ValueError as exc:
            raise errors.from_value_error(exc) from exc
        return self._prepared(req, ids, params, chat=False, adapter=adapter)

    def prepare_chat(self, req: ChatCompletionRequest) -> Prepared:
        adapter = self.resolve_model(req.model)
        tok = self.model.tokenizer
        try:
            text = tok.apply_chat_template(
                req.template_messages(), add_generation_prompt=req.add_generation_prompt
            )
            # The template writes the special tokens itself (BOS included).
            ids = tok.encode(text, add_special_tokens=False)
            room = self.model.max_model_len - len(ids)
            params = req.to_sampling_params(default_max_tokens=max(1, room))
        except ValueError as exc:
            raise errors.from_value_error(exc) from exc
        return self._prepared(req, ids, params, chat=True, adapter=adapter)

    def _encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.model.tokenizer.encode(prompt)
        vocab = self.model.vocab_size
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt: token ids {bad[:5]} are outside the vocabulary (0..{vocab})")
        return prompt

    def _prepared(
        self,
        req: CompletionRequest | ChatCompletionRequest,
        ids: list[int],
        params: SamplingParams,
        chat: bool,
        adapter: str | None = None,
    ) -> Prepared:
        try:
            params.validate(self.model.vocab_size)
        except ValueError as exc:
            raise errors.from_value_error(exc) from exc
        self.limits.check(params)
        limit = self.model.max_model_len
        if len(ids) >= limit:
            raise errors.invalid(
                "messages" if chat else "prompt",
                f"{len(ids)} tokens do not fit the model's context of {limit} tokens",
            )
        if len(ids) + params.max_tokens > limit:
            name = "max_completion_tokens" if chat else "max_tokens"
            raise errors.invalid(
                name,
                f"prompt ({len(ids)} tokens) + {params.max_tokens} exceeds the context "
                f"length {limit}",
            )
        return Prepared(
            request_id=f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            prompt_token_ids=tuple(ids),
            params=params,
            priority=req.priority,
            stream=req.stream,
            include_usage=req.include_usage,
            chat=chat,
            return_token_ids=req.return_token_ids,
            adapter=adapter,
            model=req.model,
        )

    def token_info(self, token_id: int) -> tuple[str, bytes]:
        """A token as logprobs show it: its text and raw bytes. Bytes that are not UTF-8 on
        their own (part of a character) show as "bytes:\\xe2..." (as vLLM does), so distinct
        tokens never share a text and none reads as U+FFFD."""
        info = self._token_info.get(token_id)
        if info is None:
            raw = self.model.tokenizer.token_bytes(token_id)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
            info = self._token_info[token_id] = (text, raw)
        return info

    # ---- dispatch --------------------------------------------------------------------------

    async def open(self, prep: Prepared) -> Relay:
        """Route the request and wait for its first delta, so errors still become statuses."""
        relay = Relay(self, prep)
        await relay.start()
        return relay

    async def _route(self, prep: Prepared, avoid: frozenset[str] = frozenset()) -> RouteLike:
        """A replica for `prep`, never one in `avoid` (replicas that died under it). A request
        re-dispatched after a replica died (`avoid` set) was accepted: it waits up to
        REROUTE_WAIT_S for a replica rather than failing while the views catch up (the survivor
        can miss a report while the replacement starts); a new request gets its 503 at once."""
        deadline = time.monotonic() + REROUTE_WAIT_S
        while True:
            route = await self._route_once(prep, wait=bool(avoid))
            if route is not None and route.replica_id not in avoid:
                return route
            if route is not None:
                self.router.release(route.replica_id)
            if time.monotonic() > deadline:
                raise errors.no_replica(
                    f"none but replicas that failed this request within {REROUTE_WAIT_S:g}s"
                )
            await asyncio.sleep(REROUTE_POLL_S)  # back off until the view drops the dead one

    async def _route_once(self, prep: Prepared, wait: bool = False) -> RouteLike | None:
        """The router's pick; None when none is free and `wait` (else the 503/429)."""
        started = time.perf_counter()  # the prefix hashes are part of the routing cost
        meta = RequestMeta(
            request_id=prep.request_id,
            num_prompt_tokens=len(prep.prompt_token_ids),
            max_tokens=prep.params.max_tokens,
            priority=prep.priority,
            prefix_hashes=tuple(
                block_hashes(prep.prompt_token_ids, self.model.block_size, prep.adapter)
            ),
            adapter_id=prep.adapter,
        )
        outcome = await self.router.decide(meta)
        if self._on_route is not None:
            self._on_route(time.perf_counter() - started)
        if outcome.result is None and not wait:
            raise errors.no_replica(outcome.reason, outcome.overloaded)
        return outcome.result

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` detached; used for cleanup that must survive a cancelled handler."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


@dataclass(frozen=True)
class _Followed:
    """Where a migrated request went (the router never dispatched it there)."""

    replica_id: str
    address: str


class Relay:
    """A request's deltas across (re-)dispatches; close() releases and aborts what is left."""

    def __init__(self, serving: OpenAIServing, prep: Prepared) -> None:
        self._serving = serving
        self._prep = prep
        self._route: RouteLike | None = None
        self._counted = False  # the router counts this request on _route (release it once)
        self._gen: AsyncIterator[GenerateDelta] | None = None
        self._first: GenerateDelta | None = None
        self._sent: dict[int, list[int]] = {}  # choice -> tokens already relayed
        self._done: set[int] = set()  # choices that finished
        self._failed: set[str] = set()  # replicas that died under (or refused) this request
        self._lost = 0  # replicas that died under it
        self.closed = False

    async def start(self) -> None:
        try:
            await self._dispatch()
            self._first = await self._next()
        except BaseException:
            self.close()
            raise

    async def _dispatch(self) -> None:
        prep = self._prep
        self._route = await self._serving._route(prep, frozenset(self._failed))
        self._counted = True
        resume = tuple(self._sent.get(0, ()))
        spec = GenerateSpec(
            request_id=prep.request_id,
            prompt_token_ids=prep.prompt_token_ids,
            sampling=prep.params,
            priority=prep.priority,
            resume_token_ids=resume,
            adapter_id=prep.adapter,
        )
        client = self._serving.pool.get(self._route.address)
        self._gen = client.generate(spec).__aiter__()

    async def _next(self) -> GenerateDelta:
        while True:
            assert self._gen is not None
            try:
                d = await self._gen.__anext__()
            except ReplicaUnavailable as exc:
                await self._redispatch(exc)
                continue
            if d.migrated_to is not None:
                self._follow(d.migrated_to)  # every delta it made there came before this one
                continue
            if d.error is not None:
                if d.error.kind is ErrorKind.UNAVAILABLE and not self._sent:
                    await self._reroute(d.error)  # cordoned: nothing generated, go elsewhere
                    continue
                raise errors.from_replica_error(d.error)
            self._sent.setdefault(d.index, []).extend(d.token_ids)
            if d.finished:
                self._done.add(d.index)
            return d

    def _follow(self, address: str) -> None:
        """The request migrated: its stream goes on at `address`, from the very next token."""
        logger.info("request %s: migrated to %s; following it", self._prep.request_id, address)
        self._release()
        replica_id = self._serving.router.replica_id_at(address) or address
        self._route = _Followed(replica_id, address)
        client = self._serving.pool.get(address)
        self._gen = client.attach(self._prep.request_id).__aiter__()

    async def _reroute(self, refusal: ReplicaError) -> None:
        """The replica refused to take the request (cordoned): route it to another one."""
        logger.info("request %s: %s; routing it elsewhere", self._prep.request_id, refusal)
        if self._route is not None:
            self._failed.add(self._route.replica_id)
        self._release()
        await self._dispatch()

    async def _redispatch(self, exc: ReplicaUnavailable) -> None:
        if self._lost >= MAX_REDISPATCH:
            raise APIError(503, f"replica lost mid-request: {exc}", retry_after_s=1) from exc
        logger.warning("request %s: %s; re-dispatching", self._prep.request_id, exc)
        self._lost += 1
        if self._route is not None:
            self._failed.add(self._route.replica_id)
            dead = self._serving.pool.drop(self._route.address)
            if dead is not None:
                self._serving.spawn(dead.close())
        self._release()
        if self._prep.params.n == 1:
            await self._dispatch()
            return
        n = self._prep.params.n
        left = {i: self._choice_relay(i) for i in range(n) if i not in self._done}
        self._gen = _merge(self._prep.request_id, left)

    def _choice_relay(self, index: int) -> Relay:
        """Choice `index` of this n > 1 request as an n = 1 request that resumes after the
        tokens it already sent (seeded as the choice was: seed + index)."""
        prep, params = self._prep, self._prep.params
        seed = params.seed + index if params.seed is not None else None
        one = replace(params, n=1, seed=seed)
        child = Relay(
            self._serving, replace(prep, request_id=f"{prep.request_id}.{index}", params=one)
        )
        child._sent = {0: list(self._sent.get(index, ()))}
        child._failed, child._lost = set(self._failed), self._lost
        return child

    @property
    def _left(self) -> int:
        """Choices not finished yet."""
        return self._prep.params.n - len(self._done)

    def __aiter__(self) -> Relay:
        return self

    async def __anext__(self) -> GenerateDelta:
        if self._first is not None:
            d, self._first = self._first, None
            return d
        if self._left <= 0 or self.closed:
            await self._drain_finished()
            self.close()
            raise StopAsyncIteration
        try:
            return await self._next()
        except BaseException:
            self.close()
            raise

    async def _drain_finished(self) -> None:
        """Let the client's stream end by itself (it unsubscribes, and sends no abort)."""
        gen, self._gen = self._gen, None
        if gen is None or self._left > 0:
            self._gen = gen
            return
        try:
            await gen.__anext__()
        except StopAsyncIteration:
            return
        except ReplicaUnavailable:
            return  # the replica went away after the last token: nothing is lost
        logger.warning("request %s: a delta after its last choice finished", self._prep.request_id)
        self._serving.spawn(_aclose_quietly(gen))

    def _release(self) -> None:
        if self._route is not None and self._counted:
            self._serving.router.release(self._route.replica_id)
        self._route, self._counted = None, False

    def close(self) -> None:
        """Idempotent and synchronous: safe in a cancelled task's finally block."""
        if self.closed:
            return
        self.closed = True
        self._release()
        gen, self._gen = self._gen, None
        if gen is not None and self._left > 0:
            # Closing the client's generator sends the abort on the multiplexed stream.
            self._serving.spawn(_aclose_quietly(gen))


async def _merge(request_id: str, children: dict[int, Relay]) -> AsyncIterator[GenerateDelta]:
    """The deltas of per-choice relays as one stream, each under its choice's index. The first
    error ends the stream; closing it closes every child (which aborts it on its replica)."""
    queue: asyncio.Queue[tuple[int, GenerateDelta | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, child: Relay) -> None:
        try:
            await child.start()
            async for d in child:
                await queue.put((index, d))
        except Exception as exc:  # handed to the reader, which raises it
            await queue.put((index, exc))
        await queue.put((index, None))

    tasks = [asyncio.create_task(pump(i, c)) for i, c in children.items()]
    try:
        open_children = len(tasks)
        while open_children:
            index, item = await queue.get()
            if item is None:
                open_children -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield replace(item, index=index, request_id=request_id)
    finally:
        for task in tasks:
            task.cancel()
        for child in children.values():
            child.close()


async def _aclose_quietly(gen: AsyncIterator[GenerateDelta]) -> None:
    try:
        await gen.aclose()  # type: ignore[attr-defined]
    except Exception as exc:  # a generator still running elsewhere: its own finally aborts
        logger.debug("closing a request stream: %s", exc)
