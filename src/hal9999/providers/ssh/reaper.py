"""Run on a bare ssh host (no bwrap): its source goes there as ``python3 -I -S -c SOURCE``.

Without bwrap's pid namespace, nothing ends what a command leaves running: a daemon that
clears its environment (``env -i``) and takes a session of its own (``setsid``, a double fork)
carries no marker of hal's and is re-parented to init. Two modes close that:

``run CWD ARGV...`` runs the command as a child subreaper (``PR_SET_CHILD_SUBREAPER``), so
whatever it leaves, however it detaches, is re-parented to this process and not to init.
When the command ends, every process left under it is killed, pass after pass until none
is alive, as bwrap's pid namespace ends with its command. Spared: a subtree whose root
carries the command's marker plus ``d`` (PM2 inside the sandbox: :mod:`hal9999.process.
pm2inside`), which the sandbox's ``end_processes`` ends before collection. Exits with the
command's status (``128+N`` for a signal, as a shell says).

``end VAR VALUE`` ends every process whose environment carries ``VAR=VALUE`` (a sandbox's or
a command's marker) and everything under them, marked or not: the whole tree is stopped
(``SIGSTOP``, so nothing forks or is re-parented away) until a scan finds nothing new, then
killed, pass after pass until none is left. Exits 0 once none is, 1 if some would not end.

Only this uid's processes are looked at; hal's own commands on the host carry no marker and
are no sandbox's descendants. Stdlib only: the host has nothing of hal's installed.
"""

from __future__ import annotations

import os
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
PASS_S = 0.01
"""Between two passes (a killed process is re-parented as it exits)."""
END_S = 20.0
"""How long processes may take to end before giving up."""


def _processes() -> dict[int, tuple[str, int]]:
    """Every process of this uid: its state letter and parent pid."""
    uid = os.getuid()
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != uid:
                continue
            with open(f"/proc/{name}/stat", "rb") as stat:
                data = stat.read()
        except OSError:
            continue
        # The name in parentheses may hold anything, ")" and spaces included.
        fields = data[data.rindex(b")") + 2 :].split(None, 2)
        found[int(name)] = (fields[0].decode(), int(fields[1]))
    return found


def _carries(pid: int, entry: bytes) -> bool:
    """Whether the process's environment (as it was exec'd) holds ``entry`` exactly."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            return entry in environ.read().split(b"\0")
    except OSError:
        return False


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def _reap() -> bool:
    """Collect every child that has ended (adopted ones included); whether any is left."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def _initial_env() -> dict[bytes, bytes]:
    # The environment as exec'd: Python may have added LC_CTYPE (locale coercion).
    with open("/proc/self/environ", "rb") as environ:
        pairs = [item.partition(b"=") for item in environ.read().split(b"\0") if item]
    return {name: value for name, _, value in pairs}


def run(cwd: str, argv: list[str]) -> int:
    """Run ``argv`` in ``cwd`` as a subreaper; end what it left; its exit status."""
    import ctypes

    env = _initial_env()
    reaping = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        os.chdir(cwd)
    except OSError as exc:
        sys.stderr.write(f"hal-run: cannot enter {cwd}: {exc.strerror}\n")
        return 1
    # A terminal's ^C or ^\ is the command's to act on, not this parent's.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    defaults = (signal.SIGINT, signal.SIGQUIT, signal.SIGPIPE, signal.SIGXFSZ)
    try:
        child = os.posix_spawnp(argv[0], argv, env, setsigdef=defaults)
    except FileNotFoundError:
        sys.stderr.write(f"hal-run: {argv[0]}: not found\n")
        return 127
    except OSError as exc:
        sys.stderr.write(f"hal-run: {argv[0]}: {exc.strerror}\n")
        return 126
    while True:  # reaping adopted orphans as they end, until the command does
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            break
    code = os.waitstatus_to_exitcode(status)
    token = env.get(b"HAL_EXEC", b"")
    if reaping:
        _end_left(b"HAL_EXEC=" + token + b"d" if token else None)
    elif token:  # what was left went to init: only its marker finds it
        end("HAL_EXEC", token.decode())
    return code if code >= 0 else 128 - code


def _end_left(spared: bytes | None) -> None:
    """Kill every process left under this one, but a subtree rooted at a ``spared`` one."""
    me = os.getpid()
    deadline = time.monotonic() + END_S
    while time.monotonic() < deadline:
        if not _reap():  # a subreaper with no child: nothing was left (the usual case)
            return
        left = [
            pid
            for pid, (state, parent) in _processes().items()
            if parent == me and state != "Z" and not (spared and _carries(pid, spared))
        ]
        if not left:
            return
        for pid in left:
            _kill(pid, signal.SIGKILL)
        time.sleep(PASS_S)
    sys.stderr.write("hal-run: processes the command left would not end\n")


def _tree(entry: bytes, me: int) -> tuple[dict[int, tuple[str, int]], set[int]]:
    processes = _processes()
    roots = [pid for pid, (state, _) in processes.items()
             if pid != me and state != "Z" and _carries(pid, entry)]  # fmt: skip
    below: dict[int, list[int]] = {}
    for pid, (_, parent) in processes.items():
        below.setdefault(parent, []).append(pid)
    tree, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid in tree or pid == me or processes[pid][0] == "Z":
            continue
        tree.add(pid)
        todo += below.get(pid, [])
    return processes, tree


def _stopped(pid: int, processes: dict[int, tuple[str, int]], tree: set[int]) -> bool:
    """Whether ``pid`` of ``tree`` runs nothing more: stopped, or a parent waiting on its
    stopped vfork child (dash runs simple commands so; a SIGSTOP may land on the child
    before its exec), which stays in "D" until that child ends."""
    state = processes[pid][0]
    if state in "Tt":
        return True
    return state == "D" and any(
        processes[child][1] == pid and processes[child][0] in "Tt" for child in tree
    )


def end(var: str, value: str) -> int:
    """End every process marked ``var=value`` and all under them; 0 once none is left."""
    entry = f"{var}={value}".encode()
    me = os.getpid()
    deadline = time.monotonic() + END_S
    stopped: set[int] = set()
    while time.monotonic() < deadline:
        processes, tree = _tree(entry, me)
        if not tree:
            return 0
        fresh = tree - stopped
        for pid in fresh:
            _kill(pid, signal.SIGSTOP)
        stopped |= fresh
        # Killed only once the whole tree is seen stopped: none of it forks any more, and
        # none is re-parented out of it (to init) while the rest is killed.
        if not fresh and all(_stopped(pid, processes, tree) for pid in tree):
            for pid in tree:
                _kill(pid, signal.SIGKILL)
            stopped -= tree
        time.sleep(PASS_S)
    return 1


def main(argv: list[str]) -> int:
    """``run CWD ARGV...`` or ``end VAR VALUE``."""
    if len(argv) >= 3 and argv[0] == "run":
        return run(argv[1], argv[2:])
    if len(argv) == 3 and argv[0] == "end":
        return end(argv[1], argv[2])
    sys.stderr.write("usage: reaper run CWD ARGV... | reaper end VAR VALUE\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
