"""ControllerLocator: find the named controller actor's current gRPC address through Ray.

Replicas and ingress replicas use it when the address they had stops answering (the controller
restarted, possibly on another node)."""

from __future__ import annotations


class ControllerLocator:
    """One Ray call: the named controller actor's `grpc_address()`."""

    def __init__(self, name: str, namespace: str) -> None:
        self._name = name
        self._namespace = namespace

    def __call__(self) -> str | None:
        import ray

        handle = ray.get_actor(self._name, namespace=self._namespace)
        return ray.get(handle.grpc_address.remote(), timeout=5)
