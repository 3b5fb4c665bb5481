"""A directory on a second filesystem, for the tests of what hal copies or moves across two
(a link or rename cannot cross them; a copy must still refuse what the agent planted)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def second_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A temporary directory on /dev/shm, a filesystem other than ``tmp_path``'s; skips the
    test where there is none."""
    if not os.access("/dev/shm", os.W_OK) or os.stat("/dev/shm").st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem at /dev/shm")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other:
        yield Path(other)
