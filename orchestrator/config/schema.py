"""Pydantic models of the deployment YAML's sections; cross-field checks return key-path issues.

Strict types (YAML already has ints, floats and booleans: "8" for an int is a mistake, not a
number), extra keys forbidden, models frozen. Byte sizes take an int or a string like "256MiB".
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from actors.common.config import EMBEDDED_MODEL
from actors.lora.peft_config import ADAPTER_NAME, AdapterError, check_adapter_dir
from policies.dispatch import DispatchPolicy, make_dispatch_policy
from policies.params import PolicyParamError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40})


def _parse_size(value: Any) -> Any:
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match is None:
            raise ValueError(f"must be a byte count like 268435456 or '256MiB', got {value!r}")
        number, unit = match.groups()
        return int(float(number) * _UNITS[(unit or "B").upper()])
    return value


ByteSize = Annotated[int, BeforeValidator(_parse_size), Field(ge=0)]
Port = Annotated[int, Field(ge=0, le=65535)]  # 0: pick a free port


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ModelSection(Section):
    path: str = Field(default=EMBEDDED_MODEL, min_length=1)  # a local checkpoint directory
    served_model_name: str | None = None  # the OpenAI `model` name; default: path
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    tensor_parallel_size: int = Field(default=1, ge=1)
    max_model_len: int | None = Field(default=None, ge=1)
    load_format: Literal["auto", "safetensors", "dummy"] = "auto"
    seed: int = 0

    @property
    def name(self) -> str:
        return self.served_model_name or self.path


class ResourcesSection(Section):
    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)  # 0: CPU replica


class ReplicasSection(Section):
    """A fixed `count`, or `min`/`max` for autoscaling (starts at min)."""

    count: int | None = Field(default=None, ge=0)
    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=1)
    resources: ResourcesSection = ResourcesSection()

    @property
    def min_replicas(self) -> int:
        if self.count is not None:
            return self.count
        return self.min if self.min is not None else 1

    @property
    def max_replicas(self) -> int:
        if self.count is not None:
            return self.count
        return self.max if self.max is not None else self.min_replicas

    @property
    def initial(self) -> int:
        """Replicas to start with: the count, or min (at least 1 when only max is given)."""
        return self.min_replicas if self.count is not None or self.min is not None else 1


class EngineSection(Section):
    """Mirrors actors.common.config CacheConfig and SchedulerConfig, field for field
    (num_kv_blocks is CacheConfig.num_gpu_blocks_override)."""

    block_size: int = Field(default=16, ge=1, le=1024)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    cpu_kv_cache_bytes: ByteSize = 256 << 20
    swap_space_bytes: ByteSize = 0
    enable_prefix_caching: bool = True
    max_num_batched_tokens: int = Field(default=2048, ge=1)
    max_num_seqs: int = Field(default=256, ge=1)
    preemption_mode: Literal["recompute", "swap"] = "recompute"
    # A fixed KV cache size in blocks instead of sizing it from gpu_memory_utilization (this
    # replica's share of its GPU; replicas sharing one take a share each).
    num_kv_blocks: int | None = Field(default=None, ge=1)


class DispatchSection(Section):
    policy: str = "least_load"
    params: dict[str, Any] = Field(default_factory=dict)


class RebalanceSection(Section):
    """The controller moves requests from pressed replicas to idle ones on its own."""

    enabled: bool = True
    interval_s: float = Field(default=1.0, gt=0)  # between rounds
    high_kv_usage: float = Field(default=0.90, ge=0, le=1)  # counting each request's growth
    low_kv_usage: float = Field(default=0.60, ge=0, le=1)
    max_moves: int = Field(default=2, ge=1)  # migrations started per round
    # KV share a replica running high-priority requests (priority < 0) keeps free (0: off).
    priority_headroom: float = Field(default=0.10, ge=0, lt=1)


class MigrationSection(Section):
    """Live migration of running requests (actors/migration); fixed for a running deployment."""

    enabled: bool = True  # false: no migration at all (drain and scale-in wait for requests)
    transport: Literal["auto", "host", "cuda_ipc"] = "auto"  # auto: cuda_ipc on GPU, else host
    downtime_budget_ms: float = Field(default=20.0, ge=0)
    max_stages: int = Field(default=4, ge=0)
    max_concurrent_per_replica: int = Field(default=2, ge=1)
    reservation_timeout_s: float = Field(default=30.0, gt=0)
    attach_timeout_s: float = Field(default=30.0, gt=0)
    rebalance: RebalanceSection = RebalanceSection()


class AdapterSource(Section):
    name: str = Field(pattern=f"^{ADAPTER_NAME}$")  # the OpenAI model suffix
    path: str = Field(min_length=1)  # a PEFT directory under one of adapters.allowed_dirs


class AdapterPlacementSection(Section):
    """Demand-driven adapter placement across replicas (policies/adapters.py, docs/lora.md)."""

    enabled: bool = True
    interval_s: float = Field(default=2.0, gt=0)  # between rounds
    replica_rps: float = Field(default=4.0, gt=0)  # one adapter's req/s per device holder
    down_ratio: float = Field(default=0.5, gt=0, lt=1)  # let a holder go below this share
    hold_s: float = Field(default=30.0, gt=0)  # no let-go within this long of a change
    settle_s: float = Field(default=5.0, gt=0)  # no change this soon after one (reports lag)
    idle_s: float = Field(default=300.0, gt=0)  # no requests this long: off every device
    window_s: float = Field(default=30.0, gt=0)  # demand's sliding window
    max_actions: int = Field(default=8, ge=1)  # changes per round, cluster-wide


class AdaptersSection(Section):
    """Multi-LoRA (docs/lora.md): PEFT adapters every replica serves beside the base model."""

    max_loras: int = Field(default=0, ge=0)  # adapters in device memory at once; 0: LoRA off
    max_lora_rank: int = Field(default=16, ge=1, le=512)
    allowed_dirs: tuple[str, ...] = Field(default=(), strict=False)  # adapters load only from these
    preload: tuple[AdapterSource, ...] = Field(default=(), strict=False)  # served from the start
    # A request naming an adapter nobody serves loads it from resolve_dir/NAME when that is a
    # PEFT directory (inside allowed_dirs); None: unknown adapters are a 404.
    resolve_dir: str | None = None
    placement: AdapterPlacementSection = AdapterPlacementSection()


class ServerSection(Section):
    host: str = "127.0.0.1"
    http_port: Port = 8000
    controller_grpc_port: Port = 50051
    # The admin API (and dashboard) on the controller; loopback unless configured otherwise.
    admin_host: str = "127.0.0.1"
    admin_port: Port = 8080
    report_interval_s: float = Field(default=0.5, gt=0)
    # One engine-loop iteration (a step) longer than this is a wedged engine: out of dispatch,
    # then replaced. Above the longest step a deployment can take (a long prefill, a swap).
    engine_stall_s: float = Field(default=60.0, gt=0)
    unhealthy_after_s: float = Field(default=3.0, gt=0)
    max_queue_per_replica: int = Field(default=64, ge=1)
    max_body_bytes: ByteSize = 1 << 20
    # What one request may ask for: choices (OpenAI's cap, 128, at most), and stop strings
    # (each is checked against every new token) or stop token ids.
    max_n: int = Field(default=128, ge=1, le=128)
    max_stop_sequences: int = Field(default=16, ge=0, le=1024)


class SecuritySection(Section):
    """gRPC trust (TLS PEM paths and the shared secret, as actors.common.config.GrpcSecurity
    takes them), API keys and the admin token."""

    tls_cert_file: str | None = None  # absent: plaintext gRPC (a trusted network only)
    tls_key_file: str | None = None
    tls_ca_file: str | None = None  # verifies peers; default: the cert (self-signed deployments)
    # Lax only to take the YAML list as a tuple; items must still be strings.
    api_keys: tuple[str, ...] | None = Field(default=None, strict=False)
    api_keys_env: str | None = None  # name of an env var holding comma-separated keys
    # The admin API's bearer token (else $FLEETLM_ADMIN_TOKEN, else `fleetlm serve` makes one).
    admin_token: str | None = Field(default=None, min_length=16)
    # What every gRPC call between controller, ingress and replicas carries, and servers
    # demand (else $FLEETLM_GRPC_SECRET, else whoever starts the controller makes one).
    grpc_secret: str | None = Field(default=None, min_length=16)

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None


class DeploymentConfig(Section):
    model: ModelSection = ModelSection()
    replicas: ReplicasSection = ReplicasSection(count=2)
    engine: EngineSection = EngineSection()
    dispatch: DispatchSection = DispatchSection()
    migration: MigrationSection = MigrationSection()
    adapters: AdaptersSection = AdaptersSection()
    server: ServerSection = ServerSection()
    security: SecuritySection = SecuritySection()

    def dispatch_params(self) -> dict[str, Any]:
        """The policy's params with max_queue from server.max_queue_per_replica (the wire form)."""
        return {**self.dispatch.params, "max_queue": self.server.max_queue_per_replica}

    def make_dispatch_policy(self) -> DispatchPolicy:
        """A fresh policies.dispatch policy object for this config."""
        return make_dispatch_policy(self.dispatch.policy, self.dispatch_params())

    def engine_kwargs(self) -> dict[str, dict[str, Any]]:
        """Keyword arguments of actors.common.config ModelConfig, CacheConfig, SchedulerConfig."""
        m, e = self.model, self.engine
        return {
            "model": {
                "model": m.path,
                "dtype": m.dtype,
                "max_model_len": m.max_model_len,
                "load_format": m.load_format,
                "seed": m.seed,
            },
            "cache": {
                "block_size": e.block_size,
                "gpu_memory_utilization": e.gpu_memory_utilization,
                "cpu_kv_cache_bytes": e.cpu_kv_cache_bytes,
                "swap_space_bytes": e.swap_space_bytes,
                "enable_prefix_caching": e.enable_prefix_caching,
                "num_gpu_blocks_override": e.num_kv_blocks,
            },
            "scheduler": {
                "max_num_batched_tokens": e.max_num_batched_tokens,
                "max_num_seqs": e.max_num_seqs,
                "preemption_mode": e.preemption_mode,
            },
        }


