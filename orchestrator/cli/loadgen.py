"""Open-loop load generator for any OpenAI-compatible server (`fleetlm bench`).

Requests arrive by a Poisson or gamma process regardless of how fast the server answers (open
loop: a slow server builds a queue, as in production). Lengths are ShareGPT-like lognormals.
Each request streams /v1/completions with token-id prompts and `ignore_eos`, so input and output
lengths are exactly the sampled ones. Reports TTFT / TPOT / E2E percentiles, throughput and
goodput (requests per second that meet every given SLO), as JSON and a PNG plot.

The workload and statistics parts are pure (tests/pure/test_loadgen.py); only `run_requests`
talks to a server.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

# ShareGPT conversation lengths are roughly lognormal with a long right tail; sigma ~= 1 fits
# both prompt and answer lengths reasonably (vLLM/DistServe benchmarks use similar shapes).
DEFAULT_SIGMA = 1.0


@dataclass(frozen=True)
class WorkloadSpec:
    num_requests: int = 100
    rate: float = 10.0  # mean requests/s; math.inf sends everything at t = 0
    arrival: str = "poisson"  # poisson | gamma
    burstiness: float = 1.0  # gamma shape; 1 equals Poisson, < 1 is burstier
    input_mean: float = 200.0
    output_mean: float = 180.0
    sigma: float = DEFAULT_SIGMA
    max_model_len: int = 4096  # input + output of one request stays within this
    vocab_size: int = 32000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_requests < 1:
            raise ValueError(f"num_requests: must be >= 1, got {self.num_requests}")
        if not self.rate > 0:
            raise ValueError(f"rate: must be > 0, got {self.rate}")
        if self.arrival not in ("poisson", "gamma"):
            raise ValueError(f"arrival: must be poisson or gamma, got {self.arrival!r}")
        if not self.burstiness > 0:
            raise ValueError(f"burstiness: must be > 0, got {self.burstiness}")
        if self.input_mean < 1 or self.output_mean < 1:
            raise ValueError("input_mean/output_mean: must be >= 1")
        if self.max_model_len < 2:
            raise ValueError(f"max_model_len: must be >= 2, got {self.max_model_len}")


@dataclass(frozen=True)
class RequestPlan:
    at_s: float  # offset from the start of the run
    prompt_token_ids: tuple[int, ...]
    max_tokens: int


@dataclass
class RequestResult:
    at_s: float
    input_tokens: int
    ok: bool = False
    ttft_s: float = math.nan
    e2e_s: float = math.nan
    output_tokens: int = 0
    error: str | None = None
    itl_s: list[float] = field(default_factory=list)  # gaps between streamed chunks

    @property
    def tpot_s(self) -> float:
        """Time per output token after the first (0 for single-token answers)."""
        if not self.ok or self.output_tokens <= 1:
            return 0.0
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


# ---- workload (pure) ------------------------------------------------------------------------


def arrival_offsets(n: int, rate: float, arrival: str, burstiness: float, rng: random.Random):
    """Cumulative arrival times in seconds: exponential (Poisson) or gamma inter-arrival gaps.

    The gamma gaps have shape `burstiness` and mean 1/rate, so the rate is kept and only the
    variance changes (coefficient of variation 1/sqrt(burstiness)).
    """
    if math.isinf(rate):
        return [0.0] * n
    t, out = 0.0, []
    for _ in range(n):
        if arrival == "poisson":
            gap = rng.expovariate(rate)
        else:
            gap = rng.gammavariate(burstiness, 1.0 / (rate * burstiness))
        t += gap
        out.append(t)
    return out


def lognormal_lengths(
    n: int, mean: float, sigma: float, lo: int, hi: int, rng: random.Random
) -> list[int]:
    """Integers from a lognormal with the given mean (mu = ln(mean) - sigma^2 / 2), clipped."""
    mu = math.log(mean) - sigma * sigma / 2.0
    return [min(hi, max(lo, round(rng.lognormvariate(mu, sigma)))) for _ in range(n)]


def build_workload(spec: WorkloadSpec) -> list[RequestPlan]:
    rng = random.Random(spec.seed)  # noqa: S311 (a reproducible workload, not a secret)
    times = arrival_offsets(spec.num_requests, spec.rate, spec.arrival, spec.burstiness, rng)
    max_out = max(1, spec.max_model_len // 2)
    outs = lognormal_lengths(spec.num_requests, spec.output_mean, spec.sigma, 1, max_out, rng)
    ins = lognormal_lengths(
        spec.num_requests, spec.input_mean, spec.sigma, 1, spec.max_model_len - 1, rng
    )
    # Random ids away from the low ids where tokenizers keep their special tokens.
    lo_id = min(16, spec.vocab_size - 1)
    plans = []
    for t, n_in, n_out in zip(times, ins, outs, strict=True):
        n_in = min(n_in, spec.max_model_len - n_out)
        ids = tuple(rng.randrange(lo_id, spec.vocab_size) for _ in range(n_in))
        plans.append(RequestPlan(at_s=t, prompt_token_ids=ids, max_tokens=n_out))
    return plans


# ---- statistics (pure) ----------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]; nan for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _dist_ms(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000.0 for v in values_s]
    out = {f"p{q}": percentile(ms, q) for q in (50, 90, 99)}
    out["mean"] = sum(ms) / len(ms) if ms else math.nan
    return out


def meets_slo(r: RequestResult, slo_ttft_ms: float | None, slo_tpot_ms: float | None) -> bool:
    if not r.ok:
        return False
    if slo_ttft_ms is not None and r.ttft_s * 1000.0 > slo_ttft_ms:
        return False
    return not (slo_tpot_ms is not None and r.tpot_s * 1000.0 > slo_tpot_ms)


def summarize(
    results: list[RequestResult],
    duration_s: float,
    slo_ttft_ms: float | None = None,
    slo_tpot_ms: float | None = None,
) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.input_tokens for r in ok)
    good = sum(1 for r in results if meets_slo(r, slo_ttft_ms, slo_tpot_ms))
    dur = max(duration_s, 1e-9)
    return {
        "num_requests": len(results),
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "duration_s": duration_s,
        "request_throughput": len(ok) / dur,
        "output_throughput": out_tokens / dur,
        "total_token_throughput": (out_tokens + in_tokens) / dur,
        "ttft_ms": _dist_ms([r.ttft_s for r in ok]),
        "tpot_ms": _dist_ms([r.tpot_s for r in ok if r.output_tokens > 1]),
        "e2e_ms": _dist_ms([r.e2e_s for r in ok]),
        "slo": {"ttft_ms": slo_ttft_ms, "tpot_ms": slo_tpot_ms},
        "goodput": good / dur,
        "slo_attainment": good / len(results) if results else math.nan,
        "errors": sorted({r.error for r in results if r.error})[:10],
    }


# ---- talking to a server --------------------------------------------------------------------


async def fetch_model_info(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    """The first model of GET /v1/models (id, and vLLM-style max_model_len / vocab_size)."""
    resp = await client.get(f"{url}/v1/models")
    resp.raise_for_status()
    return resp.json()["data"][0]


async def stream_one(
    client: httpx.AsyncClient, url: str, model: str, plan: RequestPlan
) -> RequestResult:
    res = RequestResult(at_s=plan.at_s, input_tokens=len(plan.prompt_token_ids))
    body = {
        "model": model,
        "prompt": list(plan.prompt_token_ids),
        "max_tokens": plan.max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        # vLLM-style extra: a chunk per token even where a token has no text of its own yet
        # (byte-level pieces, dummy weights), so TTFT and ITL are per token.
        "return_token_ids": True,
    }
    sent = time.perf_counter()
    last = sent
    chunks = 0
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                res.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return res
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                msg = json.loads(line[6:])
                if "error" in msg:
                    res.error = str(msg["error"].get("message"))
                    return res
                now = time.perf_counter()
                if msg.get("choices"):
                    if chunks == 0:
                        res.ttft_s = now - sent
                    else:
                        res.itl_s.append(now - last)
                    chunks += 1
                    last = now
                if msg.get("usage"):
                    res.output_tokens = int(msg["usage"]["completion_tokens"])
    except httpx.HTTPError as exc:
        res.error = f"{type(exc).__name__}: {exc}"
        return res
    res.e2e_s = time.perf_counter() - sent
    res.output_tokens = res.output_tokens or chunks
    res.ok = chunks > 0
    return res


Progress = Callable[[int, int, int], None]  # (finished, failed, total) after each request


class ProgressPrinter:
    """A line on `stream` at most every `every_s` seconds, and at the end, while a run lasts."""

    def __init__(self, stream: TextIO, every_s: float = 5.0) -> None:
        self._stream, self._every_s = stream, every_s
        self._start = self._last = time.monotonic()

    def __call__(self, finished: int, failed: int, total: int) -> None:
        now = time.monotonic()
        if finished < total and now - self._last < self._every_s:
            return
        self._last = now
        line = f"fleetlm bench: {finished}/{total} requests done, {failed} failed, "
        self._stream.write(line + f"{now - self._start:.0f} s\n")
        self._stream.flush()


async def run_requests(
    url: str,
    model: str,
    plans: list[RequestPlan],
    timeout_s: float = 600.0,
    progress: Progress | None = None,
) -> tuple[list[RequestResult], float]:
    """Send every plan at its arrival offset (open loop); returns results and the run's length."""
    limits = httpx.Limits(max_connections=len(plans), max_keepalive_connections=len(plans))
    done = [0, 0]  # finished, failed
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        start = time.perf_counter()

        async def fire(plan: RequestPlan) -> RequestResult:
            delay = start + plan.at_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # waiting for the arrival time, not standing in for work
            result = await stream_one(client, url, model, plan)
            done[0] += 1
            done[1] += not result.ok
            if progress is not None:
                progress(done[0], done[1], len(plans))
            return result

        results = await asyncio.gather(*(fire(p) for p in plans))
        return list(results), time.perf_counter() - start


