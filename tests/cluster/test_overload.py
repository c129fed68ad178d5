"""Overload (issue 13): with every replica's queue full, a new request is a 429 with
Retry-After at once (not a hang, not a 500), and every admitted request still completes with
all its tokens. A request ledger checks that each request ended exactly once: completed, or
refused with an explicit error."""

from __future__ import annotations

import concurrent.futures
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from .conftest import free_port, started_stack, tiny_config_yaml

N = 16  # one replica runs 1 request and queues 1: most of the burst must be refused
MAX_TOKENS = 48


@pytest.fixture(scope="module")
def stack(ray_local: None) -> Iterator[object]:
    text = tiny_config_yaml(replicas=1, http_port=free_port(), max_queue_per_replica=1)
    text = text.replace("max_num_seqs: 16", "max_num_seqs: 1")
    with started_stack(text, http_path="direct") as st:
        yield st


def test_a_full_fleet_answers_429_with_retry_after_and_loses_nothing(stack: object) -> None:
    body = {"model": "fleetlm/tiny-llama", "prompt": [5, 6, 7], "max_tokens": MAX_TOKENS}
    body["ignore_eos"] = True

    def one(i: int) -> tuple[int, httpx.Response]:
        return i, httpx.post(f"{stack.base_url}/v1/completions", json=body, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(N) as pool:
        ledger = dict(pool.map(one, range(N)))  # request -> its one final answer
    assert len(ledger) == N
    outcomes = Counter(r.status_code for r in ledger.values())
    assert set(outcomes) <= {200, 429}, {i: (r.status_code, r.text) for i, r in ledger.items()}
    assert outcomes[200] >= 1 and outcomes[429] >= 1, outcomes
    for r in ledger.values():
        if r.status_code == 200:
            assert r.json()["usage"]["completion_tokens"] == MAX_TOKENS  # admitted: complete
        else:
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["type"] == "rate_limit_error"
    # Afterwards the fleet serves again: a client honouring Retry-After gets through as soon as
    # the replica's next load report shows its queue empty.
    for _ in range(10):
        again = httpx.post(f"{stack.base_url}/v1/completions", json=body, timeout=120)
        if again.status_code != 429:
            break
        time.sleep(int(again.headers["retry-after"]))  # as the 429 asks
    assert again.status_code == 200, again.text
