"""The controller's adapter catalog: the LoRA adapters the fleet serves (name -> PEFT directory),
seeded from the YAML's `adapters.preload`.

A load or an unload goes to every reachable replica at once. A replica the controller starts
later (scale-out, a replacement for a dead one) loads the catalog before it serves: its spec
carries the catalog as it is then (`settings_for_new`). A load that a replica refuses as invalid
(a bad adapter) is taken back from the replicas that accepted it, so the fleet never half-serves
a new name.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from actors.common.commands import (
    AdapterInfo,
    AdapterList,
    ListAdapters,
    LoadAdapter,
    UnloadAdapter,
)
from actors.common.config import AdapterRef
from actors.common.errors import ErrorKind
from actors.common.types import LoadReport
from actors.lora.peft_config import ADAPTER_NAME, ADAPTER_NAME_RULE
from orchestrator.config.schema import DeploymentConfig, adapter_path_issue
from orchestrator.controller.commander import ReplicaCommander
from orchestrator.controller.events import EventKind
from orchestrator.controller.settings import ControllerSettings
from orchestrator.controller.state import ControllerState

_NAME = re.compile(ADAPTER_NAME)
LOAD_TIMEOUT_S = 60.0  # reading a large adapter and copying it to the device takes a while
TOMBSTONE_S = 60.0  # after an unload, reports listing the adapter are not taken as news


@dataclass(frozen=True)
class AdapterRefused(Exception):
    """A load or unload refused: the HTTP status, the field at fault and why."""

    status: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


class AdapterCatalog:
    def __init__(
        self,
        state: ControllerState,
        commander: ReplicaCommander,
        settings: ControllerSettings,
        config: Callable[[], DeploymentConfig],
    ) -> None:
        self._state = state
        self._commander = commander
        self._config = config
        self._paths = {ref.name: ref.path for ref in settings.spec.adapters}
        self._resolving: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self._unloaded: dict[str, float] = {}  # name -> when: reports may list it a while
        self._asking: set[str] = set()  # replicas asked for their adapters right now
        self._tasks: set[asyncio.Task[None]] = set()

    def observe(self, report: LoadReport) -> None:
        """A replica's load report (on the controller's loop). Adapters it serves that the
        catalog lacks are asked of it and adopted: after a controller restart the catalog is
        rebuilt from the replicas, as the replica records are."""
        now = time.monotonic()
        self._unloaded = {n: t for n, t in self._unloaded.items() if now - t < TOMBSTONE_S}
        unknown = report.load.adapters_loaded - self._paths.keys() - self._unloaded.keys()
        rid = report.identity.replica_id
        if unknown and rid not in self._asking:
            self._asking.add(rid)
            task = asyncio.get_running_loop().create_task(self._adopt(rid))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _adopt(self, replica_id: str) -> None:
        try:
            result = await self._commander.send(replica_id, ListAdapters())
        finally:
            self._asking.discard(replica_id)
        if not isinstance(result.body, AdapterList):
            return
        cfg = self._config().adapters
        for info in result.body.adapters:
            known = info.name in self._paths or info.name in self._unloaded
            issue = adapter_path_issue(info.path, cfg.allowed_dirs, cfg.max_lora_rank)
            if known or issue is not None:
                continue
            self._paths[info.name] = info.path
            self._state.events.add(
                EventKind.ADAPTER_LOADED, f"{info.name} from {info.path} (served by {replica_id})"
            )

    async def resolve(self, name: str) -> str | None:
        """Serve `name` from adapters.resolve_dir if it is there; None when served, else why
        not ("" when there is no resolve_dir to look in). Requests arriving together for one
        name share one load."""
        if name in self._paths:
            return None
        directory = self._config().adapters.resolve_dir
        if directory is None:
            return ""
        if not _NAME.fullmatch(name) or ".." in name.split("/"):
            return f"{name!r} is not an adapter name"
        path = Path(directory) / name
        if not (path / "adapter_config.json").is_file():
            return f"no adapter {name!r} is loaded or found in adapters.resolve_dir"
        task = self._resolving.get(name)
        if task is None:
            task = asyncio.create_task(self.load(name, str(path)))
            self._resolving[name] = task
            task.add_done_callback(lambda _: self._resolving.pop(name, None))
        try:
            await asyncio.shield(task)
        except AdapterRefused as exc:
            return str(exc)
        return None

    def names(self) -> list[str]:
        return sorted(self._paths)

    def refs(self) -> tuple[AdapterRef, ...]:
        return tuple(AdapterRef(n, p) for n, p in sorted(self._paths.items()))

    def settings_for_new(self, settings: ControllerSettings) -> ControllerSettings:
        """`settings` for a replica starting now: it loads the catalog before serving."""
        return replace(settings, spec=replace(settings.spec, adapters=self.refs()))

    def listing(self) -> list[dict[str, Any]]:
        """Each adapter with the replicas that serve it and those holding it on the device."""
        loads = [
            (r.replica_id, r.report.load)
            for r in sorted(self._state.records.values(), key=lambda r: r.replica_id)
            if r.report is not None
        ]
        return [
            {
                "name": name,
                "path": path,
                "loaded_on": [rid for rid, load in loads if name in load.adapters_loaded],
                "resident_on": [rid for rid, load in loads if name in load.adapters_resident],
            }
            for name, path in sorted(self._paths.items())
        ]

    async def load(self, name: object, path: object) -> dict[str, Any]:
        self._check_load(name, path)
        assert isinstance(name, str) and isinstance(path, str)
        targets = self._commander.reachable()
        results = await self._commander.send_all(
            targets, LoadAdapter(name, path), timeout_s=LOAD_TIMEOUT_S
        )
        bad = {rid: r.error for rid, r in results.items() if r.error is not None}
        invalid = [e for e in bad.values() if e.kind is ErrorKind.INVALID_ARGUMENT]
        if invalid:
            if name not in self._paths:  # take it back where it loaded: all or nothing
                loaded = [rid for rid, r in results.items() if r.error is None]
                await self._commander.send_all(loaded, UnloadAdapter(name))
            raise AdapterRefused(400, invalid[0].field or "lora_path", invalid[0].message)
        self._paths[name] = path
        self._unloaded.pop(name, None)
        info = next((r.body for r in results.values() if isinstance(r.body, AdapterInfo)), None)
        self._state.events.add(EventKind.ADAPTER_LOADED, f"{name} from {path}")
        return {
            "adapter": name,
            "path": path,
            "version": info.version if info else None,
            "rank": info.rank if info else None,
            "replicas": {rid: str(err) for rid, err in bad.items()} or "all",
        }

    async def unload(self, name: str) -> dict[str, Any]:
        if name not in self._paths:
            raise AdapterRefused(404, "lora_name", f"{name!r} is not loaded")
        del self._paths[name]  # replicas started from now on do not load it
        self._unloaded[name] = time.monotonic()
        results = await self._commander.send_all(self._commander.reachable(), UnloadAdapter(name))
        failed = {
            rid: str(r.error)
            for rid, r in results.items()
            if r.error is not None and r.error.kind is not ErrorKind.NOT_FOUND
        }
        self._state.events.add(EventKind.ADAPTER_UNLOADED, name)
        return {"adapter": name, "unloaded": True, "replicas": failed or "all"}

    def _check_load(self, name: object, path: object) -> None:
        cfg = self._config().adapters
        if not cfg.max_loras:
            raise AdapterRefused(400, "lora_name", "adapters are off (adapters.max_loras is 0)")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise AdapterRefused(400, "lora_name", f"{name!r}: {ADAPTER_NAME_RULE}")
        if not isinstance(path, str) or not path:
            raise AdapterRefused(400, "lora_path", "must be a non-empty string")
        issue = adapter_path_issue(path, cfg.allowed_dirs, cfg.max_lora_rank)
        if issue:
            raise AdapterRefused(400, "lora_path", issue)
