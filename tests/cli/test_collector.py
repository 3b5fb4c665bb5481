"""``collector_paused``: no garbage collection in the block, then what is alive is frozen and
the collector runs again; a collector someone else turned off stays off."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from hal9999.cli.main import collector_paused


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
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
