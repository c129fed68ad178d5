"""RayBackend: every Ray call the controller makes, behind one class (tests swap a Fake in here).

Replicas are detached named actors, so they outlive a controller restart; a restarted controller
finds them by name and they re-register with it.
"""

from __future__ import annotations

import importlib
import logging

import ray

from orchestrator.controller.settings import NAMESPACE, REPLICA_NAME_PREFIX, ControllerSettings

logger = logging.getLogger(__name__)

# The replica's implementation, imported only inside the replica actor's own process: it needs
# torch and the engine, which the controller's process never loads (an import-linter contract
# and tests/pure/test_layers.py keep it so). Ray Serve names deployments by import path likewise.
REPLICA_IMPL = "actors.replica.actor:ReplicaActor"


class ReplicaProcess:
    """The class the controller starts as a replica actor: a shell that builds REPLICA_IMPL in
    the actor's process and forwards the few calls the controller makes."""

    def __init__(self, *args: object) -> None:
        module, _, name = REPLICA_IMPL.partition(":")
        self._impl = getattr(importlib.import_module(module), name)(*args)

    def address(self) -> str:
        return self._impl.address()

    def health(self) -> bool:
        return self._impl.health()

    def shutdown(self) -> None:
        self._impl.shutdown()


class RayBackend:
    def __init__(self, namespace: str = NAMESPACE) -> None:
        self._namespace = namespace
        # Replicas this backend started -> a call that resolves once the constructor finished
        # (or fails if it raised), so liveness of a starting replica is checked without waiting.
        self._started: dict[str, ray.ObjectRef] = {}

    def create_replica(
        self, replica_id: str, settings: ControllerSettings, controller_address: str
    ) -> None:
        """Start a replica actor; returns at once (it registers when its engine is up)."""
        res = settings.resources
        actor_cls = ray.remote(ReplicaProcess).options(
            name=REPLICA_NAME_PREFIX + replica_id,
            namespace=self._namespace,
            lifetime="detached",
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus,
            resources=dict(res.custom) or None,
            max_restarts=0,
        )
        handle = actor_cls.remote(
            replica_id, settings.spec, controller_address, settings.replica_options
        )
        self._started[replica_id] = handle.address.remote()

    def list_replicas(self) -> list[str]:
        """Ids of the live replica actors in the namespace (named actors of dead ones are gone)."""
        names = ray.util.list_named_actors(all_namespaces=True)
        return [
            n["name"][len(REPLICA_NAME_PREFIX) :]
            for n in names
            if n["namespace"] == self._namespace and n["name"].startswith(REPLICA_NAME_PREFIX)
        ]

    def is_alive(self, replica_id: str, timeout_s: float = 2.0) -> bool:
        """False only when the actor is certainly gone; a slow answer counts as alive."""
        started = self._started.get(replica_id)
        if started is not None:
            ready, _ = ray.wait([started], timeout=0)
            if not ready:
                return True  # still constructing (loading the model)
            try:
                ray.get(started)
            except ray.exceptions.RayError:
                return False  # its constructor failed or it died
        try:
            handle = ray.get_actor(REPLICA_NAME_PREFIX + replica_id, namespace=self._namespace)
            return bool(ray.get(handle.health.remote(), timeout=timeout_s))
        except ValueError:
            return False  # no such named actor
        except ray.exceptions.GetTimeoutError:
            return True
        except ray.exceptions.RayActorError:
            return False

    def start_error(self, replica_id: str) -> str | None:
        """The replica constructor's own error (its last line: "ValueError: model.path: ..."),
        if this backend started it and it failed."""
        started = self._started.get(replica_id)
        if started is None or not ray.wait([started], timeout=0)[0]:
            return None
        try:
            ray.get(started)
        except ray.exceptions.RayError as exc:
            return _last_line(exc)
        return None

    def stop_replica(self, replica_id: str, timeout_s: float = 30.0) -> None:
        """Shut the replica down cleanly (reporter, gRPC server, engine), then remove it."""
        try:
            handle = ray.get_actor(REPLICA_NAME_PREFIX + replica_id, namespace=self._namespace)
            ray.get(handle.shutdown.remote(), timeout=timeout_s)
        except (ValueError, ray.exceptions.RayError) as exc:
            logger.warning("replica %s did not shut down cleanly: %s", replica_id, exc)
        self.kill_replica(replica_id)

    def kill_replica(self, replica_id: str) -> None:
        self._started.pop(replica_id, None)
        try:
            handle = ray.get_actor(REPLICA_NAME_PREFIX + replica_id, namespace=self._namespace)
        except ValueError:
            return
        ray.kill(handle, no_restart=True)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def node_ip(self) -> str:
        return ray.util.get_node_ip_address()


def _last_line(exc: BaseException) -> str:
    """A Ray error's root cause as one line (Ray wraps it in a traceback of several)."""
    cause = getattr(exc, "cause", None) or exc.__cause__ or exc
    while getattr(cause, "cause", None) is not None:
        cause = cause.cause
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(cause).__name__
