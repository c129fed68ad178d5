"""Sampler: logits [B, V] -> one token per request, with per-request seeded generators.

Processing order (as HF generate and vLLM): repetition penalty (HF semantics, over prompt and
output tokens) -> presence/frequency penalties (OpenAI semantics, over output tokens) ->
temperature (0 is greedy: an exact argmax of the penalized logits) -> top-k -> top-p -> min-p ->
sample. Each filter sees the distribution the previous one left, as HF's warpers chain.

Logprobs are of the model's raw distribution: log_softmax of the logits as the model produced
them, before penalties, temperature and filters (vLLM's default). They describe the model, not
the sampling recipe, so they are comparable across requests with different parameters.

Sampling is an exponential race: argmax(probs / E) with E ~ Exp(1) drawn from the request's own
torch.Generator, which picks token i with probability probs[i]. Each sampled row draws exactly V
numbers from its own generator per step, so a seeded request yields the same tokens whatever
else is in the batch, and its generator state after k steps (export_generator_state) continues
the same sequence in another process (import_generator_state). Generators live on the logits'
device; a CUDA generator's stream also depends on the GPU model, so move requests between like
GPUs to keep the exact sequence.
"""

from __future__ import annotations

import random
import struct
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from actors.common.sampling_params import SamplingParams
from actors.common.types import TokenLogprob
from actors.engine.request import Request

TokenSeq = Sequence[int] | torch.Tensor  # a row's token ids, as a list or a 1-D int tensor
_STATE_MAGIC = b"FLGS"
_STATE_HEADER = struct.Struct("<4sBB8s16s")  # magic, version, has seed, device type, seed


@dataclass(frozen=True)
class PendingGeneratorState:
    """An imported generator state, materialized on the device of the first logits it samples."""

    device_type: str  # "cpu" or "cuda"
    state: bytes  # torch.Generator.get_state() bytes


@dataclass
class SamplerOutput:
    token_ids: list[int]  # [B]
    logprobs: list[TokenLogprob | None] | None  # None when no request asked for logprobs


class Sampler:
    def __init__(self, seed: int | None = None) -> None:
        # Draws seeds for requests that reach the sampler with none (the engine normally sets one).
        # Sampling seeds, reproducible by design; nothing secret comes from it.
        self._seed_rng = random.Random(seed)  # noqa: S311
        # Token histories for penalties, dropped with their request (Request hashes by identity).
        self._history: weakref.WeakKeyDictionary[Request, TokenHistory] = (
            weakref.WeakKeyDictionary()
        )

    def sample(self, logits: torch.Tensor, requests: list[Request]) -> SamplerOutput:
        if logits.dim() != 2 or logits.shape[0] != len(requests):
            raise ValueError(
                f"logits: expected [{len(requests)}, V] for {len(requests)} requests, "
                f"got {list(logits.shape)}"
            )
        logits = logits.float()  # [B, V]
        logprobs = _raw_logprobs(logits, requests)
        logits = apply_penalties(logits, requests, self._histories(requests))
        token_ids = torch.empty(len(requests), dtype=torch.long, device=logits.device)  # [B]
        greedy = [i for i, r in enumerate(requests) if r.sampling_params.temperature == 0.0]
        sampled = [i for i, r in enumerate(requests) if r.sampling_params.temperature != 0.0]
        if not sampled:  # all greedy: skip the gathers
            ids = logits.argmax(dim=-1).tolist()
            return SamplerOutput(ids, _pick_logprobs(logprobs, ids, requests))
        if greedy:
            rows = torch.tensor(greedy, device=logits.device)
            token_ids[rows] = logits[rows].argmax(dim=-1)
        rows = torch.tensor(sampled, device=logits.device)
        reqs = [requests[i] for i in sampled]
        probs = processed_probs(logits[rows], reqs)  # [S, V]
        gens = [self.generator(r, logits.device) for r in reqs]
        token_ids[rows] = exponential_race(probs, gens)
        ids = token_ids.tolist()
        return SamplerOutput(ids, _pick_logprobs(logprobs, ids, requests))

    def _histories(self, requests: list[Request]) -> list[TokenHistory] | None:
        if not any(_penalized(r.sampling_params) for r in requests):
            return None
        out = []
        for req in requests:
            hist = self._history.get(req)
            if hist is None:
                hist = self._history[req] = TokenHistory(req)
            out.append(hist.sync(req))
        return out

    def generator(self, request: Request, device: torch.device) -> torch.Generator:
        """The request's generator on `device`, created (or restored) on first use."""
        gen = request.generator
        if isinstance(gen, torch.Generator):
            if gen.device.type != device.type:
                raise ValueError(
                    f"generator: request {request.request_id} samples on {device.type} but its "
                    f"generator lives on {gen.device.type}"
                )
            return gen
        if request.sampling_seed is None:
            seed = request.sampling_params.seed
            request.sampling_seed = seed if seed is not None else self._seed_rng.getrandbits(63)
        gen = torch.Generator(device=device)
        gen.manual_seed(request.sampling_seed % 2**64)  # any int (user seeds are unbounded)
        if isinstance(request.generator, PendingGeneratorState) and request.generator.state:
            pending = request.generator
            if pending.device_type != device.type:
                raise ValueError(
                    f"generator state: request {request.request_id} was exported from a "
                    f"{pending.device_type} generator and cannot continue on {device.type}"
                )
            gen.set_state(torch.frombuffer(bytearray(pending.state), dtype=torch.uint8))
        request.generator = gen
        return gen

    @staticmethod
    def export_generator_state(request: Request) -> bytes:
        return export_generator_state(request)

    @staticmethod
    def import_generator_state(request: Request, data: bytes) -> None:
        import_generator_state(request, data)


