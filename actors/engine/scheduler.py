"""Continuous batching with chunked prefill (Sarathi-Serve style).

Each step has one token budget shared by every request. Running requests go first (decodes,
then the next chunk of unfinished prefills), then swapped-out requests come back, then new ones
are admitted from the waiting queue in (priority, arrival) order. A request is only two counters
and a block table, so a "prefill" is simply a request with more than one token left to compute
and a chunk is cut to whatever budget is left.

When a running request cannot get a block, the running request with the worst (priority,
arrival) is preempted, possibly the one asking: by recompute (drop its blocks, recompute
prompt and output later) or by swap (its blocks move to host memory).

`schedule()` does not advance counters; `update()` does so after the model ran.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections import Counter
from dataclasses import dataclass, field

from actors.common.config import SchedulerConfig
from actors.engine.block_manager import BlockManager
from actors.engine.outputs import ScheduledChunk, SchedulerOutput
from actors.engine.request import Request, RequestStatus

logger = logging.getLogger(__name__)

# (priority, 0 if put back by preemption else 1, arrival_time, admission sequence number)
_WaitKey = tuple[int, int, float, int]


@dataclass
class _Step:
    """What one schedule() call has decided so far."""

    budget: int
    chunks: dict[str, ScheduledChunk] = field(default_factory=dict)  # insertion order is kept
    out: SchedulerOutput = field(default_factory=SchedulerOutput)

    def add(self, req: Request, num_new_tokens: int) -> None:
        self.chunks[req.request_id] = ScheduledChunk(req, num_new_tokens)
        self.budget -= num_new_tokens

    def drop(self, req: Request) -> None:
        chunk = self.chunks.pop(req.request_id, None)
        if chunk is not None:
            self.budget += chunk.num_new_tokens


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        block_manager: BlockManager,
        max_model_len: int,
        max_loras: int = 0,
    ) -> None:
        """`max_loras`: distinct LoRA adapters running at once (their device slots); 0: no limit."""
        if max_model_len < 2:
            raise ValueError(f"max_model_len: must be >= 2, got {max_model_len}")
        self.config = config
        self.max_loras = max_loras
        self.block_manager = block_manager
        self.max_model_len = max_model_len
        self._requests: dict[str, Request] = {}  # every unfinished request by id
        self._seq: dict[str, int] = {}  # admission order, the tie-break after arrival time
        self._ranks: dict[str, tuple[int, float, int]] = {}  # _rank() per request, made once
        self._counter = itertools.count()
        self._waiting: list[tuple[_WaitKey, Request]] = []  # sorted by key
        self._swapped: list[Request] = []
        # A dict keeps insertion order like a list but removes in O(1) (finishes, preemptions).
        self._running: dict[str, Request] = {}
        self._first_child: dict[str, Request] = {}  # n > 1: parent id -> the index-0 child
        # A running adapter none of whose requests are admitted while a request of a cold
        # adapter waits for its slot (_adapter_admits): it frees the slot in bounded time.
        self._draining: str | None = None
        # Running requests a migration holds still for its last copy: not scheduled, never
        # preempted (their blocks are being read), released or resumed by the migration.
        self._paused: set[str] = set()
        self.num_preemptions = 0
        # Prompt tokens looked up in the prefix cache on first admission, and those found there:
        # cumulative, so the prefix-cache hit rate is their rates' ratio over any window.
        self.num_prompt_tokens = 0
        self.num_prefix_hit_tokens = 0
        self._failed: list[Request] = []  # given up on; the engine drains and reports them

    # ---- queues --------------------------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        rid = request.request_id
        if rid in self._requests:
            raise ValueError(f"request_id: {rid!r} is already scheduled")
        if request.status != RequestStatus.WAITING:
            raise ValueError(f"status: a new request must be WAITING, got {request.status.name}")
        if request.num_prompt_tokens == 0:
            raise ValueError("prompt: must not be empty")
        if request.num_tokens >= self.max_model_len:
            raise ValueError(
                f"prompt: {request.num_tokens} tokens leave no room to generate within "
                f"max_model_len {self.max_model_len}"
            )
        self._requests[rid] = request
        self._seq[rid] = next(self._counter)
        self._ranks[rid] = (request.priority, request.arrival_time, self._seq[rid])
        if request.parent_id is not None and request.index == 0:
            self._first_child[request.parent_id] = request
        self._enqueue(request, front=False)

    def abort_request(self, request_id: str) -> Request | None:
        """Abort and free an unfinished request; None if unknown or already finished."""
        return self.finish_request(request_id, RequestStatus.FINISHED_ABORTED)

    def finish_request(self, request_id: str, status: RequestStatus) -> Request | None:
        """End a request from outside (stop strings, errors, aborts); frees its blocks."""
        if not status.finished:
            raise ValueError(f"status: {status.name} is not a finished status")
        req = self._requests.get(request_id)
        if req is None:
            return None
        self._finish(req, status)
        return req

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    def has_runnable(self) -> bool:
        """Whether a step could do anything: an unfinished request that is not paused."""
        return len(self._requests) > len(self._paused)

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting) + len(self._swapped)

    @property
    def num_swapped(self) -> int:
        return len(self._swapped)

    def running_requests(self) -> list[Request]:
        return list(self._running.values())

    def waiting_requests(self) -> list[Request]:
        """Waiting and preempted requests in admission order."""
        return [req for _, req in self._waiting]

    def waiting_head(self, n: int) -> list[Request]:
        """The first `n` waiting requests in admission order (the next to be admitted)."""
        return [req for _, req in self._waiting[:n]]

    def get_request(self, request_id: str) -> Request | None:
        return self._requests.get(request_id)

    # ---- migration -----------------------------------------------------------------------------

    def pause(self, request_id: str) -> Request:
        """Hold a request still for a migration's last copy: a running one is not scheduled
        (or preempted), a waiting one not admitted. ValueError if unknown or swapped out."""
        req = self._requests.get(request_id)
        if req is None or req.status == RequestStatus.SWAPPED:
            raise ValueError(f"request_id: {request_id!r} is not running or waiting here")
        self._paused.add(request_id)
        return req

    def resume(self, request_id: str) -> None:
        self._paused.discard(request_id)

    def is_paused(self, request_id: str) -> bool:
        return request_id in self._paused

    def release(self, request_id: str) -> Request | None:
        """The request moved elsewhere: free its blocks and forget it (no output, no status)."""
        req = self._requests.get(request_id)
        if req is None:
            return None
        self._paused.discard(request_id)
        self._finish(req, RequestStatus.FINISHED_ABORTED)
        return req

    def add_migrated(self, request: Request) -> None:
        """Admit a request that arrives from another replica with its counters and blocks: one
        with computed KV joins the running batch, one without (never prefilled) the queue."""
        rid = request.request_id
        if rid in self._requests:
            raise ValueError(f"request_id: {rid!r} is already scheduled")
        self._requests[rid] = request
        self._seq[rid] = next(self._counter)
        self._ranks[rid] = (request.priority, request.arrival_time, self._seq[rid])
        if request.num_computed_tokens > 0:
            request.status = RequestStatus.RUNNING
            self._running[rid] = request
        else:
            request.status = RequestStatus.WAITING
            self._enqueue(request, front=False)

    # ---- schedule ------------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        step = _Step(budget=self.config.max_num_batched_tokens)
        self._schedule_running(step)
        # After a preemption the cache is tight: admitting more would only thrash.
        if not step.out.preempted:
            self._schedule_swapped(step)
            self._schedule_waiting(step)
        step.out.chunks = list(step.chunks.values())
        return step.out

    def _schedule_running(self, step: _Step) -> None:
        # Decodes (one token left) first, then chunked prefills; better priority first in each.
        ranks = self._ranks
        paused = self._paused
        order = sorted(
            (r for r in self._running.values() if r.request_id not in paused),
            key=lambda r: (r.num_tokens - r.num_computed_tokens > 1, ranks[r.request_id]),
        )
        running, block_size = RequestStatus.RUNNING, self.block_manager.block_size
        for req in order:
            if step.budget <= 0:
                break
            if req.status != running:  # preempted earlier in this loop
                continue
            computed = req.num_computed_tokens
            num_new = min(req.num_tokens - computed, step.budget)
            # Most decode steps stay inside the last block: no allocation to ask for.
            fits = len(req.block_ids) * block_size >= computed + num_new
            if fits or self._allocate_or_preempt(req, num_new, step):
                step.add(req, num_new)

    def _allocate_or_preempt(self, req: Request, num_new: int, step: _Step) -> bool:
        while not self.block_manager.allocate_slots(req, num_new):
            candidates = [r for r in self._running.values() if r.request_id not in self._paused]
            victim = max(candidates, key=self._rank)
            if victim is req and len(candidates) == 1:
                # Alone with the whole cache and still no room: it can never run.
                self._fail_too_large(req)
                return False
            step.drop(victim)
            self._preempt(victim, step.out)
            if victim is req:
                return False
        return True

    def _schedule_swapped(self, step: _Step) -> None:
        bm = self.block_manager
        for req in sorted(self._swapped, key=self._rank):
            if step.budget <= 0 or len(self._running) >= self.config.max_num_seqs:
                return
            if not self.adapter_fits(req.adapter_id):
                return
            num_new = min(self._remaining(req), step.budget)
            # A victim may hold a block beyond its computed tokens (its dropped chunk's).
            need = max(len(req.block_ids), bm.blocks_needed(req.num_computed_tokens + num_new))
            if not bm.can_allocate(need):
                if not self._running:
                    self._fail_too_large(req)
                    continue
                return
            self._swapped.remove(req)
            step.out.swap_in.extend(bm.swap_in(req))
            if not bm.allocate_slots(req, num_new):
                raise RuntimeError("allocation after a checked swap-in failed")
            req.status = RequestStatus.RUNNING
            self._running[req.request_id] = req
            step.add(req, num_new)

    def _schedule_waiting(self, step: _Step) -> None:
        bm = self.block_manager
        # Swapped requests hold host memory and made progress: newcomers of the same or a worse
        # priority must not take the blocks they wait for.
        floor = min((r.priority for r in self._swapped), default=None)
        adapters = self._running_adapters()
        if self._draining not in adapters:
            self._draining = None  # its slot is free (or it never ran): the cold one can run
        i = 0
        while i < len(self._waiting) and step.budget > 0:
            if len(self._running) >= self.config.max_num_seqs:
                return
            req = self._waiting[i][1]
            if floor is not None and req.priority >= floor:
                return  # the queue is sorted by priority: everything after is no better
            if self._gated(req) or req.request_id in self._paused:
                i += 1
                continue
            if not self._adapter_admits(req.adapter_id, adapters):
                i += 1
                continue
            hit_blocks, num_hit = bm.get_computed_blocks(req)
            num_new = min(req.num_tokens - num_hit, step.budget)
            if not bm.allocate_slots(req, num_new, hit_blocks):
                if not self._running:
                    self._fail_too_large(req)
                    continue
                return  # FCFS: later requests do not overtake one that waits for blocks
            del self._waiting[i]
            req.num_computed_tokens = num_hit
            if req.num_preemptions == 0:
                req.num_cached_tokens = num_hit
                self.num_prompt_tokens += req.num_tokens
                self.num_prefix_hit_tokens += num_hit
            req.status = RequestStatus.RUNNING
            self._running[req.request_id] = req
            if req.adapter_id:
                adapters[req.adapter_id] += 1
            step.add(req, num_new)

    def _running_adapters(self) -> Counter[str]:
        return Counter(r.adapter_id for r in self._running.values() if r.adapter_id)

    def adapter_fits(self, adapter: str | None) -> bool:
        """Whether a request of `adapter` may run now: its adapter already runs, or a device
        slot is left for it."""
        if adapter is None or not self.max_loras:
            return True
        active = self._running_adapters()
        return adapter in active or len(active) < self.max_loras

    def _adapter_admits(self, adapter: str | None, running: Counter[str]) -> bool:
        """Whether a waiting request of `adapter` may start now, given the adapters running.

        A request whose adapter finds every slot taken waits. Later requests of running
        adapters overtake it (they take no slot, and a strict FCFS queue would idle the batch
        behind it), except those of one adapter picked to drain, the running one with the
        fewest requests: its slot frees once they finish, and the first cold request in the
        queue takes it. So a cold adapter never starves, and waits at most the remaining
        lifetime of the drained adapter's requests.
        """
        if adapter is None or not self.max_loras:
            return True
        if adapter in running:
            return adapter != self._draining
        if len(running) < self.max_loras:
            return True
        if self._draining is None:
            self._draining = min(running, key=running.__getitem__)
        return False

    def _gated(self, req: Request) -> bool:
        """n > 1: later choices wait until choice 0 computed the prompt they will share."""
        if not self.block_manager.enable_prefix_caching or req.parent_id is None or req.index == 0:
            return False
        first = self._first_child.get(req.parent_id)
        return first is not None and first.num_computed_tokens < first.num_prompt_tokens

    # ---- preemption ----------------------------------------------------------------------------

    def _preempt(self, req: Request, out: SchedulerOutput) -> None:
        del self._running[req.request_id]
        req.num_preemptions += 1
        self.num_preemptions += 1
        out.preempted.append(req)
        bm = self.block_manager
        if self.config.preemption_mode == "swap" and bm.can_swap_out(req):
            out.swap_out.extend(bm.swap_out(req))
            req.status = RequestStatus.SWAPPED
            self._swapped.append(req)
            return
        bm.free(req)
        req.num_computed_tokens = 0
        req.status = RequestStatus.PREEMPTED
        self._enqueue(req, front=True)

    def _fail_too_large(self, req: Request) -> None:
        bm = self.block_manager
        req.error = (
            f"kv cache: the request needs more than the whole cache ({bm.num_total_blocks} blocks "
            f"of {bm.block_size} tokens) at {req.num_tokens} tokens"
        )
        logger.warning("request %s failed: %s", req.request_id, req.error)
        self._finish(req, RequestStatus.FINISHED_ERROR)
        self._failed.append(req)

    def drain_failed(self) -> list[Request]:
        """Requests the scheduler failed on its own since the last call (blocks already freed)."""
        failed, self._failed = self._failed, []
        return failed

    # ---- update --------------------------------------------------------------------------------

    def update(self, sched_out: SchedulerOutput, sampled: dict[str, int]) -> list[Request]:
        """Advance the counters after the model ran; returns requests that got a token or ended."""
        changed: list[Request] = []
        running = RequestStatus.RUNNING
        cache_full_blocks = self.block_manager.cache_full_blocks
        for chunk in sched_out.chunks:
            req = chunk.request
            if req.status != running:
                continue  # finished (or preempted) from outside between schedule() and update()
            computed = req.num_computed_tokens + chunk.num_new_tokens
            needs_sample = computed == req.num_tokens  # the chunk reached the last known token
            req.num_computed_tokens = computed
            cache_full_blocks(req, computed)
            if not needs_sample:
                continue
            token = sampled.get(req.request_id)
            if token is None:
                req.error = "engine: no token was sampled for a request that needed one"
                self._finish(req, RequestStatus.FINISHED_ERROR)
            else:
                req.output_token_ids.append(token)
                status = self._stop_status(req, token)
                if status is not None:
                    self._finish(req, status)
            changed.append(req)
        return changed

    def _stop_status(self, req: Request, token: int) -> RequestStatus | None:
        params = req.sampling_params
        is_eos = token == req.eos_token_id or token in req.extra_eos_token_ids
        if is_eos and not params.ignore_eos:
            return RequestStatus.FINISHED_STOPPED
        if token in params.stop_token_ids:
            return RequestStatus.FINISHED_STOPPED
        if req.num_output_tokens >= params.max_tokens or req.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    # ---- helpers -------------------------------------------------------------------------------

    def _finish(self, req: Request, status: RequestStatus) -> None:
        rid = req.request_id
        if req.status == RequestStatus.RUNNING:
            del self._running[rid]
        elif req.status == RequestStatus.SWAPPED:
            self._swapped.remove(req)
        else:
            self._waiting = [(k, r) for k, r in self._waiting if r is not req]
        self.block_manager.free(req)
        req.status = status
        self._paused.discard(rid)
        del self._requests[rid]
        self._seq.pop(rid, None)
        self._ranks.pop(rid, None)
        if req.parent_id is not None and self._first_child.get(req.parent_id) is req:
            del self._first_child[req.parent_id]

    def _enqueue(self, req: Request, front: bool) -> None:
        key: _WaitKey = (
            req.priority,
            0 if front else 1,
            req.arrival_time,
            self._seq[req.request_id],
        )
        bisect.insort(self._waiting, (key, req))  # keys are unique: Requests never compare

    def _rank(self, req: Request) -> tuple[int, float, int]:
        """Lower is better; max() over running requests is the preemption victim."""
        return self._ranks[req.request_id]

    @staticmethod
    def _remaining(req: Request) -> int:
        return req.num_tokens - req.num_computed_tokens
