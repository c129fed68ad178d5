"""The load generator's pure parts: arrivals, lengths, percentiles, goodput, output files."""

from __future__ import annotations

import io
import json
import math
import random
import statistics
from pathlib import Path

import pytest

from orchestrator.cli.loadgen import (
    ProgressPrinter,
    RequestResult,
    WorkloadSpec,
    arrival_offsets,
    build_workload,
    format_summary,
    lognormal_lengths,
    meets_slo,
    percentile,
    summarize,
    write_results,
)


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip([0.0, *times[:-1]], times, strict=True)]


def test_poisson_arrivals_have_the_rate_and_unit_cv() -> None:
    times = arrival_offsets(20000, 50.0, "poisson", 1.0, random.Random(1))
    gaps = _gaps(times)
    assert times == sorted(times)
    assert statistics.fmean(gaps) == pytest.approx(1 / 50.0, rel=0.03)
    assert statistics.pstdev(gaps) / statistics.fmean(gaps) == pytest.approx(1.0, rel=0.05)


def test_gamma_burstiness_keeps_rate_and_changes_variance() -> None:
    gaps = _gaps(arrival_offsets(20000, 10.0, "gamma", 0.25, random.Random(2)))
    assert statistics.fmean(gaps) == pytest.approx(0.1, rel=0.05)
    cv = statistics.pstdev(gaps) / statistics.fmean(gaps)
    assert cv == pytest.approx(1 / math.sqrt(0.25), rel=0.1)  # burstier than Poisson


def test_infinite_rate_sends_everything_at_once() -> None:
    assert arrival_offsets(3, math.inf, "poisson", 1.0, random.Random(0)) == [0.0, 0.0, 0.0]


def test_lognormal_lengths_mean_and_clipping() -> None:
    xs = lognormal_lengths(20000, 200.0, 1.0, 1, 10**9, random.Random(3))
    assert statistics.fmean(xs) == pytest.approx(200.0, rel=0.06)
    assert statistics.median(xs) < 200  # right-skewed like ShareGPT
    clipped = lognormal_lengths(1000, 200.0, 1.0, 5, 50, random.Random(3))
    assert min(clipped) >= 5 and max(clipped) <= 50


def test_workload_fits_the_context_and_vocab_and_is_seeded() -> None:
    spec = WorkloadSpec(num_requests=200, rate=5, max_model_len=128, vocab_size=300, seed=7)
    plans = build_workload(spec)
    assert len(plans) == 200
    for p in plans:
        assert len(p.prompt_token_ids) >= 1 and p.max_tokens >= 1
        assert len(p.prompt_token_ids) + p.max_tokens <= 128
        assert all(16 <= t < 300 for t in p.prompt_token_ids)
    assert build_workload(spec) == plans
    assert build_workload(WorkloadSpec(**{**spec.__dict__, "seed": 8})) != plans


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rate": 0}, "rate"),
        ({"arrival": "uniform"}, "arrival"),
        ({"burstiness": -1}, "burstiness"),
        ({"num_requests": 0}, "num_requests"),
    ],
)
def test_bad_specs_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}"):
        WorkloadSpec(**kwargs)


def test_percentile_matches_linear_interpolation() -> None:
    xs = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(xs, 50) == 3.0
    assert percentile(xs, 0) == 1.0 and percentile(xs, 100) == 5.0
    assert percentile(xs, 90) == pytest.approx(4.6)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def _res(ttft: float, e2e: float, out: int, ok: bool = True) -> RequestResult:
    return RequestResult(
        at_s=0.0, input_tokens=10, ok=ok, ttft_s=ttft, e2e_s=e2e, output_tokens=out
    )


def test_tpot_goodput_and_throughput() -> None:
    fast = _res(0.1, 1.1, 11)  # tpot 100 ms
    slow_first = _res(2.0, 2.5, 6)  # ttft 2 s, tpot 100 ms
    slow_decode = _res(0.1, 3.1, 11)  # tpot 300 ms
    failed = RequestResult(at_s=0.0, input_tokens=10, error="HTTP 503")
    assert fast.tpot_s == pytest.approx(0.1) and _res(0.1, 0.1, 1).tpot_s == 0.0
    assert meets_slo(fast, 500, 150) and not meets_slo(slow_first, 500, 150)
    assert not meets_slo(slow_decode, 500, 150) and meets_slo(slow_decode, None, None)
    s = summarize([fast, slow_first, slow_decode, failed], 10.0, slo_ttft_ms=500, slo_tpot_ms=150)
    assert (s["completed"], s["failed"]) == (3, 1)
    assert s["goodput"] == pytest.approx(0.1)
    assert s["request_throughput"] == pytest.approx(0.3)
    assert s["output_throughput"] == pytest.approx(2.8)
    assert s["total_token_throughput"] == pytest.approx(5.8)
    assert s["ttft_ms"]["p50"] == pytest.approx(100.0)
    assert s["slo_attainment"] == pytest.approx(0.25)
    assert s["errors"] == ["HTTP 503"]
    assert "goodput" in format_summary(s)


def test_write_results_json_and_png(tmp_path: Path) -> None:
    results = [_res(0.01 * i, 0.5 + 0.01 * i, 20) for i in range(1, 20)]
    s = summarize(results, 5.0)
    png = write_results(s, results, tmp_path / "r" / "result.json")
    data = json.loads((tmp_path / "r" / "result.json").read_text())
    assert data["completed"] == 19 and len(data["requests"]) == 19
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_are_strict_json_with_an_infinite_rate(tmp_path: Path) -> None:
    results = [_res(0.01 * i, 0.5 + 0.01 * i, 20) for i in range(1, 5)]
    s = {**summarize(results, 5.0), "workload": {"rate": math.inf, "x": math.nan}}
    write_results(s, results, tmp_path / "result.json")
    text = (tmp_path / "result.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert data["workload"] == {"rate": None, "x": None}


def test_progress_lines_are_throttled_and_the_last_always_shows() -> None:
    out = io.StringIO()
    progress = ProgressPrinter(out, every_s=3600.0)
    for finished in range(1, 11):
        progress(finished, finished // 5, 10)  # requests 5 and 10 failed
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines  # within the hour only the end is shown
    assert lines[0].startswith("fleetlm bench: 10/10 requests done, 2 failed, ")
    every = ProgressPrinter(out := io.StringIO(), every_s=0.0)
    every(1, 0, 3)
    every(2, 1, 3)
    assert out.getvalue().splitlines()[1].startswith("fleetlm bench: 2/3 requests done, 1 failed")
