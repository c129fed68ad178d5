"""The admin commands' tables and their refusals (no controller needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.admin.token import (
    AdminToken,
    find_admin_token,
    find_admin_url,
    token_matches,
    write_admin_files,
)
from orchestrator.cli.admin_cmd import format_events, format_requests, format_status
from orchestrator.cli.main import main


def test_status_table_has_a_row_per_replica() -> None:
    data = {
        "desired_replicas": 2,
        "policy": {"name": "least_load"},
        "replicas": [
            {"id": "r1", "state": "ready", "address": "h:1", "node": "n" * 40, "pid": 7,
             "running": 3, "waiting": 1, "kv_blocks_free": 5, "kv_blocks_total": 9,
             "step_time_ms": 1.25, "uptime_s": 4000, "adapters_loaded": ["sql", "poet"],
             "adapters_resident": ["sql"]},
            {"id": "r2", "state": "starting"},
        ],
    }  # fmt: skip
    lines = format_status(data).splitlines()
    assert lines[0] == "desired replicas: 2   dispatch: least_load"
    row = ["r1", "ready", "h:1", "n" * 10, "7", "3", "1", "5/9", "1.2", "66m", "1/2"]
    assert lines[2].split() == row
    assert lines[3].split()[:3] == ["r2", "starting", "-"]


def test_requests_table_keeps_whole_ids_and_says_who_did_not_answer() -> None:
    rid = "chatcmpl-" + "f" * 32
    data = {
        "requests": [
            {"id": rid, "replica": "r1", "state": "running", "prompt_tokens": 3,
             "output_tokens": 9, "kv_blocks": 1, "age_s": 1.5},
        ],
        "unreachable": {"r2": "timeout: no answer"},
    }  # fmt: skip
    out = format_requests(data)
    assert rid in out and "replica r2 did not answer: timeout: no answer" in out
    assert "no running" in format_requests({"requests": []})
    assert format_events({"events": []}) == "(no events)"


def test_admin_files_round_trip_with_a_private_token(tmp_path: Path) -> None:
    token = AdminToken("t" * 24, "generated")
    path = write_admin_files("http://127.0.0.1:8080", token, root=tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert find_admin_token(tmp_path) == "t" * 24
    assert find_admin_url(tmp_path) == "http://127.0.0.1:8080"
    assert token_matches("t" * 24, token.digest) and not token_matches("", token.digest)
    assert not token_matches("t" * 24, "")  # no digest configured: nothing matches


def test_status_without_a_token_says_where_one_comes_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLEETLM_CACHE", str(tmp_path))
    monkeypatch.delenv("FLEETLM_ADMIN_TOKEN", raising=False)
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fleetlm: error: admin token: none given") and "--token" in err
