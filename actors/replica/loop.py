"""The replica's engine loop: drain inbox -> engine.step() -> publish one message per connection.

It runs in one thread that owns the engine (the engine is single-threaded). Other threads only
append typed messages to the inbox (Submit, AbortRequest, Detach, or RunOnEngine: any function
to run on the engine thread between two steps, with a future for its result) and notify the
condition; an idle loop blocks on that condition, it never spins or sleeps.

Each step's outputs are grouped by connection into that connection's outbox and each outbox with
something new becomes one DeltaBatch (wire.batch_to_pb), handed to the connection's sink once: a
connection gets one message per step however many requests it has, and the common delta (tokens,
no logprobs, not finished) never becomes a per-request Python or protobuf object on the way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar, Union

from actors.common.commands import RequestInfo
from actors.common.errors import ErrorKind, ReplicaError
from actors.common.migration import RequestState
from actors.common.types import GenerateDelta, GenerateSpec, LoadReport
from actors.common.wire import batch_to_pb
from actors.engine.engine import LLMEngine
from actors.engine.outputs import RequestOutput
from actors.replica.engine_factory import close_engine
from policies.cluster_view import ReplicaIdentity, ReplicaLoad
from protos import replica_pb2

T = TypeVar("T")

logger = logging.getLogger(__name__)


class DeltaSink(Protocol):
    """Where one connection's messages go. Called on the engine thread: must not block.

    `whole` are the batch's deltas that travel whole (finished, errors, logprobs), the ones a
    connection needs to see to know which requests ended, as plain objects."""

    def put_batch(self, batch: replica_pb2.DeltaBatch, whole: list[GenerateDelta]) -> None: ...


class _Outbox:
    """One connection's share of the current step (engine thread only)."""

    __slots__ = ("sink", "outs", "usage", "whole")

    def __init__(self, sink: DeltaSink) -> None:
        self.sink = sink
        self.outs: list[RequestOutput] = []  # column entries, see wire.batch_to_pb
        self.usage: list[_Live] = []
        self.whole: list[tuple[int, GenerateDelta]] = []

    def add_whole(self, delta: GenerateDelta) -> None:
        self.whole.append((len(self.outs), delta))

    def take(self) -> tuple[replica_pb2.DeltaBatch, list[GenerateDelta]]:
        """The step's message; the outbox is empty afterwards, even when building it fails."""
        outs, usage, whole = self.outs, self.usage, self.whole
        self.outs, self.usage, self.whole = [], [], []
        return batch_to_pb(outs, usage, whole), [d for _, d in whole]


@dataclass
class _Live:
    """Per in-flight request bookkeeping (engine thread only)."""

    outbox: _Outbox
    choices_left: int
    num_prompt_tokens: int  # the client's prompt, without resumed tokens
    num_resumed: int


# ---- the inbox: what other threads ask of the engine thread ---------------------------------


@dataclass(frozen=True)
class Submit:
    spec: GenerateSpec
    sink: DeltaSink


@dataclass(frozen=True)
class AbortRequest:
    request_id: str


@dataclass(frozen=True)
class Detach:
    """A connection went away: abort every request it carried."""

    sink: DeltaSink


@dataclass(frozen=True)
class Attach:
    """A connection follows a request that migrated here: its deltas go there from now on."""

    request_id: str
    sink: DeltaSink


@dataclass(frozen=True)
class RunOnEngine:
    """Run `fn` on the engine thread between steps; its result or exception lands in `future`."""

    fn: Callable[[], Any]
    future: Future


InboxItem = Union[Submit, AbortRequest, Detach, Attach, RunOnEngine]


class _ParkingSink:
    """Where a migrated-in request's messages wait until its client's ingress attaches (the
    source told the ingress where it went only after the commit; the request runs meanwhile)."""

    def __init__(self) -> None:
        self.batches: list[tuple[replica_pb2.DeltaBatch, list[GenerateDelta]]] = []

    def put_batch(self, batch: replica_pb2.DeltaBatch, whole: list[GenerateDelta]) -> None:
        self.batches.append((batch, whole))


