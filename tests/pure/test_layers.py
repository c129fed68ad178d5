"""The orchestrator side loads no torch at run time (the import-linter contracts say so of the
import graph; this checks the processes): the ingress, the controller, the admin API and the
CLI's non-engine commands."""

from __future__ import annotations

import subprocess
import sys

import pytest

MODULES = {
    "ingress": ["orchestrator.api.deployment", "orchestrator.api.launch", "orchestrator.api.app"],
    "controller": [
        "orchestrator.controller.actor",
        "orchestrator.controller.launcher",
        "orchestrator.controller.host",
    ],
    "admin": ["orchestrator.admin.app", "orchestrator.admin.client"],
    "cli": ["orchestrator.cli.main", "orchestrator.cli.admin_cmd", "orchestrator.cli.config_cmd"],
}


@pytest.mark.parametrize("side", sorted(MODULES))
def test_the_orchestrator_side_loads_no_torch(side: str) -> None:
    imports = "; ".join(f"import {m}" for m in MODULES[side])
    code = (
        f"import sys; {imports}; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'triton') "
        "or m.startswith(('actors.engine', 'actors.models', 'actors.shard', 'actors.replica')))"
        "; print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_fleetlm_status_runs_without_torch() -> None:
    """The CLI's status path end to end: it fails (no controller) but never loads torch."""
    code = (
        "import sys\n"
        "from orchestrator.cli.main import main\n"
        "rc = main(['status', '--url', 'http://127.0.0.1:1', '--token', 'x' * 20])\n"
        "assert rc == 1, rc\n"
        "assert 'torch' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stderr.startswith("fleetlm: error: admin API at http://127.0.0.1:1 is unreachable")
