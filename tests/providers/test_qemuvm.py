"""How the qemu provider tells its own QEMU processes from everything else (no QEMU needed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hal9999.providers import qemuvm


def spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *args])


def test_a_process_naming_the_vm_is_alive_and_others_are_not() -> None:
    proc = spawn("-name", "hal-abc123")
    try:
        assert qemuvm.alive(proc.pid, "abc123")
        assert not qemuvm.alive(proc.pid, "abc12")  # a recycled pid of another VM
        assert not qemuvm.alive(os.getpid(), "abc123")
        assert not qemuvm.alive(None, "abc123")
    finally:
        proc.kill()
        proc.wait()
    assert not qemuvm.alive(proc.pid, "abc123")


def test_a_zombie_and_a_kernel_thread_are_not_alive() -> None:
    proc = spawn("hal-zzz")
    os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    stat = Path(f"/proc/{proc.pid}/stat")
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        assert not qemuvm.alive(proc.pid, "zzz")  # exited, not yet reaped: no files held
    finally:
        proc.wait()
    assert not qemuvm.alive(2, "zzz")  # kthreadd: an empty command line, never a VM


async def test_kill_ends_the_vm_process_and_spares_a_pid_that_is_not_it() -> None:
    other = spawn("hal-other")
    mine = spawn("-name", "hal-mine")
    try:
        await qemuvm.kill(other.pid, "mine")  # not this VM's process: left alone
        assert other.poll() is None
        await qemuvm.kill(mine.pid, "mine")
        assert mine.wait(timeout=5) == -signal.SIGKILL
    finally:
        other.kill()
        other.wait()
