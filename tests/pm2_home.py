"""A PM2 daemon of a test's own: a short home under /tmp (PM2's unix sockets live there),
its daemon killed and the home removed at the end."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from hal9999.process.pm2 import Pm2ProcessManager


def new_home() -> Path:
    """A fresh PM2 home, short enough for PM2's socket paths."""
    return Path(tempfile.mkdtemp(prefix="hal-pm2-", dir="/tmp"))


async def end(home: Path) -> None:
    """Kill the daemon of ``home`` (if any) and remove the home."""
    await Pm2ProcessManager(home=home).kill_daemon()
    shutil.rmtree(home, ignore_errors=True)


@contextlib.asynccontextmanager
async def pm2_manager() -> AsyncIterator[Pm2ProcessManager]:
    """A :class:`Pm2ProcessManager` over a home of its own, ended on the way out."""
    home = new_home()
    try:
        yield Pm2ProcessManager(home=home)
    finally:
        await end(home)
