"""A node is lost under load (issue 13): a real three-node Ray cluster on this machine
(ray.cluster_utils), one replica on each of two nodes, requests streaming on both; the node of
one replica is removed. Its requests resume on the other replica (each request completes with
all its tokens: a ledger), and the controller replaces the lost replica on the spare node."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from .conftest import burst_through_a_fault, free_port, started_stack, tiny_config_yaml

N, MAX_TOKENS = 6, 600


@pytest.fixture(scope="module")
def cluster(_ray_session: None) -> Iterator[object]:
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()  # the shared local Ray; the next module that needs it starts it again
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    ray.init(address=nodes.address, namespace="fleetlm", log_to_driver=False)
    try:
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()


def test_a_lost_node_loses_no_request(cluster: object) -> None:
    text = tiny_config_yaml(replicas=2, policy="round_robin", http_port=free_port())
    with started_stack(text, http_path="direct") as stack, stack.cluster.admin() as admin:
        _check(stack, cluster, admin)


def _check(stack: object, cluster: object, admin: object) -> None:
    def ready() -> dict[str, str]:
        return {r["id"]: r["node"] for r in admin.replicas()["replicas"] if r["state"] == "ready"}

    _until(lambda: len(set(ready().values())) == 2)
    worker = next(n for n in cluster.worker_nodes)
    lost = [rid for rid, node in ready().items() if node == worker.node_id]
    assert len(lost) == 1
    spare = cluster.add_node(num_cpus=1)  # where the replacement can go
    # the node and its replica are gone while requests stream on both replicas
    burst_through_a_fault(stack.base_url, N, MAX_TOKENS, lambda: cluster.remove_node(worker), 1.0)
    _until(lambda: len(ready()) == 2 and spare.node_id in ready().values(), timeout_s=120)
    assert lost[0] not in ready()


def _until(check: object, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.25)  # polling the admin API while the cluster settles