# ---- generator state -----------------------------------------------------------------------


def export_generator_state(request: Request) -> bytes:
    """Serialize the request's sampling position (seed + generator state) for migration."""
    gen = request.generator
    seed = request.sampling_seed
    if isinstance(gen, torch.Generator):
        device_type, state = gen.device.type, gen.get_state().numpy().tobytes()
    elif isinstance(gen, PendingGeneratorState):
        device_type, state = gen.device_type, gen.state
    else:  # never sampled yet: the seed alone restarts the same sequence anywhere
        seed = seed if seed is not None else request.sampling_params.seed
        device_type, state = "", b""
    seed_raw = (seed or 0).to_bytes(16, "little", signed=True)
    header = _STATE_HEADER.pack(_STATE_MAGIC, 1, seed is not None, device_type.encode(), seed_raw)
    return header + state


def import_generator_state(request: Request, data: bytes) -> None:
    """Restore a state from export_generator_state; the next sample continues that sequence."""
    if len(data) < _STATE_HEADER.size:
        raise ValueError("generator state: too short to be an exported generator state")
    magic, version, has_seed, device_raw, seed_raw = _STATE_HEADER.unpack_from(data)
    if magic != _STATE_MAGIC or version != 1:
        raise ValueError("generator state: not produced by export_generator_state (bad header)")
    seed = int.from_bytes(seed_raw, "little", signed=True) if has_seed else None
    request.sampling_seed = seed
    device_type = device_raw.rstrip(b"\0").decode()
    state = bytes(data[_STATE_HEADER.size :])
    request.generator = PendingGeneratorState(device_type, state) if state else None


# ---- logits processing (each step a pure function over a batch) ------------------------------


def _penalized(p: SamplingParams) -> bool:
    return p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0


def apply_penalties(
    logits: torch.Tensor, requests: list[Request], histories: list[TokenHistory] | None = None
) -> torch.Tensor:
    """Repetition, then presence/frequency penalties, on the rows that ask for them. [B, V]"""
    rep = [i for i, r in enumerate(requests) if r.sampling_params.repetition_penalty != 1.0]
    pf = [
        i
        for i, r in enumerate(requests)
        if r.sampling_params.presence_penalty != 0.0 or r.sampling_params.frequency_penalty != 0.0
    ]
    if not rep and not pf:
        return logits
    if histories is None:
        histories = [TokenHistory(r) for r in requests]
    logits = logits.clone()  # rows are written in place below; the caller's tensor stays
    if rep:
        rows = torch.tensor(rep, device=logits.device)
        penalties = [requests[i].sampling_params.repetition_penalty for i in rep]
        tokens = [histories[i].all_tokens() for i in rep]
        logits[rows] = apply_repetition_penalty(logits[rows], tokens, penalties)
    if pf:
        rows = torch.tensor(pf, device=logits.device)
        params = [requests[i].sampling_params for i in pf]
        logits[rows] = apply_presence_frequency_penalties(
            logits[rows],
            [histories[i].output_tokens() for i in pf],
            [p.presence_penalty for p in params],
            [p.frequency_penalty for p in params],
        )
    return logits


