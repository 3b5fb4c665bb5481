"""The network wiring's shell (:data:`hal9999.providers.bwrap.usernet.SCRIPT`) leaves nothing
waiting when it dies before its ``exec`` of bwrap.

The wiring runs after the launcher's parent check and keeps the launcher's death signal; the
helper it forks (slirp4netns's) has none. A hal that died between the check and the wiring's
``exec "$@" 5>"$info"`` killed the shell there, and the helper waited on a FIFO's open for
good (in the sandbox's cgroups: only the next stop ended it)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
from pathlib import Path

from hal9999.providers.bwrap import usernet

_EXEC = '[ -n "$unshare" ] && exec'
SCRIPT_TAIL = (
    f'{_EXEC} "$unshare" --user --map-root-user --net -- "$@" 5>"$info"\nexec "$@" 5>"$info"\n'
)
"""What the test replaces: the wiring's last two lines, its ``exec`` of bwrap (or of
``unshare``, then bwrap)."""


def _holding(path: Path) -> list[int]:
    """Processes whose command line names ``path`` (the wiring's shell and its helper)."""
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and str(path).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
    return found


def test_a_wiring_killed_before_its_exec_leaves_no_helper_waiting(tmp_path: Path) -> None:
    # The shell as written up to its exec, then killed there as hal's death kills it.
    assert SCRIPT_TAIL in usernet.SCRIPT
    dying = usernet.SCRIPT[: usernet.SCRIPT.index(_EXEC)] + "kill -9 $$\n"
    fifos = tmp_path / "run"
    fifos.mkdir()
    read, write = os.pipe()  # held by the shell, its helper and whatever the helper starts
    try:
        shell = subprocess.Popen(
            ["/bin/sh", "-c", dying, "hal-usernet", str(fifos), "/bin/false", "", "/bin/true"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=[write],
        )  # fmt: skip
        os.close(write)
        write = -1
        assert shell.wait(timeout=60) == -signal.SIGKILL
        ready, _, _ = select.select([read], [], [], 60)
        assert ready and os.read(read, 1) == b"", "the helper still waits, the shell gone"
        assert list(fifos.iterdir()) == [], "the helper removed the FIFOs"
    finally:
        if write >= 0:
            os.close(write)
        os.close(read)
        for pid in _holding(fifos):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
