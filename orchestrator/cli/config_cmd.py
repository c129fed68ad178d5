"""`fleetlm config check FILE` and `fleetlm config apply FILE [--controller ADDR]`.

`check` validates locally and prints a summary (exit 0) or every problem as `FILE:LINE: key: why`
(exit 2). `apply` validates the same way, then sends the text to the running controller, which
swaps the dispatch policy atomically (and takes a new replica count as desired state) or refuses
the file and keeps the old policy (exit 2 with its message).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from policies.config import ConfigError, DeploymentConfig, load_config

DEFAULT_CONTROLLER = "127.0.0.1:50051"
EXIT_INVALID = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="check or apply a deployment YAML file")
    actions = parser.add_subparsers(dest="config_command", required=True)

    check = actions.add_parser("check", help="validate a deployment file and print a summary")
    check.add_argument("file", help="deployment YAML (e.g. policies/presets/default.yaml)")
    check.set_defaults(func=run_check)

    apply = actions.add_parser("apply", help="validate, then apply to a running controller")
    apply.add_argument("file", help="deployment YAML; dispatch (and replica count) may change")
    apply.add_argument(
        "--controller",
        default=None,
        help="controller gRPC address host:port (default: 127.0.0.1:<server.controller_grpc_port>)",
    )
    apply.set_defaults(func=run_apply)


def run_check(args: argparse.Namespace) -> int:
    cfg = _load_or_report(args.file)
    if cfg is None:
        return EXIT_INVALID
    print(f"OK {args.file}")
    print(summary(cfg))
    return 0


def run_apply(args: argparse.Namespace) -> int:
    cfg = _load_or_report(args.file)
    if cfg is None:
        return EXIT_INVALID
    port = cfg.server.controller_grpc_port
    if args.controller is None and port == 0:
        print(
            "fleetlm: error: server.controller_grpc_port is 0 (any free port): pass "
            "--controller HOST:PORT (`fleetlm status` prints it)",
            file=sys.stderr,
        )
        return EXIT_INVALID
    address = args.controller or f"127.0.0.1:{port}"
    ok, message = _send(cfg, address, Path(args.file).read_text(encoding="utf-8"))
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else EXIT_INVALID


def _send(cfg: DeploymentConfig, address: str, yaml_text: str) -> tuple[bool, str]:
    # Imported here so `config check` works on machines without the controller's gRPC stack.
    import grpc

    from actors.replica.tls import TlsFiles
    from orchestrator.controller.client import ControllerClient

    sec = cfg.security
    tls = (
        TlsFiles(cert=sec.tls_cert_file, key=sec.tls_key_file, ca=sec.tls_ca_file)
        if sec.tls
        else None
    )
    client = ControllerClient(address, tls=tls)
    try:
        return client.apply_config(yaml_text)
    except grpc.RpcError as exc:
        return False, f"fleetlm: error: controller at {address}: {exc.code().name} {exc.details()}"
    finally:
        client.close()


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
        f"  server    http://{s.host}:{s.http_port}  controller :{s.controller_grpc_port}",
        f"  security  tls={'on' if cfg.security.tls else 'off'} "
        f"api_keys={'on' if cfg.security.api_keys or cfg.security.api_keys_env else 'off'}",
    ]
    return "\n".join(lines)