def apply_repetition_penalty(
    logits: torch.Tensor, token_ids: Sequence[TokenSeq], penalties: list[float]
) -> torch.Tensor:
    """HF: a seen token's logit is divided by p if positive, multiplied by p if negative."""
    num_rows, vocab = logits.shape
    rows, cols = _flat_positions(token_ids, vocab, logits.device)
    seen = torch.zeros(num_rows, vocab + 1, dtype=torch.bool, device=logits.device)
    seen[rows, cols] = True
    seen = seen[:, :vocab]  # [R, V]
    p = torch.tensor(penalties, device=logits.device, dtype=logits.dtype).unsqueeze(1)  # [R, 1]
    penalized = torch.where(logits < 0, logits * p, logits / p)
    return torch.where(seen, penalized, logits)


def apply_presence_frequency_penalties(
    logits: torch.Tensor,
    output_ids: Sequence[TokenSeq],
    presence: list[float],
    frequency: list[float],
) -> torch.Tensor:
    """OpenAI: logit -= frequency * count + presence * (count > 0), over generated tokens."""
    num_rows, vocab = logits.shape
    rows, cols = _flat_positions(output_ids, vocab, logits.device)
    counts = logits.new_zeros(num_rows, vocab + 1)  # exact while counts < 2**24
    counts.index_put_((rows, cols), torch.ones_like(rows, dtype=logits.dtype), accumulate=True)
    counts = counts[:, :vocab]  # [R, V]
    pres = torch.tensor(presence, device=logits.device, dtype=logits.dtype).unsqueeze(1)
    freq = torch.tensor(frequency, device=logits.device, dtype=logits.dtype).unsqueeze(1)
    return logits - freq * counts - pres * (counts > 0).to(logits.dtype)


def _flat_positions(
    token_ids: Sequence[TokenSeq], vocab: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, token) index pairs of every token of every row, built on `device` without a sync.

    Ids outside [0, V) map to column V, so callers scatter into [R, V + 1] and drop that column.
    """
    seqs = [torch.as_tensor(t, dtype=torch.long) for t in token_ids]
    lengths = [len(t) for t in seqs]
    if not seqs or sum(lengths) == 0:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return empty, empty
    cols = torch.cat(seqs).to(device)  # [N]: one host-to-device copy for the whole batch
    cols = torch.where((cols >= 0) & (cols < vocab), cols, vocab)
    rows = torch.repeat_interleave(
        torch.arange(len(seqs), device=device),
        torch.tensor(lengths, device=device),
        output_size=sum(lengths),
    )  # [N]
    return rows, cols


class TokenHistory:
    """A request's prompt + output tokens in a growing int64 buffer.

    Converting whole token lists from Python every step would cost ~50 ms at batch 256 with
    1k-token prompts; the buffer converts only the tokens appended since the last step. The
    engine only ever appends to a request's output, which is all this relies on.
    """

    def __init__(self, request: Request) -> None:
        self._reset(request)

    def _reset(self, request: Request) -> None:
        self._prompt_len = request.num_prompt_tokens
        self._buf = np.empty(max(64, 2 * request.num_tokens), dtype=np.int64)
        self._buf[: self._prompt_len] = request.prompt_token_ids
        self._len = self._prompt_len
        self.sync(request)

    def sync(self, request: Request) -> TokenHistory:
        """Take in the output tokens appended since the last sync."""
        outputs = request.output_token_ids
        done = self._len - self._prompt_len
        if len(outputs) < done:  # outputs were reset: start over
            self._reset(request)
            return self
        new = outputs[done:]
        if self._len + len(new) > len(self._buf):
            grown = np.empty(2 * (self._len + len(new)), dtype=np.int64)
            grown[: self._len] = self._buf[: self._len]
            self._buf = grown
        self._buf[self._len : self._len + len(new)] = new
        self._len += len(new)
        return self

    def all_tokens(self) -> torch.Tensor:
        return torch.from_numpy(self._buf[: self._len])  # [P + O]

    def output_tokens(self) -> torch.Tensor:
        return torch.from_numpy(self._buf[self._prompt_len : self._len])  # [O]


def processed_probs(logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p for non-greedy rows; returns probabilities [S, V]."""
    params = [r.sampling_params for r in requests]
    temps = torch.tensor([p.temperature for p in params], device=logits.device)
    logits = logits / temps.unsqueeze(1)
    vocab = logits.shape[1]
    top_k = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
    top_p = [p.top_p for p in params]
    if any(k < vocab for k in top_k) or any(p < 1.0 for p in top_p):
        logits = apply_top_k_top_p(logits, top_k, top_p)
    min_p = [p.min_p for p in params]
    if any(m > 0.0 for m in min_p):
        logits = apply_min_p(logits, min_p)
    return logits.softmax(dim=-1)


