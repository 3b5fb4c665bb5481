"""A one-process run stops its Ray cluster after its last Ray test (tests/ray_cluster.py
``stop_when_idle``), not at the run's end, and only there. Counted, not
timed: which tests' ends stop it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from tests import ray_cluster
from tests.ray_cluster import stop_when_idle


class Item:
    """What ``stop_when_idle`` reads of a test: its marks, its run and its config."""

    def __init__(self, ray: bool, session: Any, config: Any) -> None:
        self.ray, self.session, self.config = ray, session, config

    def get_closest_marker(self, name: str) -> object | None:
        return object() if name == "ray" and self.ray else None


def run_of(shape: list[tuple[bool, int]], config: Any) -> list[Item]:
    """Items of one session: ``(ray, count)`` stretches in order."""
    session = SimpleNamespace(items=[])
    for ray, count in shape:
        session.items += [Item(ray, session, config) for _ in range(count)]
    return list(session.items)


def stops(items: list[Item], monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The indices of the Ray tests after which the cluster is stopped."""
    stopped: list[int] = []
    for at, item in enumerate(items):
        if item.ray:
            monkeypatch.setattr(ray_cluster, "stop_session_cluster", lambda a=at: stopped.append(a))
            stop_when_idle(item)  # type: ignore[arg-type]
    return stopped


def test_the_suites_order_stops_the_cluster_after_its_last_ray_test_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The shape of the suite: 3 Ray tests, ~1,400 others, the contract's Ray cases between
    # other providers', ~220 others, the Ray provider's tests, ~1,100 others.
    contract = [(True, 1), (False, 9)] * 20
    shape = [(False, 858), (True, 3), (False, 1431), *contract, (False, 220), (True, 19),
             (False, 1089)]  # fmt: skip
    items = run_of(shape, SimpleNamespace())
    ray_at = [i for i, item in enumerate(items) if item.ray]
    assert stops(items, monkeypatch) == [ray_at[-1]]
    assert len(items) - ray_at[-1] == 1090


def test_under_xdist_a_worker_keeps_its_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    items = run_of([(True, 2), (False, 5)], SimpleNamespace(workerinput={}))
    assert stops(items, monkeypatch) == []
