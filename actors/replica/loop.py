"""The replica's engine loop: drain inbox -> engine.step() -> publish deltas batched per connection.

It runs in one thread that owns the engine (the engine is single-threaded). Other threads only
append commands to the inbox and notify the condition; an idle loop blocks on that condition, it
never spins or sleeps. Each step's outputs are grouped by connection and handed to each
connection's sink once, so a connection gets one message per step however many requests it has.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Protocol

from actors.engine.engine import LLMEngine
from actors.engine.outputs import RequestOutput
from actors.replica.engine_factory import close_engine
from actors.replica.types import GenerateDelta, GenerateSpec, LoadSnapshot, invalid_error

logger = logging.getLogger(__name__)


class DeltaSink(Protocol):
    """Where one connection's deltas go. Called on the engine thread: must not block."""

    def put_batch(self, deltas: list[GenerateDelta]) -> None: ...


@dataclass
class _Live:
    """Per in-flight request bookkeeping (engine thread only)."""

    sink: DeltaSink
    choices_left: int
    num_prompt_tokens: int  # the client's prompt, without resumed tokens
    num_resumed: int


@dataclass(frozen=True)
class ReplicaIdentity:
    replica_id: str
    address: str
    node_id: str = ""
    incarnation: str = ""


class EngineLoop:
    def __init__(
        self, engine: LLMEngine, identity: ReplicaIdentity, stats_interval_s: float = 0.05
    ) -> None:
        self._engine = engine
        self._identity = identity
        self._stats_interval_s = stats_interval_s
        self._cond = threading.Condition()
        self._inbox: deque[tuple] = deque()
        self._live: dict[str, _Live] = {}
        self._stopped = False
        self._seq = 0
        self._snapshot = self._make_snapshot()
        self._snapshot_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)

    # ---- called from any thread ------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, spec: GenerateSpec, sink: DeltaSink) -> None:
        self._post(("add", spec, sink))

    def abort(self, request_id: str) -> bool:
        """Abort a request (idempotent). Returns whether it was in flight."""
        with self._cond:
            found = request_id in self._live
        self._post(("abort", request_id))
        return found

    def detach(self, sink: DeltaSink) -> None:
        """A connection went away: abort every request it carried."""
        self._post(("detach", sink))

    def snapshot(self) -> LoadSnapshot:
        with self._cond:
            self._seq += 1
            return replace(self._snapshot, seq=self._seq)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if not self._thread.is_alive():
            # Only once no step can run: a sharded engine's collectives must not interleave.
            close_engine(self._engine)

    def _post(self, cmd: tuple) -> None:
        with self._cond:
            self._inbox.append(cmd)
            self._cond.notify()

    # ---- the engine thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            cmds = self._wait_for_work()
            if cmds is None:
                return
            ready: dict[int, tuple[DeltaSink, list[GenerateDelta]]] = {}
            try:
                for cmd in cmds:
                    self._apply(cmd, ready)
                if self._engine.has_unfinished_requests():
                    self._step(ready)
                self._refresh_snapshot(force=not self._engine.has_unfinished_requests())
            except Exception:  # the loop must outlive any one bad command or step
                logger.exception("engine loop iteration failed; continuing")
            self._publish(ready)

    def _wait_for_work(self) -> list[tuple] | None:
        with self._cond:
            while not self._stopped and not self._inbox:
                if self._engine.has_unfinished_requests():
                    break
                self._cond.wait()
            if self._stopped:
                return None
            cmds = list(self._inbox)
            self._inbox.clear()
            return cmds

    def _apply(self, cmd: tuple, ready: dict) -> None:
        kind = cmd[0]
        if kind == "add":
            self._add(cmd[1], cmd[2], ready)
        elif kind == "abort":
            self._engine.abort_request(cmd[1])
        elif kind == "detach":
            for rid, live in list(self._live.items()):
                if live.sink is cmd[1]:
                    self._engine.abort_request(rid)

    def _add(self, spec: GenerateSpec, sink: DeltaSink, ready: dict) -> None:
        live = self._live.get(spec.request_id)
        if live is not None:
            # A retried command: the request already runs; its deltas follow the newest stream.
            live.sink = sink
            return
        params = spec.sampling
        resumed = len(spec.resume_token_ids)
        try:
            if resumed and params.n != 1:
                raise ValueError("resume_token_ids: resuming needs n == 1")
            if resumed >= params.max_tokens:
                self._emit(ready, sink, self._resumed_done(spec))
                return
            if resumed:
                params = replace(params, max_tokens=params.max_tokens - resumed)
            prompt = list(spec.prompt_token_ids) + list(spec.resume_token_ids)
            self._engine.add_request(spec.request_id, prompt, params, priority=spec.priority)
        except ValueError as exc:
            self._emit(ready, sink, _error_delta(spec, invalid_error(str(exc))))
            return
        except Exception as exc:  # a malformed request must not take the loop down
            logger.exception("add_request %s failed", spec.request_id)
            self._engine.abort_request(spec.request_id)
            error = f"replica:{type(exc).__name__}: {exc}"
            self._emit(ready, sink, _error_delta(spec, error))
            return
        with self._cond:
            self._live[spec.request_id] = _Live(sink, params.n, len(spec.prompt_token_ids), resumed)

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

    def _step(self, ready: dict) -> None:
        try:
            outputs = self._engine.step()
        except Exception as exc:  # the engine handles model faults; this is the last guard
            logger.exception("engine step raised; failing %d in-flight requests", len(self._live))
            self._fail_all(ready, f"replica:{type(exc).__name__}: {exc}")
            return
        for out in outputs:
            live = self._live.get(out.request_id)
            if live is None:
                continue
            self._emit(ready, live.sink, _to_delta(out, live))
            if out.finished:
                live.choices_left -= 1
                if live.choices_left <= 0:
                    with self._cond:
                        del self._live[out.request_id]

    def _fail_all(self, ready: dict, error: str) -> None:
        """Fail every request with one final delta each; "replica:" errors end all choices."""
        with self._cond:
            failed, self._live = self._live, {}
        for rid, live in failed.items():
            self._engine.abort_request(rid)
            delta = GenerateDelta(rid, 0, (), "", True, "error", error=error)
            self._emit(ready, live.sink, delta)

    @staticmethod
    def _emit(ready: dict, sink: DeltaSink, delta: GenerateDelta) -> None:
        entry = ready.get(id(sink))
        if entry is None:
            ready[id(sink)] = (sink, [delta])
        else:
            entry[1].append(delta)

    @staticmethod
    def _publish(ready: dict) -> None:
        for sink, deltas in ready.values():
            try:
                sink.put_batch(deltas)
            except Exception:  # one broken connection must not stop the loop
                logger.exception("publishing %d deltas failed", len(deltas))

    def _refresh_snapshot(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._snapshot_at < self._stats_interval_s:
            return
        snap = self._make_snapshot()
        with self._cond:
            self._snapshot = snap
            self._snapshot_at = now

    def _make_snapshot(self) -> LoadSnapshot:
        s = self._engine.stats()
        ident = self._identity
        return LoadSnapshot(
            replica_id=ident.replica_id,
            address=ident.address,
            seq=0,
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
            node_id=ident.node_id,
            incarnation=ident.incarnation,
            prefix_hashes=tuple(s.prefix_hashes),
        )


def _to_delta(out: RequestOutput, live: _Live) -> GenerateDelta:
    return GenerateDelta(
        request_id=out.request_id,
        index=out.index,
        token_ids=tuple(out.new_token_ids),
        text=out.new_text,
        finished=out.finished,
        finish_reason=out.finish_reason,
        logprobs=tuple(out.logprobs) if out.logprobs is not None else None,
        error=out.error,
        num_prompt_tokens=live.num_prompt_tokens,
        num_output_tokens=out.num_output_tokens + live.num_resumed,
    )


def _error_delta(spec: GenerateSpec, error: str) -> GenerateDelta:
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
