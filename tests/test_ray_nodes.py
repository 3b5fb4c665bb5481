"""A Ray test's ``ray_node`` marks (tests/ray_cluster.py): its nodes are started before its
clock and killed after it; a node that does not start fails that test with the reason,
not the run. Counted on a stand-in cluster, no Ray."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from tests import ray_cluster
from tests.ray_cluster import RayCluster, start_marked_nodes, stop_marked_nodes


class Cluster(RayCluster):
    """A cluster whose node starts and kills are recorded; ``refuse``: names that fail."""

    def __init__(self, refuse: set[str]) -> None:
        super().__init__("127.0.0.1:1", Path("/nonexistent"), 1, Path("/nonexistent"))
        self.refuse = refuse
        self.started: list[str] = []
        self.killed: list[int] = []

    def add_worker(self, name: str, capacity: int) -> int:
        if name in self.refuse:
            raise RuntimeError(f"ray start of {name} failed")
        self.started.append(name)
        return 7000 + capacity

    def kill_worker(self, port: int) -> list[int]:
        self.killed.append(port)
        return [port]


class Item:
    """What ``start_marked_nodes`` reads of a test: its ``ray_node`` marks."""

    def __init__(self, *nodes: tuple[str, int]) -> None:
        self.marks = [pytest.mark.ray_node(*node).mark for node in nodes]

    def iter_markers(self, name: str) -> list[pytest.Mark]:
        return [m for m in self.marks if m.name == name]


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Cluster:
    made = Cluster(refuse={"bad"})
    monkeypatch.setattr(ray_cluster, "_SESSION", [(contextlib.ExitStack(), made)])
    monkeypatch.setattr(ray_cluster, "_start_host_actor", lambda cluster, node: None)
    return made


def test_marked_nodes_start_before_and_go_after_the_test(cluster: Cluster) -> None:
    start_marked_nodes(Item(("w2", 50), ("w3", 60)))  # type: ignore[arg-type]
    assert cluster.started == ["w2", "w3"]
    assert (cluster.node_port("w2"), cluster.node_port("w3")) == (7050, 7060)
    stop_marked_nodes()
    assert cluster.killed == [7050, 7060] and cluster.added == {}


def test_a_node_that_does_not_start_fails_its_test_with_the_reason(cluster: Cluster) -> None:
    start_marked_nodes(Item(("bad", 5)))  # type: ignore[arg-type]
    with pytest.raises(pytest.fail.Exception, match="ray node bad did not start: ray start"):
        cluster.node_port("bad")
    stop_marked_nodes()
    assert cluster.failed == {} and cluster.killed == []
