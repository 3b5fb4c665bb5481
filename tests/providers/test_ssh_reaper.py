"""The bare ssh host's reaper (``providers/ssh/reaper.py``) run here, as the host runs it
(``python3 -I -S -c SOURCE``): the command's status as a shell gives it, what it left ended
however it hid but for PM2's marker, and ``end`` taking a marked process's whole tree."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hal9999.providers.ssh import remote


def reaper(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-I", "-S", "-c", remote.reaper_source(), *args]
    base = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
    return subprocess.run(argv, env=base | (env or {}), capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def working_in(place: Path) -> list[str]:
    """Live processes whose directory is ``place``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or os.readlink(entry / "cwd") != str(place):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if state != "Z":
            found.append(line)
    return found


def test_the_command_s_status_is_as_a_shell_gives_it(tmp_path: Path) -> None:
    assert reaper("run", str(tmp_path), "sh", "-c", "exit 3").returncode == 3
    assert reaper("run", str(tmp_path), "sh", "-c", "kill -9 $$").returncode == 137
    missing = reaper("run", str(tmp_path), "no-such-program-hal")
    assert missing.returncode == 127 and "not found" in missing.stderr
    assert reaper("run", str(tmp_path / "gone"), "true").returncode == 1
    assert reaper("run", str(tmp_path), "pwd").stdout == f"{tmp_path}\n"
    # Python ignores SIGPIPE and SIGXFSZ (prlimit's file size limit): the command does not.
    status = reaper("run", str(tmp_path), "cat", "/proc/self/status").stdout
    [ignored] = [line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")]
    assert int(ignored, 16) & (1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1)) == 0


def test_what_the_command_left_ends_with_it_but_pm2_s(tmp_path: Path) -> None:
    token = secrets.token_hex(4)
    script = (
        "(env -i setsid sh -c 'while :; do echo x >> f; sleep 0.01; done' >/dev/null 2>&1 &); "
        "(setsid sh -c 'sh -c \"sleep 600\" & sleep 600' >/dev/null 2>&1 &); "
        '(HAL_EXEC="${HAL_EXEC}d" setsid sleep 601 >/dev/null 2>&1 &); '
        "until [ -s f ]; do sleep 0.01; done"
    )
    done = reaper("run", str(tmp_path), "sh", "-c", script, env={"HAL_EXEC": token})
    assert done.returncode == 0, done.stderr
    left = working_in(tmp_path)
    try:
        assert left == ["sleep 601 "], left
        size = (tmp_path / "f").stat().st_size
        time.sleep(0.2)
        assert (tmp_path / "f").stat().st_size == size
    finally:
        assert reaper("end", "HAL_EXEC", f"{token}d").returncode == 0
    assert working_in(tmp_path) == []


def test_end_takes_the_whole_tree_of_a_marked_process(tmp_path: Path) -> None:
    marker = secrets.token_hex(4)
    tree = (
        'env -i sh -c \'sh -c "while :; do sleep 0.01 & wait; done" & '
        "while :; do echo x >> f; sleep 0.01; done' & wait"
    )
    proc = subprocess.Popen(
        ["sh", "-c", tree], cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HAL_SANDBOX": marker},
        start_new_session=True,
    )  # fmt: skip
    other = subprocess.Popen(["sleep", "600"], cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "f").exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert reaper("end", "HAL_SANDBOX", marker).returncode == 0
        assert proc.wait(5) == -9
        assert working_in(tmp_path) == ["sleep 600 "]  # unmarked, in no marked tree
    finally:
        other.kill()
        other.wait()


# A parent waiting on its vfork child (dash runs a simple command so) is in "D", not "T",
# however long a SIGSTOP waits: this child stops itself before its exec, as SIGSTOP can
# land there, and the parent stays in "D" until the child ends.
VFORK_WAIT = r"""
#include <signal.h>
#include <unistd.h>
int main(void) {
    if (vfork() == 0) {
        kill(getpid(), SIGSTOP);
        _exit(0);
    }
    pause();
    return 0;
}
"""


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_end_takes_a_tree_whose_parent_waits_on_a_stopped_vfork_child(tmp_path: Path) -> None:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        assert os.environ.get("CI", "").lower() != "true", "CI=true but no C compiler"
        pytest.skip("no C compiler (scripts/setup.sh installs gcc)")
    (tmp_path / "vfork.c").write_text(VFORK_WAIT)
    program = tmp_path / "vfork-wait"
    subprocess.run([cc, "-O2", "-o", str(program), str(tmp_path / "vfork.c")], check=True)
    marker = secrets.token_hex(4)
    proc = subprocess.Popen([program], env={"HAL_SANDBOX": marker}, start_new_session=True)
    children: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while not (_state(proc.pid) == "D" and (children := _stopped_children(proc.pid))):
            assert time.monotonic() < deadline, "the vfork child never stopped"
            time.sleep(0.01)
        started = time.monotonic()
        ended = reaper("end", "HAL_SANDBOX", marker)
        assert ended.returncode == 0, ended.stderr
        assert time.monotonic() - started < 10  # not the reaper's whole END_S of waiting
        assert proc.wait(5) == -9
    finally:
        for child in children:  # stopped, it would outlive its killed parent
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(child), signal.SIGKILL)
        if proc.returncode is None:
            proc.kill()
            proc.wait()


def _stopped_children(pid: int) -> list[str]:
    """``pid``'s children once each is stopped, else none."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return children if all(_state(int(child)) in "Tt" for child in children) else []
