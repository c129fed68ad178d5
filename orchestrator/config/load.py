"""The deployment YAML: one file configures model, replicas, engine, dispatch, server, security.

    cfg = load_config("policies/presets/default.yaml")      # or parse_config(text, source)
    validate_against_cluster(cfg, [{"gpus": 8, "cpus": 64}])  # checks needing the cluster

Every error is a ConfigError whose lines read `FILE:LINE: key.path: why`. Only yaml.safe_load
ever reads the text (a `!!python/...` tag is refused). Sections and keys are listed in
docs/configuration.md; section models live in orchestrator/config/schema.py.

Run-time changes (`fleetlm config apply FILE`) go through parse_policy_update: the `dispatch`
section is swapped atomically, a changed `replicas` count/min/max becomes the controller's new
desired state, and any other change is refused (model, engine, server, security and per-replica
resources are fixed for a running deployment: redeploy with `fleetlm serve --config FILE`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

import policies
from orchestrator.config.errors import ConfigError, key_line, pydantic_issues
from orchestrator.config.schema import (
    DeploymentConfig,
    DispatchSection,
    ReplicasSection,
    cross_checks,
    section_checks,
    valid_sections,
)

# The YAML policy files users start from live with the policies (data, not code).
PRESETS_DIR = Path(policies.__file__).parent / "presets"
# Sections a running deployment may change through `fleetlm config apply`.
RUNTIME_SECTIONS = ("dispatch", "replicas")


def preset_path(name: str) -> Path:
    """The path of preset `name` (with or without .yaml); ValueError listing presets if unknown."""
    stem = name.removesuffix(".yaml")
    path = PRESETS_DIR / f"{stem}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
        raise ValueError(f"preset: unknown preset {name!r} (known: {known})")
    return path


def load_config(path: str | Path) -> DeploymentConfig:
    """Read and validate a deployment file; ConfigError names the file, key path and reason."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [("", f"cannot read file: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [("", f"not UTF-8 text: {exc.reason}")]) from None
    return parse_config(text, str(path))


def parse_config(text: str, source: str = "<config>") -> DeploymentConfig:
    return _validate(_safe_load(text, source), source, text)


def _validate(data: Mapping[str, Any], source: str, text: str) -> DeploymentConfig:
    try:
        cfg = DeploymentConfig.model_validate(data)
    except ValidationError as exc:
        issues = pydantic_issues(exc, DeploymentConfig)
        named = {key for key, _ in issues}
        # A key pydantic refused was checked with its default: only the others' issues count.
        issues += [i for i in section_checks(valid_sections(data)) if i[0] not in named]
        raise ConfigError(source, issues, text) from None
    issues = cross_checks(cfg)
    if issues:
        raise ConfigError(source, issues, text)
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last,
    so a typo'd duplicate would silently override the setting above it)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (line {line}; first on line {seen[key]})",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _safe_load(text: str, source: str) -> dict[str, Any]:
    try:
        # _UniqueKeyLoader is a yaml.SafeLoader: plain YAML only, Python tags are refused.
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        if "tag:yaml.org,2002:python/" in problem:
            problem = f"Python object tags are refused (plain YAML only): {problem}"
        raise ConfigError(source, [("", f"invalid YAML: {problem}")], line=line) from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(source, [("", f"must be a mapping of sections, got {_kind(data)}")])
    # A section whose keys are all commented out reads as null: it means "the defaults".
    return {key: value for key, value in data.items() if value is not None}


def _kind(value: object) -> str:
    return "a list" if isinstance(value, list) else f"a {type(value).__name__}"


def validate_against_cluster(
    cfg: DeploymentConfig, nodes: Sequence[Mapping[str, Any]], source: str = "<config>"
) -> None:
    """Checks that need the cluster's shape. `nodes`: one mapping per node with gpus and cpus;
    Ray's "GPU"/"CPU" names and `ray.nodes()` entries (dead nodes skipped) are accepted too."""
    alive = [n.get("Resources", n) for n in nodes if n.get("Alive", True)]
    shapes = [(_resource(n, "gpus", "GPU"), _resource(n, "cpus", "CPU")) for n in alive]
    issues = _cluster_issues(cfg, shapes)
    if issues:
        raise ConfigError(source, issues)


def _resource(node: Mapping[str, Any], name: str, ray_name: str) -> float:
    return float(node.get(name, node.get(ray_name, 0.0)))


