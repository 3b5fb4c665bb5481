"""The gateway's lock: one gateway per HAL_HOME, the holder of ``$HAL_HOME/gateway/lock``.

Taken before the server is imported: concurrent runs each start a gateway and all
but one find the lock held; a loser imports only this (``os``, ``fcntl``) and ``argparse``,
not Starlette, httpx and the store (~0.4 s of CPU each). Pinned by
``tests/gateway/test_start_race.py``. A dead holder's ``flock`` is gone with it, so a stale
lock file is simply taken.
"""

from __future__ import annotations

import fcntl
import os

GATEWAY_DIR = "gateway"
"""The gateway's directory under a HAL_HOME."""
LOCK_FILE = "lock"
"""The lock file in that directory, held (``flock``) by the running gateway."""


def take_lock(home: str | os.PathLike[str]) -> int | None:
    """The held lock's fd (kept open, close-on-exec, for the process's life), or None when
    another gateway holds it."""
    root = os.path.join(home, GATEWAY_DIR)
    os.makedirs(root, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(root, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
