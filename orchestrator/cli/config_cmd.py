"""`fleetlm config check FILE` and `fleetlm config apply FILE [--url URL --token T]`.

`check` validates locally and prints a summary (exit 0) or every problem as `FILE:LINE: key: why`
(exit 2). `apply` validates the same way, then posts the text to the controller's admin API
(`POST /admin/v1/config`), which swaps the dispatch policy atomically and takes a new replica
count as desired state, or refuses the file and keeps the old config (exit 2 with its message).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.config.load import ConfigError, DeploymentConfig, load_config
from orchestrator.config.schema import model_path_issue

EXIT_INVALID = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="check or apply a deployment YAML file")
    actions = parser.add_subparsers(dest="config_command", required=True)

    check = actions.add_parser("check", help="validate a deployment file and print a summary")
    check.add_argument("file", help="deployment YAML (e.g. policies/presets/default.yaml)")
    check.add_argument(
        "--skip-model-check",
        action="store_true",
        help="do not look for model.path on this machine (it exists only on the GPU nodes)",
    )
    check.set_defaults(func=run_check)

    apply = actions.add_parser("apply", help="validate, then apply to a running controller")
    apply.add_argument("file", help="deployment YAML; dispatch (and replica count) may change")
    apply.add_argument("--url", default=None, help="admin API base URL (as `fleetlm status`)")
    apply.add_argument("--token", default=None, help="admin token")
    apply.set_defaults(func=run_apply)


def run_check(args: argparse.Namespace) -> int:
    cfg = _load_or_report(args.file)
    if cfg is None:
        return EXIT_INVALID
    issue = (
        None if args.skip_model_check else model_path_issue(cfg.model.path, cfg.model.load_format)
    )
    if issue is not None:
        print(f"{args.file}: model.path: {issue}", file=sys.stderr)
        return EXIT_INVALID
    print(f"OK {args.file}")
    print(summary(cfg))
    return 0


def run_apply(args: argparse.Namespace) -> int:
    # Imported here so `config check` needs nothing but the schema.
    from orchestrator.admin.client import AdminError
    from orchestrator.cli.admin_cmd import admin_client

    if _load_or_report(args.file) is None:
        return EXIT_INVALID
    text = Path(args.file).read_text(encoding="utf-8")
    try:
        with admin_client(args) as client:
            reply = client.apply_config(text)
    except AdminError as exc:
        print(f"fleetlm: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(reply["message"])
    return 0


def _load_or_report(path: str) -> DeploymentConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def summary(cfg: DeploymentConfig) -> str:
    """A few lines a person can check the file against."""
    r, res, e, s = cfg.replicas, cfg.replicas.resources, cfg.engine, cfg.server
    count = str(r.count) if r.count is not None else f"{r.min_replicas}..{r.max_replicas}"
    kind = f"{res.num_gpus:g} GPU" if res.num_gpus > 0 else f"{res.num_cpus:g} CPU"
    params = ", ".join(f"{k}={v}" for k, v in sorted(cfg.dispatch.params.items()))
    lines = [
        f"  model     {cfg.model.name} ({cfg.model.dtype}, tp={cfg.model.tensor_parallel_size})",
        f"  replicas  {count} x {kind}",
        f"  engine    block_size={e.block_size} max_num_seqs={e.max_num_seqs} "
        f"max_num_batched_tokens={e.max_num_batched_tokens} preemption={e.preemption_mode}",
        f"  dispatch  {cfg.dispatch.policy}" + (f" ({params})" if params else ""),
        _adapters_line(cfg),
        f"  server    http://{s.host}:{s.http_port}  controller :{s.controller_grpc_port}  "
        f"admin http://{s.admin_host}:{s.admin_port}",
        f"  security  tls={'on' if cfg.security.tls else 'off'} "
        f"api_keys={'on' if cfg.security.api_keys or cfg.security.api_keys_env else 'off'}",
    ]
    return "\n".join(lines)


def _adapters_line(cfg: DeploymentConfig) -> str:
    a = cfg.adapters
    if not a.max_loras:
        return "  adapters  off"
    names = ", ".join(src.name for src in a.preload) or "none"
    resolve = f" resolve_dir={a.resolve_dir}" if a.resolve_dir else ""
    return (
        f"  adapters  max_loras={a.max_loras} max_rank={a.max_lora_rank} preload: {names}{resolve}"
    )
