"""``collector_paused``: no garbage collection in the block, then what is alive is frozen and
the collector runs again; a collector someone else turned off stays off. ``collect_less_often``:
the daemon's collector passes over its youngest objects once per 10,000 allocations, not 700."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from hal9999.cli.app import collect_less_often
from hal9999.cli.main import collector_paused


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()
    if enabled:
        gc.enable()


def test_the_block_runs_without_the_collector_and_its_objects_are_frozen() -> None:
    gc.enable()
    frozen = gc.get_freeze_count()
    with pytest.raises(KeyError), collector_paused():
        assert not gc.isenabled()
        kept = [[] for _ in range(100)]
        raise KeyError  # an error in the block: the collector still comes back
    assert gc.isenabled()
    assert gc.get_freeze_count() >= frozen + len(kept)


def test_a_collector_turned_off_stays_off() -> None:
    gc.disable()
    frozen = gc.get_freeze_count()
    with collector_paused():
        pass
    assert not gc.isenabled()
    assert gc.get_freeze_count() == frozen


def test_the_daemons_collector_passes_over_young_objects_less_often() -> None:
    gc.enable()
    gc.set_threshold(700, 10, 10)  # Python's default
    collect_less_often()
    before = sum(generation["collections"] for generation in gc.get_stats())
    kept = [[] for _ in range(25_000)]  # containers kept alive, as a running task's are
    passes = sum(generation["collections"] for generation in gc.get_stats()) - before
    assert len(kept) == 25_000
    assert passes <= 3  # at 700: 35
    assert gc.get_threshold() == (10_000, 10, 10)  # the older generations' left as they were
