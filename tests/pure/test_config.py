"""The deployment YAML: presets, every class of bad input, cluster checks, run-time updates."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from orchestrator.config.load import (
    PRESETS_DIR,
    ConfigError,
    DeploymentConfig,
    load_config,
    parse_config,
    parse_policy_update,
    preset_path,
    validate_against_cluster,
)

PRESETS = sorted(PRESETS_DIR.glob("*.yaml"))


def bad(text: str, source: str = "deploy.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source)
    return info.value


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_every_preset_loads_and_builds_its_policy(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.make_dispatch_policy().name == cfg.dispatch.policy


def test_presets_include_the_documented_ones() -> None:
    assert {"default", "prefix-heavy", "gpu-llama3-8b"} <= {p.stem for p in PRESETS}


def test_default_preset_is_what_make_serve_runs() -> None:
    cfg = load_config(preset_path("default"))
    assert cfg.model.path == "fleetlm/tiny-llama"
    assert cfg.replicas.count == 2 and cfg.replicas.resources.num_gpus == 0
    assert cfg.dispatch.policy in ("least_load", "llumnix")
    assert (cfg.server.host, cfg.server.http_port) == ("127.0.0.1", 8000)


def test_empty_file_is_the_default_deployment() -> None:
    assert parse_config("", "empty.yaml") == DeploymentConfig()


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="preset: unknown preset 'nope'.*default"):
        preset_path("nope")


@pytest.mark.parametrize(
    ("text", "key", "line", "why"),
    [
        # unknown keys, at the top and nested
        ("modle:\n  path: x\n", "modle", 1, "unknown key (allowed: model, replicas"),
        ("engine:\n  block_size: 16\n  max_seqs: 4\n", "engine.max_seqs", 3, "max_num_seqs"),
        ("replicas:\n  resources:\n    gpu: 1\n", "replicas.resources.gpu", 3, "num_gpus"),
        # wrong types (strict: YAML has real ints and booleans)
        (
            "engine:\n  max_num_seqs: '8'\n",
            "engine.max_num_seqs",
            2,
            "must be an integer (got '8')",
        ),
        (
            "engine:\n  enable_prefix_caching: 'yes'\n",
            "engine.enable_prefix_caching",
            2,
            "must be true or false",
        ),
        ("engine: 5\n", "engine", 1, "must be a mapping of keys (got 5)"),
        ("dispatch:\n  params: [1]\n", "dispatch.params", 2, "must be a mapping (got a list)"),
        ("security:\n  api_keys: [k1, 2]\n", "security.api_keys[1]", 2, "must be a string (got 2)"),
        ("model:\n  dtype: float8\n", "model.dtype", 2, "must be one of 'auto'"),
        ("engine:\n  cpu_kv_cache_bytes: lots\n", "engine.cpu_kv_cache_bytes", 2, "256MiB"),
        # impossible values
        ("engine:\n  max_num_seqs: 0\n", "engine.max_num_seqs", 2, "must be >= 1 (got 0)"),
        (
            "engine:\n  gpu_memory_utilization: 1.5\n",
            "engine.gpu_memory_utilization",
            2,
            "must be <= 1",
        ),
        ("engine:\n  block_size: 12\n", "engine.block_size", 2, "power of two"),
        ("server:\n  http_port: 70000\n", "server.http_port", 2, "65535"),
        ("model:\n  tensor_parallel_size: 0\n", "model.tensor_parallel_size", 2, "must be >= 1"),
        # cross-field
        ("replicas:\n  count: 2\n  min: 1\n", "replicas.count", 2, "not both"),
        ("replicas:\n  min: 4\n  max: 2\n", "replicas.min", 2, "<= replicas.max"),
        (
            "model: {tensor_parallel_size: 2}\nreplicas:\n  resources: {num_gpus: 1}\n",
            "replicas.resources.num_gpus",
            3,
            "one GPU per tensor-parallel shard",
        ),
        ("engine:\n  preemption_mode: swap\n", "engine.swap_space_bytes", 1, "preemption_mode"),
        (
            "engine:\n  max_num_seqs: 64\n  max_num_batched_tokens: 32\n",
            "engine.max_num_batched_tokens",
            3,
            "max_num_seqs",
        ),
        ("server:\n  unhealthy_after_s: 0.1\n", "server.unhealthy_after_s", 2, "flap"),
        ("server:\n  controller_grpc_port: 8000\n", "server.controller_grpc_port", 2, "differ"),
        ("security:\n  tls_cert_file: c.pem\n", "security.tls_key_file", 1, "together"),
        ("security:\n  api_keys: ['a b']\n", "security.api_keys[0]", 2, "whitespace"),
        # the dispatch section, checked by the policy registry
        ("dispatch:\n  policy: fastest\n", "dispatch.policy", 2, "known: round_robin"),
        ("dispatch:\n  params:\n    bogus: 1\n", "dispatch.params.bogus", 3, "unknown parameter"),
        (
            "dispatch:\n  policy: weighted\n  params:\n    weights:\n      vibes: 2\n",
            "dispatch.params.weights.vibes",
            5,
            "unknown scorer",
        ),
        ("dispatch:\n  params: {max_queue: 3}\n", "dispatch.params.max_queue", 2, "server."),
    ],
)
def test_bad_input_names_file_key_path_line_and_reason(
    text: str, key: str, line: int, why: str
) -> None:
    err = bad(text)
    assert err.key == key, str(err)
    assert str(err).startswith(f"deploy.yaml:{line}: {key}: "), str(err)
    assert why in str(err)


def test_every_problem_is_reported_not_only_the_first() -> None:
    err = bad("engine:\n  max_num_seqs: 0\n  block_size: x\nserver:\n  nope: 1\n")
    keys = {k for k, _ in err.issues}
    assert keys == {"engine.max_num_seqs", "engine.block_size", "server.nope"}
    assert len(str(err).splitlines()) == 3


def test_a_section_with_a_type_error_still_gets_its_other_checks() -> None:
    # block_size's power-of-two check is a section check: it used to be skipped when another
    # key of the same section failed its type, so only the first error of the section showed.
    err = bad("engine:\n  block_size: 3\n  cpu_kv_cache_bytes: lots\n  max_num_seqs: -1\n")
    keys = {k for k, _ in err.issues}
    assert keys == {"engine.block_size", "engine.cpu_kv_cache_bytes", "engine.max_num_seqs"}
    assert "power of two" in str(err)


def test_a_refused_key_is_not_reported_twice() -> None:
    err = bad("engine:\n  block_size: x\n  max_num_seqs: 0\n")
    assert sorted(k for k, _ in err.issues) == ["engine.block_size", "engine.max_num_seqs"]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("- a\n- b\n", "must be a mapping of sections, got a list"),
        ("engine: [\n", "invalid YAML"),
        ("engine:\n  a: 1\n a: 2\n", "invalid YAML"),
    ],
)
def test_malformed_files_name_the_file(text: str, why: str) -> None:
    err = bad(text, "x/deploy.yaml")
    assert str(err).startswith("x/deploy.yaml")
    assert why in str(err)


def test_python_tags_are_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f'model: !!python/object/apply:os.system ["touch {marker}"]\n'
    err = bad(text)
    assert "Python object tags are refused" in str(err)
    assert not marker.exists()


def test_load_config_names_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=f"^{missing}: cannot read file"):
        load_config(missing)


def test_load_config_names_a_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "blob.yaml"
    path.write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(ConfigError, match=f"^{path}: not UTF-8 text"):
        load_config(path)


def test_a_section_with_every_key_commented_out_is_its_defaults() -> None:
    cfg = parse_config("engine:\n  # max_num_seqs: 8\ndispatch:\n")
    assert cfg.engine == DeploymentConfig().engine
    assert cfg.dispatch == DeploymentConfig().dispatch


def test_sizes_accept_units_and_models_are_frozen() -> None:
    cfg = parse_config("engine:\n  cpu_kv_cache_bytes: 64MiB\n  swap_space_bytes: 1.5GB\n")
    assert cfg.engine.cpu_kv_cache_bytes == 64 << 20
    assert cfg.engine.swap_space_bytes == 1_500_000_000
    with pytest.raises(ValueError):
        cfg.engine.max_num_seqs = 3  # type: ignore[misc]


def test_engine_kwargs_build_the_engine_config_dataclasses() -> None:
    from actors.common.config import CacheConfig, ModelConfig, SchedulerConfig

    cfg = load_config(preset_path("gpu-llama3-8b"))
    kw = cfg.engine_kwargs()
    for cls, section in (
        (ModelConfig, "model"),
        (CacheConfig, "cache"),
        (SchedulerConfig, "scheduler"),
    ):
        built = cls(**kw[section])
        for name, value in kw[section].items():
            assert getattr(built, name) == value
        assert set(kw[section]) <= {f.name for f in dataclasses.fields(cls)}
    assert cfg.dispatch_params()["max_queue"] == cfg.server.max_queue_per_replica


# -- cluster-dependent checks -------------------------------------------------------------------

GPU_TP4 = (
    "model: {tensor_parallel_size: 4}\n"
    "replicas:\n  count: 2\n  resources: {num_gpus: 4, num_cpus: 2}\n"
)


def test_tensor_parallel_larger_than_any_node_is_refused() -> None:
    cfg = parse_config(GPU_TP4)
    with pytest.raises(ConfigError, match=r"^d.yaml: model.tensor_parallel_size: 4 shards.*has 2"):
        validate_against_cluster(cfg, [{"gpus": 2, "cpus": 16}, {"GPU": 2, "CPU": 16}], "d.yaml")


def test_replicas_that_do_not_fit_the_cluster_are_refused() -> None:
    cfg = parse_config(GPU_TP4)
    with pytest.raises(ConfigError, match="replicas.count: 2 replicas wanted.*fit only 1"):
        validate_against_cluster(cfg, [{"gpus": 4, "cpus": 8}, {"gpus": 2, "cpus": 8}])
    validate_against_cluster(cfg, [{"gpus": 8, "cpus": 8}])  # two replicas on one 8-GPU node


def test_cpu_and_gpu_resources_are_checked_per_node() -> None:
    gpu = parse_config("replicas:\n  resources: {num_gpus: 1}\n")
    with pytest.raises(ConfigError, match="replicas.resources.num_gpus"):
        validate_against_cluster(gpu, [{"cpus": 64}])
    cpu = parse_config("replicas:\n  resources: {num_cpus: 32}\n")
    with pytest.raises(ConfigError, match="replicas.resources.num_cpus"):
        validate_against_cluster(cpu, [{"cpus": 16}])
    validate_against_cluster(load_config(preset_path("default")), [{"cpus": 2}])


def test_ray_nodes_entries_are_understood_and_dead_nodes_ignored() -> None:
    cfg = parse_config("replicas:\n  count: 2\n  resources: {num_gpus: 1}\n")
    nodes = [
        {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}},
        {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 1.0}},
    ]
    with pytest.raises(ConfigError, match="fit only 1"):
        validate_against_cluster(cfg, nodes)
    validate_against_cluster(cfg, [{**nodes[0]}, {**nodes[1], "Alive": True}])


# -- run-time updates (`fleetlm config apply`) ----------------------------------------------------


def test_dispatch_only_update_is_accepted() -> None:
    current = load_config(preset_path("default"))
    update = parse_policy_update("dispatch:\n  policy: llumnix\n", current, "new.yaml")
    assert update.changed == ("dispatch",)
    assert update.policy_name == "llumnix"
    assert update.policy_params["max_queue"] == current.server.max_queue_per_replica
    assert update.config.model == current.model


def test_whole_file_update_with_same_model_is_accepted() -> None:
    current = load_config(preset_path("default"))
    text = preset_path("default").read_text().replace("least_load", "round_robin")
    assert parse_policy_update(text, current).changed == ("dispatch",)


def test_replica_count_is_desired_state_and_keeps_resources() -> None:
    current = load_config(preset_path("default"))
    update = parse_policy_update("replicas:\n  count: 5\n", current)
    assert update.changed == ("replicas",)
    assert update.replicas.initial == 5
    assert update.replicas.resources == current.replicas.resources


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("engine:\n  max_num_seqs: 8\n", "engine.max_num_seqs"),
        ("model:\n  path: /models/other\n", "model.path"),
        ("replicas:\n  count: 2\n  resources: {num_cpus: 4}\n", "replicas.resources.num_cpus"),
        ("server:\n  http_port: 9000\n", "server.http_port"),
    ],
)
def test_update_of_fixed_sections_is_refused_naming_the_key(text: str, key: str) -> None:
    current = load_config(preset_path("default"))
    with pytest.raises(ConfigError) as info:
        parse_policy_update(text, current, "new.yaml")
    assert info.value.key == key
    assert "cannot change while running" in str(info.value)
    assert str(info.value).startswith("new.yaml:")


def test_invalid_update_is_refused_like_a_bad_file() -> None:
    current = load_config(preset_path("default"))
    with pytest.raises(ConfigError, match=r"new.yaml:3: dispatch.params.nope: unknown parameter"):
        parse_policy_update("dispatch:\n  params:\n    nope: 1\n", current, "new.yaml")


def test_update_switching_to_autoscaling_replaces_the_count() -> None:
    current = load_config(preset_path("default"))
    update = parse_policy_update("replicas:\n  min: 1\n  max: 4\n", current)
    assert (update.replicas.count, update.replicas.min, update.replicas.max) == (None, 1, 4)


def test_update_replaces_dispatch_params_as_a_whole() -> None:
    current = load_config(preset_path("prefix-heavy"))
    update = parse_policy_update("dispatch:\n  policy: least_load\n", current)
    assert update.dispatch.params == {}  # prefix_affinity's params would not fit least_load


def test_config_check_refuses_lora_with_tensor_parallelism() -> None:
    text = "model:\n  tensor_parallel_size: 2\nreplicas:\n  resources: {num_gpus: 2}\n"
    with pytest.raises(ConfigError, match=r"adapters\.max_loras: LoRA adapters with tensor"):
        parse_config(text + "adapters:\n  max_loras: 2\n")


def test_adapter_placement_settings_reach_the_controller_and_bad_ones_name_the_key() -> None:
    from orchestrator.controller.deployment import placement_params

    text = "adapters:\n  max_loras: 4\n  placement: {replica_rps: 2.5, hold_s: 60}\n"
    params = placement_params(parse_config(text))
    assert params is not None and (params.replica_rps, params.hold_s) == (2.5, 60.0)
    assert placement_params(parse_config("adapters:\n  max_loras: 0\n")) is None  # LoRA off
    off = "adapters:\n  max_loras: 4\n  placement: {enabled: false}\n"
    assert placement_params(parse_config(off)) is None
    with pytest.raises(ConfigError, match=r"adapters\.placement\.down_ratio"):
        parse_config("adapters:\n  max_loras: 4\n  placement: {down_ratio: 1.5}\n")


def test_a_key_given_twice_is_refused_with_both_lines() -> None:
    text = "dispatch:\n  policy: least_load\n  policy: round_robin\n"
    with pytest.raises(ConfigError, match=r"duplicate key 'policy' \(line 3; first on line 2\)"):
        parse_config(text)
    with pytest.raises(ConfigError, match="duplicate key 'engine'"):
        parse_config("engine: {}\nengine:\n  max_num_seqs: 8\n")
