"""AdminClient: the one wrapper around the controller's admin HTTP API (CLI, tests, scripts).

Every method returns the route's JSON; a refusal raises AdminError with the API's message and
HTTP status, and an unreachable controller raises AdminError too (status 0), so callers print one
line instead of a traceback.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from orchestrator.admin import PREFIX


class AdminError(RuntimeError):
    def __init__(self, status: int, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body or {}


class AdminClient:
    def __init__(self, url: str, token: str | None, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url + PREFIX, headers=headers, timeout=timeout_s)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---- routes ----------------------------------------------------------------------------

    def replicas(self) -> dict[str, Any]:
        return self._call("GET", "/replicas")

    def replica(self, replica_id: str) -> dict[str, Any]:
        return self._call("GET", f"/replicas/{replica_id}")["replica"]

    def cordon(self, replica_id: str) -> dict[str, Any]:
        return self._call("POST", f"/replicas/{replica_id}/cordon")

    def uncordon(self, replica_id: str) -> dict[str, Any]:
        return self._call("POST", f"/replicas/{replica_id}/uncordon")

    def drain(self, replica_id: str) -> dict[str, Any]:
        return self._call("POST", f"/replicas/{replica_id}/drain")

    def migrate(self, request_id: str, target_replica: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"request_id": request_id}
        if target_replica is not None:
            body["target_replica"] = target_replica
        return self._call("POST", "/migrate", json=body)

    def migrations(self, limit: int = 100) -> list[dict[str, Any]]:
        return self._call("GET", "/migrations", params={"limit": limit})["migrations"]

    def scale(self, replicas: int) -> dict[str, Any]:
        return self._call("POST", "/scale", json={"replicas": replicas})

    def requests(self) -> dict[str, Any]:
        return self._call("GET", "/requests")

    def request(self, request_id: str) -> dict[str, Any]:
        return self._call("GET", f"/requests/{request_id}")["request"]

    def abort(self, request_id: str) -> dict[str, Any]:
        return self._call("POST", f"/requests/{request_id}/abort")

    def events(self, after: int = 0, limit: int = 200) -> list[dict[str, Any]]:
        return self._call("GET", "/events", params={"after": after, "limit": limit})["events"]

    def config(self) -> dict[str, Any]:
        return self._call("GET", "/config")

    def apply_config(self, yaml_text: str) -> dict[str, Any]:
        return self._call(
            "POST", "/config", content=yaml_text, headers={"Content-Type": "application/yaml"}
        )

    def adapters(self) -> list[dict[str, Any]]:
        return self._call("GET", "/adapters")["adapters"]

    def load_adapter(self, name: str, path: str) -> dict[str, Any]:
        return self._call("POST", "/adapters", json={"lora_name": name, "lora_path": path})

    def unload_adapter(self, name: str) -> dict[str, Any]:
        return self._call("DELETE", f"/adapters/{quote(name, safe='/')}")

    # ---- transport -------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise AdminError(0, f"admin API at {self.url} is unreachable: {exc}") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_success and isinstance(body, dict):
            return body
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else response.text[:200]
        raise AdminError(response.status_code, f"{message} (HTTP {response.status_code})", body)