def _cluster_issues(
    cfg: DeploymentConfig, shapes: list[tuple[float, float]]
) -> list[tuple[str, str]]:
    if not shapes:
        return [("", "the cluster has no nodes")]
    gpus, cpus = cfg.replicas.resources.num_gpus, cfg.replicas.resources.num_cpus
    tp = cfg.model.tensor_parallel_size
    max_gpus = max(g for g, _ in shapes)
    max_cpus = max(c for _, c in shapes)
    if gpus > max_gpus and tp > 1:
        # Shards of one replica are packed on one node (STRICT_PACK) for the NCCL all-reduce.
        return [
            (
                "model.tensor_parallel_size",
                f"{tp} shards need {tp} GPUs on one node; the largest node has {max_gpus:g}",
            )
        ]
    if gpus > max_gpus:
        return [
            (
                "replicas.resources.num_gpus",
                f"{gpus:g} GPUs per replica; the largest node has {max_gpus:g}",
            )
        ]
    if cpus > max_cpus:
        return [
            (
                "replicas.resources.num_cpus",
                f"{cpus:g} CPUs per replica; the largest node has {max_cpus:g}",
            )
        ]
    fits = sum(_replicas_on_node(g, c, gpus, cpus) for g, c in shapes)
    wanted = cfg.replicas.initial
    if fits < wanted:
        key = "replicas.count" if cfg.replicas.count is not None else "replicas.min"
        return [(key, f"{wanted} replicas wanted but the cluster's nodes fit only {fits}")]
    return []


def _replicas_on_node(node_gpus: float, node_cpus: float, gpus: float, cpus: float) -> int:
    by_gpu = int(node_gpus // gpus) if gpus > 0 else 1 << 30
    by_cpu = int(node_cpus // cpus) if cpus > 0 else 1 << 30
    return min(by_gpu, by_cpu)


@dataclass(frozen=True)
class ConfigUpdate:
    """A validated `fleetlm config apply`: the new whole config and which sections changed."""

    config: DeploymentConfig
    changed: tuple[str, ...]  # a subset of RUNTIME_SECTIONS

    @property
    def dispatch(self) -> DispatchSection:
        return self.config.dispatch

    @property
    def replicas(self) -> ReplicasSection:
        return self.config.replicas

    @property
    def policy_name(self) -> str:
        return self.config.dispatch.policy

    @property
    def policy_params(self) -> dict[str, Any]:
        """The params routers build the policy with (max_queue included)."""
        return self.config.dispatch_params()


def parse_policy_update(
    text: str, current: DeploymentConfig | None = None, source: str = "<update>"
) -> ConfigUpdate:
    """Validate a run-time update against the running config `current`.

    The text is a whole deployment file or only some sections (e.g. just `dispatch:`); sections
    it leaves out keep their current value. Changing anything outside `dispatch` and the replica
    count/min/max raises ConfigError naming the first differing key. Nothing is applied here:
    the caller swaps in `update.config` atomically, so a refused update leaves the old policy.
    """
    current = current if current is not None else DeploymentConfig()
    data = _safe_load(text, source)
    new = _validate(_merge_update(current, data), source, text)
    issues: list[tuple[str, str]] = []
    changed: list[str] = []
    for section in DeploymentConfig.model_fields:
        old_value = getattr(current, section).model_dump()
        new_value = getattr(new, section).model_dump()
        if old_value == new_value:
            continue
        if section == "replicas" and old_value["resources"] != new_value["resources"]:
            issues.append(_frozen_issue("replicas.resources", old_value, new_value, "resources"))
        elif section in RUNTIME_SECTIONS:
            changed.append(section)
        else:
            issues.append(_frozen_issue(section, old_value, new_value))
    if issues:
        raise ConfigError(source, issues, text)
    return ConfigUpdate(new, tuple(changed))


def _merge_update(current: DeploymentConfig, data: Mapping[str, Any]) -> dict[str, Any]:
    """Keys the update gives replace the current ones; `dispatch` is replaced as a whole (old
    params would not fit a new policy), and a replica count replaces min/max and vice versa."""
    merged: dict[str, Any] = current.model_dump(mode="python")
    for section, value in data.items():
        old = merged.get(section)
        if section == "dispatch" or not isinstance(value, Mapping) or not isinstance(old, dict):
            merged[section] = value
            continue
        if section == "replicas":
            old = dict(old)
            if "count" in value:
                old.update(min=None, max=None)
            if "min" in value or "max" in value:
                old.update(count=None)
        merged[section] = _deep_merge(old, value)
    return merged


def _deep_merge(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(old)
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _frozen_issue(
    prefix: str, old: Mapping[str, Any], new: Mapping[str, Any], sub: str | None = None
) -> tuple[str, str]:
    old, new = (old[sub], new[sub]) if sub else (old, new)
    key = next(k for k in new if old.get(k) != new.get(k))
    return (
        f"{prefix}.{key}",
        f"cannot change while running (running {old.get(key)!r}, file has {new.get(key)!r}); "
        "only dispatch and the replica count/min/max change at run time — redeploy with "
        "`fleetlm serve --config FILE`",
    )


__all__ = [
    "PRESETS_DIR",
    "RUNTIME_SECTIONS",
    "ConfigError",
    "ConfigUpdate",
    "DeploymentConfig",
    "key_line",
    "load_config",
    "parse_config",
    "parse_policy_update",
    "preset_path",
    "validate_against_cluster",
]
