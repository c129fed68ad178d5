"""The engine loop: drain inbox -> schedule -> run model -> sample -> publish.

Public API (the replica and the CLI code against exactly this):

    engine = LLMEngine(EngineConfig(...))            # or LLMEngine.from_model("path", dtype=...)
    engine.tokenizer                                 # actors.common.tokenizer.Tokenizer
    engine.add_request(request_id, prompt, params, priority=0)   # prompt: str | list[int];
                                                     # raises ValueError naming the field
    engine.abort_request(request_id)                 # idempotent; unknown ids are ignored
    outputs = engine.step()                          # list[RequestOutput] deltas
    engine.has_unfinished_requests() -> bool
    engine.has_work() -> bool                        # a step would do something (not all paused)
    engine.generate(prompts, params) -> list[CompletionResult]   # synchronous
    engine.stats() -> EngineStats                    # running, waiting, kv blocks free/total...
    engine.list_requests() -> list[RequestInfo]      # unfinished requests, for operators
    # live migration's seams (actors/migration drives them, on the engine's thread):
    engine.migration_blocks(request_id) -> list[int]   # the blocks holding its computed KV now
    engine.pause_request / resume_request(request_id) # hold it still for the last copy
    engine.export_request(request_id) -> RequestState # everything but the KV
    engine.release_request(request_id)                # it moved: free it, no output
    engine.reserve_blocks(n) / release_blocks(ids)    # the destination's side
    engine.import_request(state, block_ids)           # continue it here, exactly

The engine is single-threaded: callers on other threads hand work to it through their own inbox
(the replica does) and call these methods from the loop thread only.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field, replace

from actors.common.commands import RequestInfo
from actors.common.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from actors.common.migration import RequestState
from actors.common.sampling_params import SamplingParams
from actors.common.tokenizer import Tokenizer
from actors.engine.block_manager import BlockManager
from actors.engine.detokenizer import IncrementalDetokenizer, TokenTexts
from actors.engine.model_runner import ModelRunner
from actors.engine.outputs import CompletionResult, RequestOutput, SchedulerOutput
from actors.engine.request import FINISH_REASONS, Request, RequestStatus
from actors.engine.sampler import Sampler, export_generator_state, import_generator_state
from actors.engine.scheduler import Scheduler
from actors.lora.adapter import LoRAAdapter
from actors.lora.registry import AdapterRegistry
from actors.models.embedded import resolve_model_path

logger = logging.getLogger(__name__)

PREFETCH_SCAN = 64  # queued requests looked at for adapters to prefetch, from the head


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    kv_blocks_free: int
    kv_blocks_total: int
    block_size: int
    tokens_in_flight: int
    last_step_ms: float
    num_steps: int
    num_preemptions: int
    prefix_hashes: tuple[str, ...]
    num_high_priority_running: int = 0  # running requests with priority < 0
    adapter_loads: int = 0  # LoRA adapters copied into device slots (prefetches included)
    adapter_evictions: int = 0
    adapter_requests: dict[str, int] = field(default_factory=dict)  # per adapter, since start
    prompt_tokens_total: int = 0  # prompt tokens admitted (looked up in the prefix cache)
    prefix_hit_tokens_total: int = 0  # ... of which served from the prefix cache


# A request's state as operators read it: its most advanced choice's, first in this order.
_STATE_NAMES = {
    RequestStatus.RUNNING: "running",
    RequestStatus.SWAPPED: "swapped",
    RequestStatus.PREEMPTED: "preempted",
    RequestStatus.WAITING: "waiting",
}


class LLMEngine:
    def __init__(self, config: EngineConfig, runner: ModelRunner | None = None) -> None:
        """`runner`: a ready runner (tensor-parallel rank 0, actors/shard) instead of a new one."""
        model_path = resolve_model_path(config.model.model)
        config = replace(config, model=replace(config.model, model=str(model_path)))
        self.config = config
        self.tokenizer = Tokenizer.from_dir(model_path)
        if runner is None:
            runner = ModelRunner(config, use_cuda_graphs=False if config.enforce_eager else None)
        self.runner = runner
        self.block_manager = BlockManager(
            self.runner.num_blocks,
            config.cache.block_size,
            config.cache.enable_prefix_caching,
            num_host_blocks=self.runner.num_host_blocks,
        )
        self.max_model_len = self.runner.max_model_len
        self.scheduler = Scheduler(
            config.scheduler, self.block_manager, self.max_model_len, config.lora.max_loras
        )
        runner = self.runner
        pin = runner.device.type == "cuda"
        self.adapters = AdapterRegistry(runner.arch, config.lora, runner.dtype, pin=pin)
        self.sampler = Sampler()
        # Sampling seeds, reproducible by design; nothing secret comes from it.
        self._seed_rng = random.Random(config.model.seed)  # noqa: S311
        self._requests: dict[str, Request] = {}  # live child requests by their own id
        self._children: dict[str, list[str]] = {}  # user request id -> child ids
        self._detok: dict[str, IncrementalDetokenizer] = {}
        self._token_texts = TokenTexts(self.tokenizer)  # shared by every request's detokenizer
        self._pending: list[RequestOutput] = []  # finished outside step() (aborts)
        self._last_step_ms = 0.0
        self._num_steps = 0
        self._adapter_requests: Counter[str] = Counter()  # placement's demand signal

    @classmethod
    def from_model(
        cls,
        model: str,
        *,
        dtype: str = "auto",
        device: str = "auto",
        max_model_len: int | None = None,
        load_format: str = "auto",
        enforce_eager: bool = False,
        **kwargs: object,
    ) -> LLMEngine:
        """Build from a model name/path; kwargs go to CacheConfig or SchedulerConfig by name."""
        cache_fields = set(CacheConfig.__dataclass_fields__)
        sched_fields = set(SchedulerConfig.__dataclass_fields__)
        unknown = set(kwargs) - cache_fields - sched_fields
        if unknown:
            raise ValueError(f"unknown engine options: {sorted(unknown)}")
        cache = CacheConfig(**{k: v for k, v in kwargs.items() if k in cache_fields})
        sched = SchedulerConfig(**{k: v for k, v in kwargs.items() if k in sched_fields})
        mcfg = ModelConfig(
            model=model, dtype=dtype, max_model_len=max_model_len, load_format=load_format
        )
        return cls(
            EngineConfig(
                model=mcfg,
                cache=cache,
                scheduler=sched,
                device=device,
                enforce_eager=enforce_eager,
            )
        )

    # ---- admission -------------------------------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams,
        *,
        priority: int = 0,
        arrival_time: float | None = None,
        adapter: str | None = None,
    ) -> None:
        """Validate and queue a request (n > 1 becomes n children sharing the prompt's blocks).
        `adapter`: the name of a loaded LoRA adapter to serve it with (None: the base model)."""
        if not request_id:
            raise ValueError("request_id: must be a non-empty string")
        if request_id in self._children:
            raise ValueError(f"request_id: {request_id!r} is already in flight")
        version = self.adapters.for_request(adapter).version if adapter else ""
        params.validate(self.runner.vocab_size)
        prompt_ids = self._prompt_ids(prompt)
        self._check_fits(prompt_ids, params)
        arrival = time.monotonic() if arrival_time is None else arrival_time
        eos = None if params.ignore_eos else self.tokenizer.eos_token_id
        extra_eos = () if params.ignore_eos else tuple(self.tokenizer.eos_token_ids[1:])
        child_ids = (
            [request_id] if params.n == 1 else [f"{request_id}#{i}" for i in range(params.n)]
        )
        for index, child_id in enumerate(child_ids):
            seed = params.seed + index if params.seed is not None else self._draw_seed()
            req = Request(
                request_id=child_id,
                prompt_token_ids=list(prompt_ids),
                sampling_params=params,
                eos_token_id=eos,
                extra_eos_token_ids=extra_eos,
                arrival_time=arrival,
                priority=priority,
                sampling_seed=seed,
                parent_id=request_id if params.n > 1 else None,
                index=index,
                adapter_id=adapter,
                adapter_version=version,
            )
            self._requests[child_id] = req
            self._detok[child_id] = IncrementalDetokenizer(
                self.tokenizer,
                prompt_ids,
                params.stop,
                params.include_stop_str_in_output,
                token_texts=self._token_texts,
            )
            self.scheduler.add_request(req)
        self._children[request_id] = child_ids
        if adapter:
            self._adapter_requests[adapter] += 1

    def _prompt_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        else:
            ids = list(prompt)
            vocab = self.runner.vocab_size
            bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < vocab]
            if bad:
                raise ValueError(
                    f"prompt: token ids {bad[:5]} are outside the vocabulary [0, {vocab})"
                )
        if not ids:
            raise ValueError("prompt: must not be empty")
        return ids

    def _check_fits(self, prompt_ids: list[int], params: SamplingParams) -> None:
        n_prompt = len(prompt_ids)
        if n_prompt >= self.max_model_len:
            raise ValueError(
                f"prompt: {n_prompt} tokens does not fit the context of {self.max_model_len} "
                "(at least one token must be generated)"
            )
        if n_prompt + params.max_tokens > self.max_model_len:
            raise ValueError(
                f"max_tokens: prompt ({n_prompt}) + max_tokens ({params.max_tokens}) exceeds the "
                f"model's context length {self.max_model_len}"
            )
        bs = self.config.cache.block_size
        total = self.block_manager.num_total_blocks
        # Full prompt blocks before the last token are shared between the n choices; the block
        # holding the last prompt token is recomputed by each choice.
        prompt_blocks = (n_prompt - 1) // bs
        per_choice = -(-(n_prompt + params.max_tokens) // bs) - prompt_blocks
        needed = prompt_blocks + params.n * per_choice
        if needed > total:
            field = "n" if params.n > 1 and prompt_blocks + per_choice <= total else "max_tokens"
            raise ValueError(
                f"{field}: the request needs {needed} KV blocks at most but the cache holds {total}"
            )

    def _draw_seed(self) -> int:
        return self._seed_rng.getrandbits(63)

    def abort_request(self, request_id: str) -> None:
        """Abort a user request (all its choices). Unknown or finished ids are ignored."""
        for child_id in self._children.pop(request_id, []):
            req = self.scheduler.abort_request(child_id)
            if req is None:
                req = self._requests.get(child_id)
            if req is None:
                continue
            self._pending.append(self._make_output(req, [], "", finished=True, reason="abort"))
            self._forget(child_id)

    # ---- the loop --------------------------------------------------------------------------

    def has_work(self) -> bool:
        """Whether step() would do anything: outputs to hand out, or a request that is not
        paused (a loop waits instead of stepping while a migration holds its only request)."""
        return bool(self._pending) or self.scheduler.has_runnable()

    def has_unfinished_requests(self) -> bool:
        return bool(self._pending) or self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        outputs, self._pending = self._pending, []
        t0 = time.perf_counter()
        sched_out = self.scheduler.schedule()
        outputs.extend(self._fail_unschedulable())
        if sched_out.is_empty:
            return outputs
        try:
            tokens, logprobs = self._run(sched_out)
        except Exception as exc:  # one bad step must not take the engine down
            logger.exception(
                "engine step failed; failing the %d requests in it", len(sched_out.chunks)
            )
            outputs.extend(self._fail_step(sched_out, exc))
            return outputs
        changed = self.scheduler.update(sched_out, tokens)
        for req in changed:
            rid = req.request_id
            outputs.append(self._publish(req, tokens.get(rid), logprobs.get(rid)))
        self._last_step_ms = (time.perf_counter() - t0) * 1e3
        self._num_steps += 1
        return outputs

    def _run(self, sched_out: SchedulerOutput) -> tuple[dict[str, int], dict[str, object]]:
        """Sampled token ids by request id, and logprobs by request id for those that asked."""
        slots = self._adapter_slots()
        # [num_sampled, V]; a step without adapters calls the plain seam (shard runners, fakes)
        logits = self.runner.execute(sched_out, slots) if slots else self.runner.execute(sched_out)
        reqs = [c.request for c in sched_out.chunks if c.needs_sample]
        if not reqs:
            return {}, {}
        result = self.sampler.sample(logits, reqs)
        ids = [r.request_id for r in reqs]
        tokens = dict(zip(ids, map(int, result.token_ids), strict=True))
        if result.logprobs is None:
            return tokens, {}
        lps = zip(ids, result.logprobs, strict=True)
        return tokens, {rid: lp for rid, lp in lps if lp is not None}

    def _publish(self, req: Request, token: int | None, logprob: object | None) -> RequestOutput:
        new_ids = [token] if token is not None else []
        finished = req.is_finished
        text, stop_hit = self._detok[req.request_id].update(new_ids, final=finished)
        if stop_hit is not None and not finished:
            self.scheduler.finish_request(req.request_id, RequestStatus.FINISHED_STOPPED)
            finished = req.is_finished
        reason = (FINISH_REASONS.get(req.status) or "stop") if finished else None
        lps = [logprob] if token is not None and logprob is not None else None
        out = self._make_output(req, new_ids, text, finished=finished, reason=reason, logprobs=lps)
        if stop_hit is not None:
            out.stop_reason = stop_hit
        elif finished and new_ids and new_ids[-1] in self._stop_ids(req):
            out.stop_reason = new_ids[-1]
        if finished:
            self._forget(req.request_id)
        return out

    @staticmethod
    def _stop_ids(req: Request) -> set[int]:
        ids = set(req.sampling_params.stop_token_ids)
        if req.eos_token_id is not None:
            ids.add(req.eos_token_id)
        ids.update(req.extra_eos_token_ids)
        return ids

    def _make_output(
        self,
        req: Request,
        new_ids: list[int],
        text: str,
        *,
        finished: bool,
        reason: str | None,
        logprobs: list | None = None,
    ) -> RequestOutput:
        return RequestOutput(
            request_id=req.parent_id or req.request_id,
            index=req.index,
            new_token_ids=new_ids,
            new_text=text,
            finished=finished,
            finish_reason=reason,
            logprobs=logprobs,
            error=req.error,
            num_prompt_tokens=req.num_prompt_tokens,
            num_output_tokens=req.num_output_tokens,
            num_cached_tokens=req.num_cached_tokens,
        )

    def _fail_step(self, sched_out: SchedulerOutput, exc: Exception) -> list[RequestOutput]:
        """Fail the step's requests, and any swapped out in it (their host copy may be partial)."""
        outputs = []
        victims = [c.request for c in sched_out.chunks]
        victims += [r for r in sched_out.preempted if r.status == RequestStatus.SWAPPED]
        for req in victims:
            req.error = f"{type(exc).__name__}: {exc}"
            self.scheduler.finish_request(req.request_id, RequestStatus.FINISHED_ERROR)
            outputs.append(self._make_output(req, [], "", finished=True, reason="error"))
            self._forget(req.request_id)
        return outputs

    def _fail_unschedulable(self) -> list[RequestOutput]:
        """Requests the scheduler gave up on (e.g. could never fit) finish with their error."""
        failed = self.scheduler.drain_failed()
        outputs = [self._make_output(r, [], "", finished=True, reason="error") for r in failed]
        for r in failed:
            self._forget(r.request_id)
        return outputs

    def _forget(self, child_id: str) -> None:
        req = self._requests.pop(child_id, None)
        self._detok.pop(child_id, None)
        if req is None:
            return
        if req.adapter_id is not None:
            name = req.adapter_id
            if self.adapters.finished(name, self._adapter_in_use(name)):
                self._evict_adapter(name)
        parent = req.parent_id or req.request_id
        siblings = self._children.get(parent)
        if siblings is not None and all(s not in self._requests for s in siblings):
            del self._children[parent]

    # ---- LoRA adapters ---------------------------------------------------------------------

    def add_adapter(self, name: str, path: str) -> LoRAAdapter:
        """Load (or keep) a PEFT adapter under `name`; AdapterError (a ValueError) says why not."""
        return self.install_adapter(self.adapters.prepare(name, path))

    def install_adapter(self, adapter: LoRAAdapter) -> LoRAAdapter:
        """Serve an adapter read by `adapters.prepare` (possibly on another thread)."""
        served = self.adapters.install(adapter, self._adapter_in_use(adapter.name))
        if served is adapter:
            self._evict_adapter(adapter.name)  # a resident older version must not serve it
        return served

    def remove_adapter(self, name: str) -> None:
        """New requests for `name` are refused now; it goes when the last in flight ends."""
        in_use = self._adapter_in_use(name)
        self.adapters.remove(name, in_use)
        if not in_use:
            self._evict_adapter(name)

    def resident_adapters(self) -> list[str]:
        lora = self.runner.lora
        return lora.pool.resident() if lora is not None else []

    def place_adapter(self, name: str, resident: bool) -> bool:
        """Placement's ask (policies/adapters.py): load `name` into a device slot now, or let
        it go from there. Returns whether it is where asked. A slot is taken only if free or
        held by an adapter no running or queued request uses; an adapter running requests use
        stays. AdapterError if `name` is not served here."""
        adapter = self.adapters.for_request(name)
        lora = self.runner.lora
        assert lora is not None  # for_request found it: adapters are served only with a pool
        if not resident:
            if any(r.adapter_id == name for r in self.scheduler.running_requests()):
                return False
            self._evict_adapter(name)
            return True
        keep = {r.adapter_id for r in self._requests.values() if r.adapter_id}
        lora.pool.prefetch([adapter], keep)
        return name in lora.pool.resident()

    def _adapter_in_use(self, name: str) -> bool:
        return any(r.adapter_id == name for r in self._requests.values())

    def _evict_adapter(self, name: str) -> None:
        lora = self.runner.lora
        if lora is not None and name in lora.pool.resident():
            lora.pool.evict(name)

    def _adapter_slots(self) -> dict[str, int]:
        """Device slots for the adapters of every running request (loading what is missing),
        then a prefetch of the adapters the head of the queue will need."""
        lora = self.runner.lora
        if lora is None:
            return {}
        names = {r.adapter_id for r in self.scheduler.running_requests() if r.adapter_id}
        slots = lora.pool.ensure(self.adapters.get(n) for n in names) if names else {}
        room = lora.pool.num_slots - len(names)
        queued: list[str] = []
        for req in self.scheduler.waiting_head(PREFETCH_SCAN):
            if len(queued) >= room:
                break
            if req.adapter_id and req.adapter_id not in names and req.adapter_id not in queued:
                queued.append(req.adapter_id)
        if queued:
            adapters = [self.adapters.get(n) for n in queued]
            lora.pool.prefetch(adapters, keep=names | set(queued))
        return slots

    # ---- conveniences ----------------------------------------------------------------------

    def generate(
        self,
        prompts: list[str | list[int]],
        params: SamplingParams | list[SamplingParams],
        adapters: list[str | None] | None = None,
    ) -> list[CompletionResult]:
        """Run prompts to completion (blocking) and return one result per prompt, in order
        (`adapters`: a LoRA adapter name or None per prompt)."""
        plist = params if isinstance(params, list) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise ValueError("params: need one SamplingParams per prompt")
        alist = adapters if adapters is not None else [None] * len(prompts)
        if len(alist) != len(prompts):
            raise ValueError("adapters: need one adapter (or None) per prompt")
        base = f"gen-{self._draw_seed():x}"
        ids = [f"{base}-{i}" for i in range(len(prompts))]
        results: dict[str, CompletionResult] = {}
        for rid, prompt, p, adapter in zip(ids, prompts, plist, alist, strict=True):
            self.add_request(rid, prompt, p, adapter=adapter)
            n = p.n
            results[rid] = CompletionResult(
                request_id=rid,
                prompt_token_ids=self._requests[self._children[rid][0]].prompt_token_ids,
                texts=[""] * n,
                token_ids=[[] for _ in range(n)],
                finish_reasons=[""] * n,
                logprobs=[[] if p.logprobs is not None else None for _ in range(n)],
            )
        while self.has_unfinished_requests():
            for out in self.step():
                res = results[out.request_id]
                res.texts[out.index] += out.new_text
                res.token_ids[out.index].extend(out.new_token_ids)
                if out.logprobs is not None and res.logprobs[out.index] is not None:
                    res.logprobs[out.index].extend(out.logprobs)
                if out.finished:
                    res.finish_reasons[out.index] = out.finish_reason or ""
                    if out.error:
                        raise RuntimeError(f"request {out.request_id} failed: {out.error}")
        return [results[rid] for rid in ids]

    def list_requests(self) -> list[RequestInfo]:
        """Every unfinished request, its choices folded into one entry under the user's id."""
        wall_offset = time.time() - time.monotonic()  # arrival times are monotonic
        infos = []
        for request_id, child_ids in self._children.items():
            reqs = [self._requests[c] for c in child_ids if c in self._requests]
            if not reqs:
                continue
            first = reqs[0]
            infos.append(
                RequestInfo(
                    request_id=request_id,
                    state=next(
                        n for st, n in _STATE_NAMES.items() if any(r.status == st for r in reqs)
                    ),
                    n=len(child_ids),
                    prompt_tokens=first.num_prompt_tokens,
                    output_tokens=sum(r.num_output_tokens for r in reqs),
                    kv_blocks=len({b for r in reqs for b in r.block_ids}),
                    priority=first.priority,
                    arrival_time=first.arrival_time + wall_offset,
                    adapter=first.adapter_id,
                )
            )
        return infos

    # ---- migration seams -------------------------------------------------------------------

    def _migratable(self, request_id: str) -> Request:
        """The request, if it can move: in flight here, one choice, not swapped out."""
        children = self._children.get(request_id)
        if not children or children[0] not in self._requests:
            raise ValueError(f"request_id: {request_id!r} is not in flight here")
        if len(children) != 1:
            raise ValueError(f"request_id: {request_id!r} has n > 1 choices, which do not migrate")
        req = self._requests[request_id]
        if req.status == RequestStatus.SWAPPED:
            raise ValueError(f"request_id: {request_id!r} is swapped out to host memory")
        return req

    def migration_blocks(self, request_id: str) -> tuple[list[int], int]:
        """(the blocks that hold the request's computed KV, its computed tokens), right now.

        A running request's first blocks never move or change once full, so a migration may
        copy them while it keeps decoding; waiting or preempted requests have none."""
        req = self._migratable(request_id)
        if req.status != RequestStatus.RUNNING:
            return [], 0
        return list(req.block_ids), req.num_computed_tokens

    def pause_request(self, request_id: str) -> None:
        """Hold the request still for a migration's last copy: a running one is not scheduled or
        preempted, a waiting (or preempted) one is not admitted."""
        self._migratable(request_id)
        self.scheduler.pause(request_id)

    def resume_request(self, request_id: str) -> None:
        """The migration was aborted: the request goes on here as if nothing happened."""
        self.scheduler.resume(request_id)

    def export_request(self, request_id: str) -> RequestState:
        """Everything the request is, but its KV: call while it is paused (or not running)."""
        req = self._migratable(request_id)
        return RequestState(
            request_id=request_id,
            prompt_token_ids=tuple(req.prompt_token_ids),
            output_token_ids=tuple(req.output_token_ids),
            num_computed_tokens=(
                req.num_computed_tokens if req.status == RequestStatus.RUNNING else 0
            ),
            sampling=req.sampling_params,
            extra_eos_token_ids=req.extra_eos_token_ids,
            priority=req.priority,
            age_s=max(0.0, time.monotonic() - req.arrival_time),
            num_preemptions=req.num_preemptions,
            num_cached_tokens=req.num_cached_tokens,
            generator_state=export_generator_state(req),
            detokenizer=self._detok[request_id].export_state(),
            eos_token_id=req.eos_token_id,
            adapter_id=req.adapter_id,
        )

    def adapter_of(self, request_id: str) -> str | None:
        """The LoRA adapter of a request in flight here (None: the base model)."""
        return self._migratable(request_id).adapter_id

    def release_request(self, request_id: str) -> None:
        """The request now lives on another replica: free its blocks, send no output."""
        self.scheduler.release(request_id)
        self._forget(request_id)  # only a request of one choice moves: its id is its child's

    def reserve_blocks(self, num_blocks: int) -> list[int] | None:
        return self.block_manager.reserve(num_blocks)

    def release_blocks(self, block_ids: list[int]) -> None:
        self.block_manager.release_reserved(block_ids)

    def import_request(self, state: RequestState, block_ids: list[int]) -> None:
        """Continue a request exported elsewhere; `block_ids` (reserved here) hold its KV."""
        rid = state.request_id
        if rid in self._children:
            raise ValueError(f"request_id: {rid!r} is already in flight here")
        adapter = state.adapter_id
        version = self.adapters.for_request(adapter).version if adapter else ""
        if adapter and not self.scheduler.adapter_fits(adapter):
            raise ValueError(f"adapter_id: {adapter!r} would exceed max_loras here")
        bs = self.config.cache.block_size
        if len(block_ids) != -(-state.num_computed_tokens // bs):
            raise ValueError(
                f"block_ids: {len(block_ids)} blocks for {state.num_computed_tokens} computed "
                f"tokens of {bs}"
            )
        if state.num_tokens >= self.max_model_len:
            raise ValueError(f"request_id: {rid!r} does not fit max_model_len here")
        req = Request(
            request_id=rid,
            prompt_token_ids=list(state.prompt_token_ids),
            sampling_params=state.sampling,
            eos_token_id=state.eos_token_id,
            extra_eos_token_ids=state.extra_eos_token_ids,
            arrival_time=time.monotonic() - state.age_s,
            priority=state.priority,
            adapter_id=adapter,
            adapter_version=version,
            output_token_ids=list(state.output_token_ids),
            num_computed_tokens=state.num_computed_tokens,
            block_ids=list(block_ids),
            num_cached_tokens=state.num_cached_tokens,
            num_preemptions=state.num_preemptions,
        )
        import_generator_state(req, state.generator_state)
        detok = IncrementalDetokenizer(
            self.tokenizer,
            state.prompt_token_ids,
            state.sampling.stop,
            state.sampling.include_stop_str_in_output,
            token_texts=self._token_texts,
        )
        detok.import_state(state.detokenizer)
        self.scheduler.add_migrated(req)
        self._requests[rid] = req
        self._children[rid] = [rid]
        self._detok[rid] = detok

    def stats(self) -> EngineStats:
        s = self.scheduler
        running = s.running_requests()
        pool = self.runner.lora.pool if self.runner.lora is not None else None
        return EngineStats(
            num_running=len(running),
            num_waiting=s.num_waiting,
            kv_blocks_free=self.block_manager.num_free_blocks,
            kv_blocks_total=self.block_manager.num_total_blocks,
            block_size=self.config.cache.block_size,
            tokens_in_flight=sum(r.num_tokens for r in running),
            last_step_ms=self._last_step_ms,
            num_steps=self._num_steps,
            num_preemptions=s.num_preemptions,
            prefix_hashes=tuple(self.block_manager.cached_prefix_hashes(256)),
            num_high_priority_running=sum(1 for r in running if r.priority < 0),
            adapter_loads=pool.num_loads if pool is not None else 0,
            adapter_evictions=pool.num_evictions if pool is not None else 0,
            adapter_requests=dict(self._adapter_requests),
            prompt_tokens_total=s.num_prompt_tokens,
            prefix_hit_tokens_total=s.num_prefix_hit_tokens,
        )
