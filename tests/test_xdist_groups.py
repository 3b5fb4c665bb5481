"""The suite on two workers (``pytest -n 2 --dist loadgroup``, on request): the Ray
tests reach one worker as one group (tests/xdist_groups.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from tests.xdist_groups import check, group_of, make_scheduler

RAY = ["tests/providers/test_ray.py::test_twenty_jobs_spread_over_both_nodes",
       "tests/cli/test_ray_run.py::test_a_run_on_ray",
       "tests/providers/test_contract.py::test_get_unknown_id[ray]"]  # fmt: skip
OTHER = ["tests/providers/test_contract.py::test_get_unknown_id[bwrap]",
         "tests/providers/test_bwrap.py::test_exec[array]",
         "tests/test_config.py::test_defaults", "tests/x/test_tray.py::test_a"]  # fmt: skip


class Node:
    """What xdist's scheduler sees of a worker: the test indices it was sent."""

    def __init__(self, name: str) -> None:
        self.gateway = SimpleNamespace(id=name)
        self.sent: list[int] = []
        self.shutting_down = False

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent.extend(indices)

    def send_runtest_all(self) -> None:
        raise AssertionError("loadgroup sends by index")

    def shutdown(self) -> None:
        self.shutting_down = True


def config(dist: str) -> Any:
    values = {"dist": dist, "tx": ["2*popen"], "maxschedchunk": None, "loadscopereorder": True}
    return SimpleNamespace(getvalue=values.get, option=SimpleNamespace(**values))


def test_the_ray_tests_are_one_group_and_the_others_none() -> None:
    assert [group_of(i) for i in RAY] == ["ray"] * len(RAY)
    assert [group_of(i) for i in OTHER] == [None] * len(OTHER)


def test_two_workers_get_every_ray_test_on_one_of_them() -> None:
    sched = make_scheduler(config("loadgroup"), None)
    assert sched is not None
    collection = [RAY[0], *OTHER[:2], RAY[1], *OTHER[2:], RAY[2]] * 3
    collection = [f"{c}-{n}" if "[" not in c else c.replace("[", f"{n}[") for n, c in
                  enumerate(collection)]  # fmt: skip
    nodes = [Node("gw0"), Node("gw1")]
    for node in nodes:
        sched.add_node(node)  # type: ignore[arg-type]
        sched.add_node_collection(node, collection)  # type: ignore[arg-type]
    sched.schedule()
    ray = {n for n, c in enumerate(collection) if group_of(c) == "ray"}
    assert len(ray) == 9
    holders = [node.gateway.id for node in nodes if ray & set(node.sent)]
    assert len(holders) == 1, [node.sent for node in nodes]
    assert ray <= set(next(n for n in nodes if n.gateway.id == holders[0]).sent)
    assert all(node.sent for node in nodes)  # the rest is spread over both


def test_other_dist_modes_keep_xdist_own_scheduler() -> None:
    assert make_scheduler(config("load"), None) is None


def test_a_ray_test_outside_the_group_fails_the_collection() -> None:
    def item(nodeid: str) -> Any:
        return SimpleNamespace(nodeid=nodeid, get_closest_marker=lambda name: name == "ray")

    check([item(i) for i in RAY])
    with pytest.raises(pytest.UsageError, match="outside the xdist group"):
        check([item("tests/providers/test_cluster.py::test_on_ray")])