def cross_checks(cfg: DeploymentConfig) -> list[tuple[str, str]]:
    """Checks spanning fields or sections, each as (key path, reason)."""
    return section_checks({name: getattr(cfg, name) for name in DeploymentConfig.model_fields})


def section_checks(sections: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The cross-field checks of the sections given; a missing section skips its checks."""
    issues = []
    if "replicas" in sections and "model" in sections:
        issues += _replica_issues(sections["replicas"], sections["model"])
    if "adapters" in sections and "model" in sections:
        if sections["adapters"].max_loras and sections["model"].tensor_parallel_size > 1:
            reason = "LoRA adapters with tensor_parallel_size > 1 are not supported yet"
            issues.append(("adapters.max_loras", reason))
    checks = (
        ("engine", _engine_issues),
        ("migration", _migration_issues),
        ("adapters", _adapter_issues),
        ("dispatch", _dispatch_issues),
        ("server", _server_issues),
        ("security", _security_issues),
    )
    for name, check in checks:
        if name in sections:
            issues += check(sections[name])
    return issues


def valid_sections(data: Mapping[str, Any]) -> dict[str, Any]:
    """The sections of `data` that validate on their own (absent ones: their defaults), so a
    file with a type error elsewhere still gets every cross-field problem reported at once. A
    section with invalid keys is taken without them (their defaults in their place), so its
    other keys are still checked."""
    out: dict[str, Any] = {}
    for name, info in DeploymentConfig.model_fields.items():
        if name not in data:
            out[name] = info.get_default()
            continue
        section = data[name]
        try:
            out[name] = info.annotation.model_validate(section)
        except ValidationError as exc:
            if not isinstance(section, Mapping):
                continue
            bad = {e["loc"][0] for e in exc.errors() if e["loc"]}
            try:
                rest = {k: v for k, v in section.items() if k not in bad}
                out[name] = info.annotation.model_validate(rest)
            except ValidationError:
                continue
    return out


def _replica_issues(r: ReplicasSection, model: ModelSection) -> list[tuple[str, str]]:
    tp = model.tensor_parallel_size
    issues = []
    if r.count is not None and (r.min is not None or r.max is not None):
        issues.append(("replicas.count", "give either count or min/max, not both"))
    if r.min is not None and r.max is not None and r.min > r.max:
        issues.append(("replicas.min", f"must be <= replicas.max ({r.max}), got {r.min}"))
    gpus = r.resources.num_gpus
    if gpus > 0 and gpus != tp and not (tp == 1 and gpus < 1):
        issues.append(
            (
                "replicas.resources.num_gpus",
                f"must be {tp} (one GPU per tensor-parallel shard), or a fraction below 1 with "
                f"tensor_parallel_size 1; got {gpus:g}",
            )
        )
    return issues


def _engine_issues(e: EngineSection) -> list[tuple[str, str]]:
    issues = []
    if e.block_size & (e.block_size - 1):
        issues.append(("engine.block_size", f"must be a power of two, got {e.block_size}"))
    if e.preemption_mode == "swap" and e.swap_space_bytes == 0:
        issues.append(("engine.swap_space_bytes", "must be > 0 when preemption_mode is swap"))
    if e.max_num_batched_tokens < e.max_num_seqs:
        issues.append(
            (
                "engine.max_num_batched_tokens",
                f"must be >= engine.max_num_seqs ({e.max_num_seqs}) so every running request "
                f"can decode each step, got {e.max_num_batched_tokens}",
            )
        )
    return issues


def _migration_issues(m: MigrationSection) -> list[tuple[str, str]]:
    r = m.rebalance
    if r.low_kv_usage >= r.high_kv_usage:
        return [
            (
                "migration.rebalance.low_kv_usage",
                f"must be < high_kv_usage ({r.high_kv_usage:g}), got {r.low_kv_usage:g}",
            )
        ]
    return []


def _adapter_issues(a: AdaptersSection) -> list[tuple[str, str]]:
    issues = []
    if a.preload and not a.max_loras:
        issues.append(("adapters.max_loras", "must be >= 1 when adapters.preload lists adapters"))
    if a.resolve_dir is not None:
        real = Path(a.resolve_dir).resolve()
        roots = [Path(d).resolve() for d in a.allowed_dirs]
        if not any(real == r or r in real.parents for r in roots):
            issues.append(("adapters.resolve_dir", "must be inside one of adapters.allowed_dirs"))
        elif not real.is_dir():
            issues.append(("adapters.resolve_dir", f"{a.resolve_dir!r} is not a directory"))
    names = [src.name for src in a.preload]
    for i, src in enumerate(a.preload):
        where = f"adapters.preload.{i}"
        if names.count(src.name) > 1:
            issues.append((f"{where}.name", f"{src.name!r} is listed more than once"))
        reason = adapter_path_issue(src.path, a.allowed_dirs, a.max_lora_rank)
        if reason:
            issues.append((f"{where}.path", reason))
    return issues


def model_path_issue(path: str, load_format: str) -> str | None:
    """Why `path` holds no model a replica on this machine could load (None: it does, or it is
    the embedded model). Checked by `fleetlm config check`: a wrong path otherwise shows only
    when every replica fails to start."""
    if path == EMBEDDED_MODEL:
        return None
    where = Path(path)
    if not where.is_dir():
        return f"{path!r} is not a directory on this machine (fleetlm never downloads models)"
    for name in ("config.json", "tokenizer.json"):
        if not (where / name).is_file():
            return f"{path!r} holds no {name}: not a Hugging Face checkpoint fleetlm can read"
    if load_format != "dummy" and not any(where.glob("*.safetensors")):
        return f"{path!r} holds no *.safetensors weights (model.load_format: dummy runs without)"
    return None


def adapter_path_issue(path: str, allowed_dirs: Sequence[str], max_rank: int) -> str | None:
    """Why an adapter may not be loaded from `path` (None: it may): it must resolve, symlinks
    followed, inside one of `allowed_dirs` and hold a PEFT adapter fleetlm serves (its files
    and adapter_config.json; the weights' shapes are checked by the replica)."""
    real = Path(path).resolve()
    roots = [Path(d).resolve() for d in allowed_dirs]
    if not any(real == r or r in real.parents for r in roots):
        where = ", ".join(str(r) for r in roots) or "none set"
        return f"{path!r} is outside adapters.allowed_dirs ({where})"
    try:
        check_adapter_dir(real, max_rank)
    except AdapterError as exc:
        return f"{path!r}: {exc}"
    return None


def _dispatch_issues(d: DispatchSection) -> list[tuple[str, str]]:
    if "max_queue" in d.params:
        return [("dispatch.params.max_queue", "set server.max_queue_per_replica instead")]
    try:
        make_dispatch_policy(d.policy, d.params)
    except PolicyParamError as exc:
        return [(f"dispatch.params.{exc.key}" if exc.key else "dispatch.params", exc.reason)]
    except ValueError as exc:
        return [("dispatch.policy", str(exc).removeprefix("policy: "))]
    return []


def _server_issues(s: ServerSection) -> list[tuple[str, str]]:
    issues = []
    if s.http_port and s.http_port == s.controller_grpc_port:
        issues.append(
            ("server.controller_grpc_port", f"must differ from http_port ({s.http_port})")
        )
    if s.admin_port and s.admin_port in (s.http_port, s.controller_grpc_port):
        issues.append(("server.admin_port", "must differ from http_port and controller_grpc_port"))
    if s.unhealthy_after_s <= s.report_interval_s:
        issues.append(
            (
                "server.unhealthy_after_s",
                f"must be > report_interval_s ({s.report_interval_s:g}) or every replica would "
                f"flap unhealthy, got {s.unhealthy_after_s:g}",
            )
        )
    return issues


def _security_issues(s: SecuritySection) -> list[tuple[str, str]]:
    issues = []
    if (s.tls_cert_file is None) != (s.tls_key_file is None):
        missing = "tls_key_file" if s.tls_key_file is None else "tls_cert_file"
        issues.append((f"security.{missing}", "tls_cert_file and tls_key_file go together"))
    if s.tls_ca_file is not None and s.tls_cert_file is None:
        issues.append(("security.tls_ca_file", "needs tls_cert_file and tls_key_file"))
    for i, key in enumerate(s.api_keys or ()):
        if not key or any(c.isspace() for c in key):
            issues.append((f"security.api_keys[{i}]", "must be non-empty without whitespace"))
    if s.admin_token is not None and any(c.isspace() for c in s.admin_token):
        issues.append(("security.admin_token", "must not contain whitespace"))
    return issues