def apply_top_k_top_p(logits: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    """One ascending sort serves both filters. Ties with the k-th logit survive, as in HF."""
    vocab = logits.shape[1]
    k = torch.tensor(top_k, device=logits.device, dtype=torch.long).clamp(1, vocab)  # [S]
    p = torch.tensor(top_p, device=logits.device, dtype=logits.dtype)  # [S]
    sorted_logits, order = logits.sort(dim=-1)  # ascending, [S, V]
    kth = sorted_logits.gather(1, (vocab - k).unsqueeze(1))  # [S, 1]
    sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
    # Top-p over what top-k left: drop the low tail whose total mass is <= 1 - p; keep the best.
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = cum <= (1.0 - p).unsqueeze(1)
    drop[:, -1] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def apply_min_p(logits: torch.Tensor, min_p: list[float]) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the most likely token's."""
    probs = logits.softmax(dim=-1)  # [S, V]
    m = torch.tensor(min_p, device=logits.device, dtype=probs.dtype).unsqueeze(1)
    threshold = probs.amax(dim=-1, keepdim=True) * m
    return logits.masked_fill(probs < threshold, float("-inf"))


def exponential_race(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """argmax(probs / E), E ~ Exp(1) per row from that row's generator: a draw from probs. [S]"""
    noise = torch.empty_like(probs)  # [S, V]
    for row, gen in enumerate(generators):
        noise[row].exponential_(generator=gen)
    # An exact 0 draw would turn a zero-probability token into 0/0; clamp it away.
    noise.clamp_(min=torch.finfo(noise.dtype).tiny)
    return (probs / noise).argmax(dim=-1)


# ---- logprobs ------------------------------------------------------------------------------


def _raw_logprobs(logits: torch.Tensor, requests: list[Request]) -> torch.Tensor | None:
    if all(r.sampling_params.logprobs is None for r in requests):
        return None
    return logits.log_softmax(dim=-1)  # [B, V], before any processing


def _pick_logprobs(
    logprobs: torch.Tensor | None, token_ids: list[int], requests: list[Request]
) -> list[TokenLogprob | None] | None:
    if logprobs is None:
        return None
    ids = torch.tensor(token_ids, device=logprobs.device).unsqueeze(1)
    chosen = logprobs.gather(1, ids).squeeze(1).tolist()  # [B]
    max_n = max(r.sampling_params.logprobs or 0 for r in requests)
    top_vals, top_ids = logprobs.topk(max_n, dim=-1) if max_n else (None, None)
    top_vals = top_vals.tolist() if top_vals is not None else None
    top_ids = top_ids.tolist() if top_ids is not None else None
    out: list[TokenLogprob | None] = []
    for row, req in enumerate(requests):
        n = req.sampling_params.logprobs
        if n is None:
            out.append(None)
            continue
        top = tuple(zip(top_ids[row][:n], top_vals[row][:n], strict=True)) if n and top_ids else ()
        out.append(TokenLogprob(token_ids[row], chosen[row], top))
    return out
