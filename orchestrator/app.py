"""The declarative entry point: a Ray Serve application builder.

    serve run orchestrator.app:build_app config=policies/presets/default.yaml
    serve deploy serve.yaml      # applications: [{import_path: orchestrator.app:build_app,
                                 #                  args: {config: /etc/fleetlm/config.yaml}}]
    a KubeRay RayService's serveConfigV2 (helm/fleetlm/) says the same

Each build gets or creates the fleetlm controller of the Ray cluster
(orchestrator.controller.launcher.ensure_cluster), on the head node (where a KubeRay
deployment's admin Service points). The first build creates it from the file.
A later one (a redeploy with a changed file) applies the file to the running controller, as
`fleetlm config apply` does. A field that cannot change while running fails the build, naming
the field, and nothing changes. The ingress runs behind Ray Serve's HTTP proxy, which exists on
every node, unlike `fleetlm serve`'s direct path, which pins the ingress to the driver's node.

Args (strings, as `serve run` passes them): `config` (a deployment YAML; default: the default
preset) and `ingress_replicas` (default 1).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ray import serve

from orchestrator.api.deployment import build_ingress
from orchestrator.api.launch import api_key_digests, ingress_settings
from orchestrator.config.load import parse_config, preset_path

logger = logging.getLogger(__name__)

ARGS = ("config", "ingress_replicas")


def build_app(args: dict[str, str]) -> serve.Application:
    from orchestrator.controller.launcher import ensure_cluster

    unknown = sorted(set(args) - set(ARGS))
    if unknown:
        raise ValueError(f"args: unknown {unknown} (known: {list(ARGS)})")
    path = Path(args.get("config") or preset_path("default"))
    text = path.read_text(encoding="utf-8")
    cfg = parse_config(text, source=str(path))
    try:
        ingress_replicas = int(args.get("ingress_replicas", 1))
    except ValueError:
        raise ValueError("args.ingress_replicas: must be an integer") from None
    if ingress_replicas < 1:
        raise ValueError("args.ingress_replicas: must be >= 1")
    api_key_digests(cfg)  # a missing key variable fails the build, not the first request
    cluster, created = ensure_cluster(cfg, text)
    token = cluster.admin_token
    if created and token.source == "generated":
        logger.warning(
            "fleetlm: no admin token configured; this build generated one: dashboard %s/?token=%s",
            cluster.admin_url,
            token.value,
        )
    settings = ingress_settings(
        cfg,
        cluster.controller_address,
        cluster.security,
        ingress_replicas,
        admin_url=cluster.admin_url,
    )
    return build_ingress(settings)