class EngineStalled(RuntimeError):
    """The engine loop is stuck in one iteration (a wedged step or command)."""


class EngineLoop:
    def __init__(
        self,
        engine: LLMEngine,
        identity: ReplicaIdentity,
        stats_interval_s: float = 0.05,
        stall_after_s: float = 60.0,
    ) -> None:
        """`stall_after_s`: one loop iteration (a step, a command) running longer than this is
        a wedged engine: the replica stops reporting and answers health checks False, so the
        controller takes it out of dispatch and replaces it."""
        self._engine = engine
        self._identity = identity
        self._stats_interval_s = stats_interval_s
        self._stall_after_s = stall_after_s
        self._busy_since: float | None = None  # when the iteration under way began; None: idle
        self._cond = threading.Condition()
        self._inbox: deque[InboxItem] = deque()
        self._live: dict[str, _Live] = {}
        self._outboxes: dict[DeltaSink, _Outbox] = {}  # engine thread only
        self._cordoned = False  # engine thread writes; snapshots read it
        # Kept by actors/migration (the replica's event-loop thread); snapshots read them.
        self.migrating_out = 0
        self.migrating_in = 0
        self.migrated_bytes = 0
        self._handlers: dict[type, Callable[[Any], None]] = {
            Submit: self._submit,
            AbortRequest: self._abort,
            Detach: self._detach,
            Attach: self._attach,
            RunOnEngine: self._run_fn,
        }
        self._stopped = False
        self._seq = 0
        self._snapshot = self._make_snapshot()
        self._snapshot_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)

    # ---- called from any thread ------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, spec: GenerateSpec, sink: DeltaSink) -> None:
        self._post(Submit(spec, sink))

    def abort(self, request_id: str) -> None:
        """Abort a request (idempotent; unknown ids are ignored)."""
        self._post(AbortRequest(request_id))

    def detach(self, sink: DeltaSink) -> None:
        """A connection went away: abort every request it carried."""
        self._post(Detach(sink))

    def attach(self, request_id: str, sink: DeltaSink) -> None:
        """Send a migrated-in request's deltas to this connection (its ingress followed it)."""
        self._post(Attach(request_id, sink))

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run `fn` on the engine thread between two steps; the future holds what it returns.

        The one way to touch the engine from elsewhere (commands, later migration and adapter
        loading): calls run in the order posted, never during a step, so a tensor-parallel
        engine's collectives stay in the same order on every rank.
        """
        future: Future[T] = Future()
        self._post(RunOnEngine(fn, future))
        return future

    def snapshot(self) -> LoadReport:
        """The latest load report; EngineStalled while one iteration has run too long (the
        reporter then sends nothing, and the controller sees the replica go silent)."""
        stalled = self.stalled_for
        if stalled:
            raise EngineStalled(f"the engine loop has been in one iteration for {stalled:.0f}s")
        with self._cond:
            self._seq += 1
            return replace(self._snapshot, seq=self._seq)

    @property
    def engine(self) -> LLMEngine:
        """The engine: touch it only inside a function run through call()."""
        return self._engine

    @property
    def cordoned(self) -> bool:
        return self._cordoned

    @property
    def alive(self) -> bool:
        """The loop thread runs and is not stuck in one iteration."""
        return self._thread.is_alive() and not self.stalled_for

    @property
    def stalled_for(self) -> float:
        """Seconds the iteration under way has run, once past stall_after_s; else 0."""
        since = self._busy_since
        busy = 0.0 if since is None else time.monotonic() - since
        return busy if busy > self._stall_after_s else 0.0

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if not self._thread.is_alive():
            # Only once no step can run: a sharded engine's collectives must not interleave.
            close_engine(self._engine)

    def _post(self, item: InboxItem) -> None:
        with self._cond:
            if self._stopped and isinstance(item, RunOnEngine):
                item.future.set_exception(RuntimeError("the engine loop has stopped"))
                return
            self._inbox.append(item)
            self._cond.notify()

    # ---- the engine thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            items = self._wait_for_work()
            if items is None:
                return
            self._busy_since = time.monotonic()
            try:
                for item in items:
                    self._handlers[type(item)](item)
                if self._engine.has_work():
                    self._step()
                self._refresh_snapshot(force=not self._engine.has_work())
            except Exception:  # the loop must outlive any one bad command or step
                logger.exception("engine loop iteration failed; continuing")
            self._publish()

    def _wait_for_work(self) -> list[InboxItem] | None:
        with self._cond:
            while not self._stopped and not self._inbox:
                if self._engine.has_work():  # a paused request alone is no work: wait
                    break
                self._busy_since = None  # idle is not stalled
                self._cond.wait()
            if self._stopped:
                for item in self._inbox:
                    if isinstance(item, RunOnEngine):
                        item.future.set_exception(RuntimeError("the engine loop has stopped"))
                return None
            items = list(self._inbox)
            self._inbox.clear()
            return items

    def _submit(self, item: Submit) -> None:
        self._add(item.spec, self._outbox(item.sink))

    def _abort(self, item: AbortRequest) -> None:
        self._engine.abort_request(item.request_id)

    def _detach(self, item: Detach) -> None:
        # The requests' last deltas (aborts) land in the dropped outbox: nobody listens.
        outbox = self._outboxes.pop(item.sink, None)
        for rid, live in list(self._live.items()):
            if live.outbox is outbox:
                self._engine.abort_request(rid)

    def _attach(self, item: Attach) -> None:
        outbox = self._outbox(item.sink)
        live = self._live.get(item.request_id)
        parking = live.outbox.sink if live is not None else None
        if live is None or not isinstance(parking, _ParkingSink):
            error = ReplicaError(
                ErrorKind.NOT_FOUND,
                f"no migrated request {item.request_id!r} waits here",
                whole_request=True,
            )
            outbox.add_whole(GenerateDelta(item.request_id, 0, (), "", True, "error", error=error))
            return
        # What the request produced while nobody followed it goes first, in order.
        parked = self._outboxes.pop(parking, None)
        if parked is not None and (parked.outs or parked.whole):
            parking.put_batch(*parked.take())
        for batch, whole in parking.batches:
            item.sink.put_batch(batch, whole)
        live.outbox = outbox

    @staticmethod
    def _run_fn(item: RunOnEngine) -> None:
        if not item.future.set_running_or_notify_cancel():
            return
        try:
            item.future.set_result(item.fn())
        except BaseException as exc:  # the caller gets it; the loop goes on
            item.future.set_exception(exc)

    # ---- engine thread only: what commands do (through call()) -------------------------------

    def set_cordoned(self, cordoned: bool) -> None:
        """Refuse (or take again) new requests; those already here run to the end."""
        self._cordoned = cordoned
        self._refresh_snapshot(force=True)

    def abort_now(self, request_id: str) -> bool:
        """Abort a request; whether it was in flight here."""
        found = request_id in self._live
        self._engine.abort_request(request_id)
        return found

    # ---- engine thread only: migration (actors/migration, through call()) ------------------

    def pause_for_migration(self, request_id: str) -> tuple[list[int], RequestState]:
        """Hold the request still; its blocks now and its whole state (replica fields too)."""
        live = self._live.get(request_id)
        if live is None:
            raise ValueError(f"request_id: {request_id!r} is not in flight here")
        self._engine.pause_request(request_id)
        blocks, _ = self._engine.migration_blocks(request_id)
        state = replace(
            self._engine.export_request(request_id),
            client_prompt_tokens=live.num_prompt_tokens,
            num_resumed=live.num_resumed,
        )
        return blocks, state

    def finish_migration_out(self, request_id: str, target_address: str) -> bool:
        """The destination committed: drop the request here and tell its connection where it
        went (after every delta it produced here). False: it ended meanwhile (client abort)."""
        live = self._live.get(request_id)
        if live is None:
            return False
        self._engine.release_request(request_id)
        with self._cond:
            del self._live[request_id]
        moved = GenerateDelta(
            request_id,
            0,
            (),
            "",
            False,
            num_prompt_tokens=live.num_prompt_tokens,
            migrated_to=target_address,
        )
        live.outbox.add_whole(moved)
        return True

    def adopt_migrated(self, state: RequestState, block_ids: list[int]) -> None:
        """Continue a request that migrated here; its deltas wait for its ingress to attach."""
        self._engine.import_request(state, block_ids)
        parking = _ParkingSink()
        outbox = self._outboxes[parking] = _Outbox(parking)
        with self._cond:
            live = _Live(outbox, 1, state.client_prompt_tokens, state.num_resumed)
            self._live[state.request_id] = live

    def abort_if_unattached(self, request_id: str) -> bool:
        """Nobody followed a migrated-in request in time: abort it (True if it was so)."""
        live = self._live.get(request_id)
        if live is None or not isinstance(live.outbox.sink, _ParkingSink):
            return False
        self._engine.abort_request(request_id)
        self._outboxes.pop(live.outbox.sink, None)
        with self._cond:
            del self._live[request_id]
        return True

    def list_requests(self) -> list[RequestInfo]:
        """The running and waiting requests, counted as the client sees them (resumed tokens
        are output, not prompt)."""
        infos = []
        for info in self._engine.list_requests():
            live = self._live.get(info.request_id)
            resumed = live.num_resumed if live is not None else 0
            infos.append(
                replace(
                    info,
                    prompt_tokens=info.prompt_tokens - resumed,
                    output_tokens=info.output_tokens + resumed,
                )
            )
        return infos

    def _outbox(self, sink: DeltaSink) -> _Outbox:
        outbox = self._outboxes.get(sink)
        if outbox is None:
            outbox = self._outboxes[sink] = _Outbox(sink)
        return outbox

    def _add(self, spec: GenerateSpec, outbox: _Outbox) -> None:
        live = self._live.get(spec.request_id)
        if live is not None:
            # A retried command: the request already runs; its deltas follow the newest stream.
            live.outbox = outbox
            return
        if self._cordoned:
            refusal = ReplicaError(
                ErrorKind.UNAVAILABLE,
                "this replica is cordoned: route the request elsewhere",
                whole_request=True,
            )
            outbox.add_whole(_error_delta(spec, refusal))
            return
        params = spec.sampling
        resumed = len(spec.resume_token_ids)
        try:
            if resumed and params.n != 1:
                raise ValueError("resume_token_ids: resuming needs n == 1")
            if resumed >= params.max_tokens:
                outbox.add_whole(self._resumed_done(spec))
                return
            if resumed:
                params = replace(params, max_tokens=params.max_tokens - resumed)
            prompt = list(spec.prompt_token_ids) + list(spec.resume_token_ids)
            self._engine.add_request(
                spec.request_id, prompt, params, priority=spec.priority, adapter=spec.adapter_id
            )
        except ValueError as exc:
            outbox.add_whole(_error_delta(spec, ReplicaError.from_value_error(exc)))
            return
        except Exception as exc:  # a malformed request must not take the loop down
            logger.exception("add_request %s failed", spec.request_id)
            self._engine.abort_request(spec.request_id)
            outbox.add_whole(_error_delta(spec, ReplicaError.internal(exc)))
            return
        with self._cond:
            live = _Live(outbox, params.n, len(spec.prompt_token_ids), resumed)
            self._live[spec.request_id] = live

    @staticmethod
    def _resumed_done(spec: GenerateSpec) -> GenerateDelta:
        return GenerateDelta(
            request_id=spec.request_id,
            index=0,
            token_ids=(),
            text="",
            finished=True,
            finish_reason="length",
            num_prompt_tokens=len(spec.prompt_token_ids),
            num_output_tokens=len(spec.resume_token_ids),
        )

    def _step(self) -> None:
        try:
            outputs = self._engine.step()
        except Exception as exc:  # the engine handles model faults; this is the last guard
            logger.exception("engine step raised; failing %d in-flight requests", len(self._live))
            self._fail_all(ReplicaError.internal(exc))
            return
        get_live = self._live.get
        # Runs once per request per step: the common case is two appends, nothing else.
        for out in outputs:
            live = get_live(out.request_id)
            if live is None:
                continue
            outbox = live.outbox
            if not out.finished and out.logprobs is None and out.error is None:
                outbox.outs.append(out)  # == wire.is_column_entry(out), inlined
                outbox.usage.append(live)
                continue
            outbox.add_whole(_to_delta(out, live))
            if out.finished:
                live.choices_left -= 1
                if live.choices_left <= 0:
                    with self._cond:
                        del self._live[out.request_id]

    def _fail_all(self, error: ReplicaError) -> None:
        """Fail every request with one final delta each (a whole-request error)."""
        with self._cond:
            failed, self._live = self._live, {}
        for rid, live in failed.items():
            self._engine.abort_request(rid)
            live.outbox.add_whole(GenerateDelta(rid, 0, (), "", True, "error", error=error))

    def _publish(self) -> None:
        """One message per connection that got anything this step; none for the others."""
        for outbox in self._outboxes.values():
            if not outbox.outs and not outbox.whole:
                continue
            try:
                batch, whole = outbox.take()
                outbox.sink.put_batch(batch, whole)
            except Exception:  # one broken connection must not stop the loop
                logger.exception("publishing to a connection failed")

    def _refresh_snapshot(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._snapshot_at < self._stats_interval_s:
            return
        snap = self._make_snapshot()
        with self._cond:
            self._snapshot = snap
            self._snapshot_at = now

    def _make_snapshot(self) -> LoadReport:
        s = self._engine.stats()
        load = ReplicaLoad(
            running=s.num_running,
            waiting=s.num_waiting,
            kv_blocks_free=s.kv_blocks_free,
            kv_blocks_total=s.kv_blocks_total,
            block_size=s.block_size,
            tokens_in_flight=s.tokens_in_flight,
            step_time_ms=s.last_step_ms,
            max_running=self._engine.config.scheduler.max_num_seqs,
            num_steps=s.num_steps,
            num_preemptions=s.num_preemptions,
            cordoned=self._cordoned,
            high_priority_running=s.num_high_priority_running,
            migrating_out=self.migrating_out,
            migrating_in=self.migrating_in,
            migrated_bytes=self.migrated_bytes,
            prefix_hashes=frozenset(s.prefix_hashes),
            adapters_loaded=frozenset(a.name for a in self._engine.adapters.listing()),
            adapters_resident=frozenset(self._engine.resident_adapters()),
            adapter_loads=s.adapter_loads,
            adapter_evictions=s.adapter_evictions,
            adapter_requests=s.adapter_requests,
            adapter_slots=self._engine.config.lora.max_loras,
            prompt_tokens_total=s.prompt_tokens_total,
            prefix_hit_tokens_total=s.prefix_hit_tokens_total,
        )
        return LoadReport(self._identity, seq=0, load=load)


def _to_delta(out: RequestOutput, live: _Live) -> GenerateDelta:
    return GenerateDelta(
        request_id=out.request_id,
        index=out.index,
        token_ids=tuple(out.new_token_ids),
        text=out.new_text,
        finished=out.finished,
        finish_reason=out.finish_reason,
        logprobs=tuple(out.logprobs) if out.logprobs is not None else None,
        error=None if out.error is None else ReplicaError(ErrorKind.INTERNAL, out.error),
        num_prompt_tokens=live.num_prompt_tokens,
        num_output_tokens=out.num_output_tokens + live.num_resumed,
    )


def _error_delta(spec: GenerateSpec, error: ReplicaError) -> GenerateDelta:
    return GenerateDelta(
        request_id=spec.request_id,
        index=0,
        token_ids=(),
        text="",
        finished=True,
        finish_reason="error",
        error=error,
        num_prompt_tokens=len(spec.prompt_token_ids),
    )
