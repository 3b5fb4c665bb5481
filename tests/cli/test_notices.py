"""The uncommitted-changes line of ``hal run``: whatever the user's repository holds."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hal9999.cli.notices import STATUS_TIMEOUT_S, HostGit, start_uncommitted


def test_a_file_name_that_is_not_utf8_is_counted_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With core.quotePath off, git prints a name's own bytes; a Latin-1 name is not UTF-8.
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "config", "core.quotePath", "false"], check=True)
    with open(os.path.join(os.fsencode(repo), b"caf\xe9.txt"), "wb") as file:
        file.write(b"x")
    monkeypatch.chdir(repo)
    notice = start_uncommitted(str(repo), None).notice()
    assert notice is not None and "1 uncommitted change(s)" in notice


def test_a_status_that_ended_in_time_is_read_however_late_hal_asks(tmp_path: Path) -> None:
    # On a loaded machine the full path's imports can outlast the check's deadline while
    # git ended long before: its line must not be dropped (seen as a thin and a full client
    # that printed different lines for one run in tests/cli/test_daemon_run_e2e.py).
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "left.txt").write_text("x")
    pending = start_uncommitted(str(repo), None)
    assert pending.proc is not None
    pending.proc.wait()
    pending.deadline -= STATUS_TIMEOUT_S + 1  # hal got here after the deadline
    notice = pending.notice()
    assert notice is not None and "1 uncommitted change(s)" in notice


def test_a_status_still_running_at_the_deadline_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    fake = tmp_path / "bin"
    fake.mkdir()
    orphan = tmp_path / "orphan.pid"
    # Its child keeps the pipe open for an hour (killed below): notice() returning while it
    # still lives did not wait for the pipe (the run's 120 s timeout bounds a wait).
    (fake / "git").write_text(f"#!/bin/sh\nsleep 3600 &\necho $! > {orphan}\nwait\n")
    (fake / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    pending = start_uncommitted(str(repo), None)
    assert pending.proc is not None
    deadline = time.monotonic() + 60
    while not orphan.exists() or not orphan.read_text().strip():
        assert time.monotonic() < deadline, "the fake git never started its child"
        time.sleep(0.02)
    pid = int(orphan.read_text())
    try:
        pending.deadline = time.monotonic() + 0.2
        assert pending.notice() is None
        os.kill(pid, 0)  # still alive, still holding the pipe: not waited for
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


SHOW_ITSELF = """#!/bin/sh
echo "args: $*"
echo "seen: $HAL_SEEN"
echo "fds: $(ls /proc/self/fd | sort -n | tr '\\n' ' ')"
exec grep SigIgn /proc/self/status
"""


def _masked(out: str) -> str:
    # glibc's own signals (32, 33) left out: its posix_spawn (2.36) starts a child with them
    # ignored, and glibc installs its handler for them where it uses them.
    head, _, ignored = out.rpartition("SigIgn:\t")
    return f"{head}ignored: {int(ignored, 16) & ~(0b11 << 31):#x}"


def _started_ignoring() -> int:
    """The signals the suite was started with ignored, which every child keeps (SIGHUP under
    ``nohup``): this process's ignored set less Python's own SIGPIPE and SIGXFSZ, which Popen
    puts back to their defaults, and glibc's (see :func:`_masked`). 0 from a shell."""
    status = Path("/proc/self/status").read_text()
    ignored = int(status.split("SigIgn:\t")[1].split()[0], 16)
    python_own = (1 << (signal.SIGPIPE - 1)) | (1 << (signal.SIGXFSZ - 1))
    return ignored & ~python_own & ~(0b11 << 31)


def test_the_host_git_starts_as_popen_started_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # HostGit is Popen's child without subprocess: the same descriptors (an
    # inheritable one of hal's closed), signals (SIGPIPE back to its default), environment.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "git").write_text(SHOW_ITSELF)
    (fake / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.setenv("HAL_SEEN", "1")
    leaked = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(leaked, True)
    try:
        ours = HostGit(["status", "--porcelain"], cwd=str(tmp_path))
        theirs = subprocess.Popen(
            ["git", "-C", str(tmp_path), "status", "--porcelain"], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, errors="replace",
        )  # fmt: skip
    finally:
        os.close(leaked)
    out, _ = theirs.communicate(timeout=60)
    fds = out.split("fds: ")[1].split("\n")[0].split()
    assert (
        "seen: 1" in out
        and str(leaked) not in fds[3:]
        and _masked(out).endswith(f": {_started_ignoring():#x}")
    )
    assert _masked(ours.communicate(timeout=60) or "") == _masked(out)
    assert ours.returncode == theirs.returncode == 0


def test_no_git_on_the_path_is_no_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    pending = start_uncommitted(str(tmp_path), None)
    assert pending.proc is None and pending.notice() is None


def _commit_all(repo: Path) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "advice.addEmbeddedRepo=false", "add", "-A"],
                   check=True)  # fmt: skip
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=u", "-c", "user.email=u@u", "commit", "-qm", "i"],
        check=True,
    )


def test_a_status_stopped_mid_way_leaves_the_users_index_untouched(tmp_path: Path) -> None:
    # The check is SIGKILLed when it is late or not wanted (a run that failed first). A
    # plain `git status` holds index.lock while it compares the work tree, to write the
    # refreshed index after: killed there, the lock stayed and the user's next `git commit`
    # failed ("index.lock: File exists"). A slow comparison: a changed file of a submodule
    # whose clean filter never ends (git runs the submodule's status while it compares).
    repo, sub = tmp_path / "repo", tmp_path / "repo" / "sub"
    sub.mkdir(parents=True)
    for path in (repo, sub):
        subprocess.run(["git", "init", "-q", str(path)], check=True)
    (sub / ".gitattributes").write_text("a filter=slow\n")
    (sub / "a").write_text("one\n")
    _commit_all(sub)
    _commit_all(repo)
    blocked = tmp_path / "blocked.pid"
    clean = f"sh -c 'echo $$ > {blocked}.tmp; mv {blocked}.tmp {blocked}; exec sleep 60'"
    subprocess.run(["git", "-C", str(sub), "config", "filter.slow.clean", clean], check=True)
    (sub / "a").write_text("two\n")  # the same size, a later time: only the content tells
    later = time.time() + 10
    os.utime(sub / "a", (later, later))
    index = repo / ".git" / "index"
    before = (index.read_bytes(), index.stat().st_mtime_ns)
    pending = start_uncommitted(str(repo), None)
    try:
        deadline = time.monotonic() + 60
        while not blocked.exists():
            assert time.monotonic() < deadline, "git never ran the submodule's filter"
            time.sleep(0.02)
        pending.close()  # as hal stops it: SIGKILL
    finally:
        if blocked.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(blocked.read_text()), signal.SIGKILL)
    assert not (repo / ".git" / "index.lock").exists()
    assert (index.read_bytes(), index.stat().st_mtime_ns) == before
