"""The deployment files are checked, not just written: every `ray up` cluster file validates
against Ray's own cluster-config schema (as `ray up` does before it starts anything), and the
Dockerfiles parse and hold together (sources exist and are not docker-ignored, every package
pip installs is copied, a non-root user, `fleetlm` as the entrypoint). No Docker daemon is
needed; where one is, `docker build .` builds the image."""

from __future__ import annotations

import copy
import fnmatch
import io
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_FILES = sorted((ROOT / "deploy" / "ray-up").glob("*.yaml"))
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "Dockerfile.cpu"]
IMAGE = "ghcr.io/fleetlm/fleetlm:0.1.0"  # what the Dockerfile's comment tags and ray up pulls


def test_there_is_a_file_per_provider() -> None:
    assert {p.stem for p in CLUSTER_FILES} == {"aws", "gcp", "local"}


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.stem)
def test_cluster_file_validates_against_rays_schema(path: Path) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load(path.read_text())
    validate_config(prepare_config(copy.deepcopy(cfg)))  # raises on any schema violation
    assert cfg["docker"]["image"] == IMAGE
    for remote, local in cfg["file_mounts"].items():
        assert (ROOT / local).exists(), f"{path.name}: file_mounts {remote}: {local} is missing"
    # The command the file's header tells users to run names a file the mount provides.
    header = path.read_text().split("\ncluster_name")[0]
    configs = re.findall(r"--config /home/ray/fleetlm/(\S+?)'", header)
    assert configs and all((ROOT / "policies/presets" / c).is_file() for c in configs)
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)


def _parse(path: Path) -> object:
    from dockerfile_parse import DockerfileParser

    return DockerfileParser(fileobj=io.BytesIO(path.read_bytes()))


def _pyproject() -> str:
    return (ROOT / "pyproject.toml").read_text()


def _dockerignored(path: str) -> bool:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return any(fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_holds_together(path: Path) -> None:
    parsed = _parse(path)
    steps = [(i["instruction"], i["value"]) for i in parsed.structure]
    kinds = [k for k, _ in steps]
    assert kinds.count("FROM") == 1 and parsed.baseimage
    copied = set()
    for kind, value in steps:
        if kind == "COPY":
            *sources, _dest = value.split()
            for src in sources:
                assert (ROOT / src).exists(), f"{path.name}: COPY {src}: not in the repo"
                assert not _dockerignored(src), f"{path.name}: COPY {src} is in .dockerignore"
                copied.add(src)
    found = re.search(r"\[tool.setuptools.packages.find\]\ninclude = \[(.*?)\]", _pyproject())
    assert found, "pyproject.toml: [tool.setuptools.packages.find] include"
    packages = re.findall(r'"([^"]+)"', found.group(1))
    assert {p.rstrip("*") for p in packages} <= copied, "pip install . needs every package"
    assert {"pyproject.toml", "README.md"} <= copied
    users = [v for k, v in steps if k == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    assert ("ENTRYPOINT", '["fleetlm"]') in steps
    assert any(k == "RUN" and "pip install" in v and "torch==" in v for k, v in steps)


def test_cpu_image_pins_the_torch_the_makefile_installs() -> None:
    pinned = re.search(r"torch==([\d.]+)", (ROOT / "Makefile").read_text())
    args = _parse(ROOT / "Dockerfile.cpu").args
    assert pinned and args["TORCH_VERSION"] == pinned.group(1)
