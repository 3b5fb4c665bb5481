"""Host processes: kill a subprocess's whole process group and wait until it is gone.

Used wherever hal starts a helper that may block on the network or a disk (git, image build
steps): when the caller is cancelled (a timeout, Ctrl-C, SIGTERM), the helper and everything
it started must end too, and hal must not return before they have.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

_GONE_WAIT_S = 5.0


async def kill_group_until_gone(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the process group ``proc`` leads (started with ``start_new_session=True``)
    and reap ``proc``; safe to call when it has already exited.

    Shielded from cancellation: it runs while the caller is being cancelled, and a second
    cancellation must not leave the group running.
    """
    await asyncio.shield(_kill_and_reap(proc))


async def _kill_and_reap(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), _GONE_WAIT_S)
