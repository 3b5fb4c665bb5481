"""Which tests share one xdist worker when the suite runs on two (``pytest -n 2 --dist
loadgroup``; as CI runs it, see scripts/test.sh).

The ``ray`` tests share the run's one Ray cluster (tests/ray_cluster.py; its tests add and
kill worker nodes of it), so they run on one worker, which alone starts the cluster. The
group is read from each test's id by the controller's scheduler: xdist 3.8's own
``xdist_group`` mark suffixes ``item._nodeid``, which pytest 9.2 no longer reads (a node's
id is ``item._id``), so under this pytest the mark groups nothing. Every ``ray``-marked test
must match the rule here; collection fails on one that does not (``check``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from xdist.scheduler import LoadGroupScheduling


def group_of(nodeid: str) -> str | None:
    """The group of the test with this id: ``ray`` for a test in a ``test_ray*`` file or a
    test parametrized ``[ray]`` (the provider contract's Ray case); None for the rest."""
    path, _, rest = nodeid.partition("::")
    if PurePosixPath(path).name.startswith("test_ray") or rest.endswith("[ray]"):
        return "ray"
    return None


def check(items: Sequence[pytest.Item]) -> None:
    """Fail the collection if a ``ray`` test is outside the ``ray`` group."""
    stray = [i.nodeid for i in items if i.get_closest_marker("ray") and group_of(i.nodeid) != "ray"]
    if stray:
        raise pytest.UsageError(
            f"ray tests outside the xdist group 'ray' (tests/xdist_groups.py): {stray[:5]}"
        )


def make_scheduler(config: pytest.Config, log: Any) -> LoadGroupScheduling | None:
    """Under ``--dist loadgroup``, xdist's group scheduler with the groups above (an
    ``xdist_group`` suffix in an id, should one appear, still counts); None otherwise."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class ByGroup(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid) or super()._split_scope(nodeid)

    return ByGroup(config, log)