async def run_benchmark(
    url: str,
    spec: WorkloadSpec,
    slo_ttft_ms: float | None = None,
    slo_tpot_ms: float | None = None,
    model: str | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], list[RequestResult]]:
    url = url.rstrip("/")
    async with httpx.AsyncClient(timeout=30.0) as client:
        info = await fetch_model_info(client, url)
    max_len = info.get("max_model_len") or spec.max_model_len
    vocab = info.get("vocab_size") or spec.vocab_size
    spec = WorkloadSpec(**{**asdict(spec), "max_model_len": max_len, "vocab_size": vocab})
    plans = build_workload(spec)
    results, duration = await run_requests(url, model or info["id"], plans, progress=progress)
    summary = summarize(results, duration, slo_ttft_ms, slo_tpot_ms)
    summary["workload"] = asdict(spec)
    summary["url"] = url
    return summary, results


# ---- output ---------------------------------------------------------------------------------


def write_results(summary: dict, results: list[RequestResult], out: Path) -> Path:
    """JSON with the summary and every request; a PNG next to it. Returns the PNG path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {**summary, "requests": [_request_row(r) for r in results]}
    # Strict JSON: a NaN or an infinite rate (everything at once) is null, not `Infinity`.
    out.write_text(json.dumps(_finite(payload), indent=2, default=str, allow_nan=False))
    png = out.with_suffix(".png")
    write_plot(summary, results, png)
    return png


def _request_row(r: RequestResult) -> dict[str, Any]:
    row = asdict(r)
    row.pop("itl_s")
    row["tpot_s"] = r.tpot_s
    return row


def _finite(o: object) -> object:
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_finite(v) for v in o]
    return o


def write_plot(summary: dict, results: list[RequestResult], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.ok]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, name, vals in (
        (axes[0], "TTFT (ms)", [r.ttft_s * 1000 for r in ok]),
        (axes[1], "TPOT (ms)", [r.tpot_s * 1000 for r in ok if r.output_tokens > 1]),
    ):
        xs = sorted(vals)
        ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))])
        ax.set_xlabel(name)
        ax.set_ylabel("CDF")
        ax.grid(True, alpha=0.3)
    axes[2].scatter([r.at_s for r in ok], [r.e2e_s * 1000 for r in ok], s=6)
    axes[2].set_xlabel("arrival (s)")
    axes[2].set_ylabel("E2E latency (ms)")
    axes[2].grid(True, alpha=0.3)
    w = summary.get("workload", {})
    fig.suptitle(
        f"rate={w.get('rate')} {w.get('arrival')}  ok={summary['completed']}/"
        f"{summary['num_requests']}  out tok/s={summary['output_throughput']:.1f}  "
        f"goodput={summary['goodput']:.2f} req/s"
    )
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"requests: {s['completed']}/{s['num_requests']} ok in {s['duration_s']:.2f} s",
        f"throughput: {s['request_throughput']:.2f} req/s, {s['output_throughput']:.1f} output "
        f"tok/s, {s['total_token_throughput']:.1f} total tok/s",
    ]
    for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
        d = s[key]
        lines.append(
            f"{key[:-3].upper():5s} ms  p50 {d['p50']:.1f}  p90 {d['p90']:.1f}  p99 {d['p99']:.1f}"
        )
    lines.append(
        f"goodput: {s['goodput']:.2f} req/s (SLO ttft={s['slo']['ttft_ms']} ms, "
        f"tpot={s['slo']['tpot_ms']} ms; attainment {s['slo_attainment']:.0%})"
    )
    if s["errors"]:
        lines.append(f"errors: {s['errors']}")
    return "\n".join(lines)
