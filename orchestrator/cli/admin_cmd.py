"""`fleetlm status | requests | events | cordon | uncordon | drain | migrate | migrations |
scale | adapters`: the admin API from a shell.

They find the admin API at --url, else $FLEETLM_ADMIN_URL, else the URL the last `fleetlm serve`
on this machine recorded, else http://127.0.0.1:8080; the token at --token, else
$FLEETLM_ADMIN_TOKEN, else the one `fleetlm serve` generated (orchestrator/admin/token.py).
Torch-free and Ray-free: these are HTTP calls.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from orchestrator.admin.client import AdminClient, AdminError
from orchestrator.admin.token import find_admin_token, find_admin_url

DEFAULT_ADMIN_URL = "http://127.0.0.1:8080"


def register(subparsers: argparse._SubParsersAction) -> None:
    s = subparsers.add_parser("status", help="the replicas: state, load, node (admin API)")
    _common(s)
    s.set_defaults(func=run_status)

    r = subparsers.add_parser("requests", help="every running and waiting request")
    _common(r)
    r.set_defaults(func=run_requests)

    e = subparsers.add_parser("events", help="the controller's recent events, newest last")
    _common(e)
    e.add_argument("--limit", type=int, default=50)
    e.set_defaults(func=run_events)

    for verb, doc in (
        ("cordon", "stop sending a replica new requests (its running ones finish)"),
        ("uncordon", "let a cordoned replica take new requests again"),
    ):
        c = subparsers.add_parser(verb, help=doc)
        c.add_argument("replica", help="replica id (see `fleetlm status`)")
        _common(c)
        c.set_defaults(func=run_cordon, verb=verb)

    d = subparsers.add_parser("drain", help="empty a replica: its requests move to others")
    d.add_argument("replica", help="replica id (see `fleetlm status`)")
    d.add_argument(
        "--wait", type=float, default=300.0, help="seconds to wait for 'drained' (0: do not)"
    )
    _common(d)
    d.set_defaults(func=run_drain)

    m = subparsers.add_parser("migrate", help="move a running request to another replica")
    m.add_argument("request", help="the request id (the OpenAI response's id)")
    m.add_argument("target", nargs="?", default=None, help="replica id (default: the best)")
    _common(m)
    m.set_defaults(func=run_migrate)

    h = subparsers.add_parser("migrations", help="the most recent migrations")
    h.add_argument("--limit", type=int, default=20)
    _common(h)
    h.set_defaults(func=run_migrations)

    n = subparsers.add_parser("scale", help="set the desired number of replicas")
    n.add_argument("replicas", type=int)
    _common(n)
    n.set_defaults(func=run_scale)

    a = subparsers.add_parser("adapters", help="LoRA adapters: list, load, unload")
    verbs = a.add_subparsers(dest="adapter_verb", required=True)
    listing = verbs.add_parser("list", help="adapters, the replicas serving them, on device")
    _common(listing)
    load = verbs.add_parser("load", help="serve a PEFT adapter on every replica")
    load.add_argument("name")
    load.add_argument("path", help="a PEFT directory under adapters.allowed_dirs")
    _common(load)
    unload = verbs.add_parser("unload", help="stop serving an adapter (running requests finish)")
    unload.add_argument("name")
    _common(unload)
    a.set_defaults(func=run_adapters)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, help=f"admin API base URL ({DEFAULT_ADMIN_URL})")
    parser.add_argument("--token", default=None, help="admin token")
    parser.add_argument("--json", action="store_true", help="print the API's JSON")


def admin_client(args: argparse.Namespace) -> AdminClient:
    url = args.url or find_admin_url() or DEFAULT_ADMIN_URL
    token = args.token or find_admin_token()
    if not token:
        raise ValueError(
            "admin token: none given (--token, $FLEETLM_ADMIN_TOKEN, or the admin-token file "
            "that `fleetlm serve` writes to fleetlm's cache directory)"
        )
    return AdminClient(url, token)


def _run(args: argparse.Namespace, call: Any, show: Any) -> int:
    try:
        with admin_client(args) as client:
            data = call(client)
    except AdminError as exc:
        print(f"fleetlm: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2) if args.json else show(data))
    return 0


def run_status(args: argparse.Namespace) -> int:
    return _run(args, lambda c: c.replicas(), format_status)


def run_requests(args: argparse.Namespace) -> int:
    return _run(args, lambda c: c.requests(), format_requests)


def run_events(args: argparse.Namespace) -> int:
    return _run(args, lambda c: {"events": c.events(limit=args.limit)}, format_events)


def run_cordon(args: argparse.Namespace) -> int:
    verb = args.verb

    def show(data: dict[str, Any]) -> str:
        replica, command = data["replica"], data["command"]
        line = f"replica {replica['id']}: {replica['state']}"
        if command.get("error"):
            line += (
                f" (the replica has not confirmed yet: {command['error']}; the controller retries)"
            )
        return line

    return _run(args, lambda c: getattr(c, verb)(args.replica), show)


def run_drain(args: argparse.Namespace) -> int:
    def drain(client: AdminClient) -> dict[str, Any]:
        data = client.drain(args.replica)
        deadline = time.monotonic() + args.wait
        while data["replica"]["state"] == "draining" and time.monotonic() < deadline:
            time.sleep(0.5)  # polls the admin API while requests move away
            data = {**data, "replica": client.replica(args.replica)}
        return data

    def show(data: dict[str, Any]) -> str:
        replica = data["replica"]
        line = f"replica {replica['id']}: {replica['state']}"
        if replica["state"] == "draining":
            line += f" ({replica.get('running', 0)} running, {replica.get('waiting', 0)} waiting)"
        return line

    return _run(args, drain, show)


def run_migrate(args: argparse.Namespace) -> int:
    def show(m: dict[str, Any]) -> str:
        if m["outcome"] != "committed":
            return f"{m['request_id']}: not moved ({m['reason']})"
        return (
            f"{m['request_id']} {m['source_replica']} -> {m['target_replica']}: committed in "
            f"{m['duration_ms']:.0f} ms "
            f"({m['stages']} stages, {m['bytes']} bytes, downtime {m['downtime_ms']:.1f} ms)"
        )

    return _run(args, lambda c: c.migrate(args.request, args.target), show)


def run_migrations(args: argparse.Namespace) -> int:
    def show(data: dict[str, Any]) -> str:
        lines = [
            f"{m['migration_id']}  {m['request_id']}  {m['source_replica']} -> "
            f"{m['target_replica']}  {m['outcome']}  "
            f"downtime {m['downtime_ms']:.1f} ms  {m['bytes']} bytes"
            + (f"  ({m['reason']})" if m["reason"] else "")
            for m in data["migrations"]
        ]
        return "\n".join(lines) or "(no migrations yet)"

    return _run(args, lambda c: {"migrations": c.migrations(args.limit)}, show)


def run_scale(args: argparse.Namespace) -> int:
    return _run(args, lambda c: c.scale(args.replicas), lambda d: d["message"])


def run_adapters(args: argparse.Namespace) -> int:
    verb = args.adapter_verb
    if verb == "load":
        return _run(args, lambda c: c.load_adapter(args.name, args.path), _adapter_done)
    if verb == "unload":
        return _run(args, lambda c: c.unload_adapter(args.name), _adapter_done)
    return _run(args, lambda c: {"adapters": c.adapters()}, format_adapters)


def _adapter_done(data: dict[str, Any]) -> str:
    verb = "unloaded" if data.get("unloaded") else "loaded"
    where = data["replicas"]
    where = "on every replica" if where == "all" else f"except on {where}"
    version = f" (version {data['version']}, rank {data['rank']})" if data.get("version") else ""
    return f"{data['adapter']}: {verb} {where}{version}"


def format_adapters(data: dict[str, Any]) -> str:
    rows = [
        f"{a['name']}  {a['path']}  serving: {','.join(a['loaded_on']) or '-'}  "
        f"on device: {','.join(a['resident_on']) or '-'}"
        for a in data["adapters"]
    ]
    return "\n".join(rows) or "(no adapters)"


# ---- tables ----------------------------------------------------------------------------------


def format_status(data: dict[str, Any]) -> str:
    policy = data.get("policy", {})
    lines = [
        f"desired replicas: {data.get('desired_replicas')}   dispatch: {policy.get('name')}",
        f"{'replica':10s} {'state':9s} {'address':22s} {'node':10s} {'pid':>7s} "
        f"{'run':>4s} {'wait':>4s} {'kv free':>11s} {'step ms':>8s} {'uptime':>8s} "
        f"{'lora dev/host':>13s}",
    ]
    for r in data.get("replicas", []):
        kv = f"{r.get('kv_blocks_free', 0)}/{r.get('kv_blocks_total', 0)}"
        lines.append(
            f"{r['id']:10s} {r['state']:9s} {r.get('address') or '-':22s} "
            f"{(r.get('node') or '-')[:10]:10s} {r.get('pid') or '-':>7} "
            f"{r.get('running', 0):>4} {r.get('waiting', 0):>4} {kv:>11s} "
            f"{r.get('step_time_ms', 0.0):>8.1f} {_duration(r.get('uptime_s', 0.0)):>8s} "
            f"{len(r.get('adapters_resident', [])):>6}/{len(r.get('adapters_loaded', [])):<6}"
        )
    if not data.get("replicas"):
        lines.append("(no replicas yet)")
    return "\n".join(lines)


def format_requests(data: dict[str, Any]) -> str:
    requests = data.get("requests", [])
    w = max([len("request"), *(len(q["id"]) for q in requests)])  # ids are copied whole
    lines = [
        f"{'request':{w}s} {'replica':10s} {'state':9s} {'prompt':>6s} {'output':>6s} "
        f"{'blocks':>6s} {'age':>7s}"
    ]
    for q in requests:
        lines.append(
            f"{q['id']:{w}s} {q['replica']:10s} {q['state']:9s} {q['prompt_tokens']:>6} "
            f"{q['output_tokens']:>6} {q['kv_blocks']:>6} {_duration(q['age_s']):>7s}"
        )
    if not data.get("requests"):
        lines.append("(no running or waiting requests)")
    for replica, why in data.get("unreachable", {}).items():
        lines.append(f"replica {replica} did not answer: {why}")
    return "\n".join(lines)


def format_events(data: dict[str, Any]) -> str:
    lines = []
    for e in data["events"]:
        stamp = time.strftime("%H:%M:%S", time.localtime(e["time"]))
        who = f" {e['replica']}" if e.get("replica") else ""
        lines.append(f"{stamp} {e['kind']}{who}: {e['message']}")
    return "\n".join(lines) or "(no events)"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"
