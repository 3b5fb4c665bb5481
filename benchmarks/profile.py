"""Figures load does not distort: CPU time of a whole process tree, and processes started.

On a shared machine the wall time of a task mostly measures the wait for a CPU. Two figures
do not move with the load: the CPU time the task's processes used (user + system), and how
many processes it started (forks, execs, sandbox starts). The rows of ``python -m
benchmarks`` report both beside the wall time, so a quiet run's wall figures can be read
against them.

- CPU: this process is made a *child subreaper*, so a descendant that daemonizes (tmux's
  server, a detached runner) is re-parented to it instead of to init; once it exits and is
  reaped here, its CPU time counts in ``RUSAGE_CHILDREN`` like any waited-for child's.
- Processes: ``strace -f --seccomp-bpf`` traces only the process-creating calls of the
  whole tree (the filter keeps every other syscall at full speed).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import re
import resource
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
_CALL = re.compile(r"^(execve|clone3?|fork|vfork)\(")
_RESUMED = re.compile(r"^<\.\.\. (execve|clone3?|fork|vfork) resumed>")


def become_subreaper() -> None:
    """Adopt orphaned descendants (daemonized helpers), so their CPU time is counted here
    once they are reaped (between runs, with no child of this process's own still running:
    :func:`hal9999.process.forkserver.reap_exited`)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def children_cpu_ms() -> float:
    """User + system CPU time of every reaped descendant so far, in ms."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (usage.ru_utime + usage.ru_stime) * 1000


@contextlib.contextmanager
def orphans_reaped() -> Iterator[list[float]]:
    """While inside, a thread reaps each orphan this process adopts as it ends (a daemon's
    detached keepers; this process a subreaper, :func:`become_subreaper`, before the
    daemon starts, so the daemon and what it leaves are its descendants). The one-item
    list holds their CPU time so far, in ms (user + system, with what they waited for).
    Inside, this process must start no child of its own: the thread reaps any child."""
    total = [0.0]
    done = threading.Event()

    def reap() -> None:
        while not done.is_set():
            try:
                pid, _, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid:
                total[0] += (usage.ru_utime + usage.ru_stime) * 1000
            else:
                time.sleep(0.05)

    reaper = threading.Thread(target=reap, daemon=True)
    reaper.start()
    try:
        yield total
    finally:
        done.set()
        reaper.join()


def daemon_cpu_ms(pid: int) -> tuple[float, float]:
    """CPU time (ms) a process has used itself, and that of its children: those it has waited
    for, and those still running with what they have waited for themselves (the daemon's
    supervisor fork server, whose children are every run's supervisor and what it ran)."""
    tick = 1000 / os.sysconf("SC_CLK_TCK")
    utime, stime, cutime, cstime = _cpu_ticks(pid)
    children = cutime + cstime
    for child in _children(pid):
        with contextlib.suppress(OSError, ValueError):
            children += sum(_cpu_ticks(child))
    return (utime + stime) * tick, children * tick


def _cpu_ticks(pid: int) -> tuple[int, int, int, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return utime, stime, cutime, cstime


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                listed = Path(f"/proc/{pid}/task/{task}/children").read_text()
                found += [int(child) for child in listed.split()]
    return found


@dataclass
class Spawns:
    """The processes a traced command tree started."""

    forks: int = 0
    """New processes (clone without CLONE_THREAD, fork, vfork)."""
    execs: int = 0
    """Successful execve calls."""
    programs: collections.Counter[str] = field(default_factory=collections.Counter)
    """Successful execs by program name."""

    @property
    def sandboxes(self) -> int:
        """``bwrap`` starts."""
        return self.programs["bwrap"]

    def per(self, count: int) -> str:
        """``processes 12.0, execs 9.0 (bwrap 2.0, git 3.0, ...)`` per one of ``count``."""
        top = ", ".join(f"{name} {n / count:.1f}" for name, n in self.programs.most_common(6))
        return f"processes {self.forks / count:.1f}, execs {self.execs / count:.1f} ({top})"


def parse_trace(text: str) -> Spawns:
    """Count forks and execs in ``strace -f -o`` output (calls that other processes
    interrupted come as an ``<unfinished ...>`` line and a ``<... resumed>`` one)."""
    spawns = Spawns()
    pending: dict[tuple[str, str], str] = {}
    for line in text.splitlines():
        pid, _, rest = line.partition(" ")
        rest = rest.strip()
        call = _CALL.match(rest)
        if call is not None:
            name = call.group(1)
            what = _program(rest) if name == "execve" else str("CLONE_THREAD" in rest)
            if rest.endswith("<unfinished ...>"):
                pending[(pid, name)] = what
                continue
        elif (resumed := _RESUMED.match(rest)) is not None:
            name = resumed.group(1)
            what = pending.pop((pid, name), "")
        else:
            continue
        result = rest.rsplit("=", 1)[-1].split()[0] if "=" in rest else ""
        if name == "execve" and result == "0":
            spawns.execs += 1
            spawns.programs[what] += 1
        elif name != "execve" and what != "True" and result.isdigit() and result != "0":
            spawns.forks += 1
    return spawns


def _program(rest: str) -> str:
    match = re.match(r'execve\("([^"]+)"', rest)
    return Path(match.group(1)).name if match else "?"


def traced_argv(out: Path) -> list[str]:
    """The prefix that traces a command tree's process starts into ``out``."""
    return [
        "strace", "-f", "-qq", "--seccomp-bpf", "-e", "signal=none",
        "-e", "trace=execve,clone,clone3,fork,vfork", "-o", str(out),
    ]  # fmt: skip


def count_spawns(argv: list[str], env: dict[str, str], cwd: Path) -> Spawns | None:
    """Run ``argv`` once under strace; None when strace is not installed."""
    if shutil.which("strace") is None:
        return None
    with tempfile.TemporaryDirectory(prefix="hal-trace-") as tmp:
        out = Path(tmp) / "trace"
        subprocess.run(
            [*traced_argv(out), *argv], env=env, cwd=cwd, capture_output=True, check=False
        )
        return parse_trace(out.read_text())
