"""`fleetlm config check` through the real console entry point (no controller needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cli.main import main
from orchestrator.config.load import preset_path


def test_check_prints_ok_and_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(preset_path("gpu-llama3-8b"))  # its model lives on GPU nodes, not here
    assert main(["config", "check", path, "--skip-model-check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK {path}")
    assert "llumnix" in out and "2..8 x 1 GPU" in out


def test_check_reports_every_problem_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("engine:\n  max_num_seqs: 0\ndispatch:\n  policy: fastest\n")
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{path}:2: engine.max_num_seqs: must be >= 1 (got 0)",
        f"{path}:4: dispatch.policy: unknown dispatch policy 'fastest' (known: round_robin, "
        "least_load, power_of_two, llumnix, prefix_affinity, weighted)",
    ]


def test_check_looks_for_the_model_on_this_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(f"model:\n  path: {tmp_path / 'no-model'}\n")
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: model.path: " in err and "is not a directory on this machine" in err
    (tmp_path / "no-model").mkdir()
    assert main(["config", "check", str(path)]) == 2
    assert "holds no config.json" in capsys.readouterr().err
    assert main(["config", "check", str(path), "--skip-model-check"]) == 0
    assert main(["config", "check", str(preset_path("default"))]) == 0  # the embedded model


def test_apply_refuses_an_invalid_file_before_contacting_anyone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("dispatch:\n  params: {nope: 1}\n")
    # An address nothing listens on: a local refusal must not even try to connect.
    args = ["config", "apply", str(path), "--url", "http://127.0.0.1:1", "--token", "t" * 20]
    assert main(args) == 2
    assert "dispatch.params.nope: unknown parameter" in capsys.readouterr().err


def test_apply_with_no_controller_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("dispatch:\n  policy: round_robin\n")
    args = ["config", "apply", str(path), "--url", "http://127.0.0.1:1", "--token", "t" * 20]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("fleetlm: error: admin API at http://127.0.0.1:1 is unreachable")
    assert len(err.strip().splitlines()) == 1
