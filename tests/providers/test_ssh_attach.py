"""``hal task attach`` on an ssh task opens the agent's tmux ON THE REMOTE HOST, through the
system ssh client that checks the host key strictly against hal's own known_hosts file.

Driven through a real pty (pty.fork), against the real sshd of tests/sshd.py."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.sshd import Sshd
from tests.support.ssh import toml_host

from hal9999.providers.ssh import session
from hal9999.providers.ssh.config import SshHost

pytestmark = [pytest.mark.ssh, pytest.mark.tmux, pytest.mark.slow]

AGENT = "sh -c 'echo attached-view; sleep 60'"


def _environ(tmp_path: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    return environ | {"HAL_HOME": str(tmp_path / "halhome"),
                      "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "TERM": "xterm"}  # fmt: skip


def _hal(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hal9999", *args], env=_environ(tmp_path), cwd=tmp_path / "repo",
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _read_until(fd: int, want: bytes, limit: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + limit
    while want not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break
    return seen


def _wait_for(check: object, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _remote_processes(server: Sshd, name: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                mine = entry.stat().st_uid == server.uid
                if mine and (entry / "comm").read_text().startswith(name):
                    found.append((entry / "cmdline").read_bytes().decode(errors="replace"))
            except OSError:
                continue
    return found


def test_attach_opens_the_agents_tmux_on_the_remote_host(sshd_server: Sshd, tmp_path: Path) -> None:
    config = tmp_path / "xdg" / "hal9999" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(toml_host(sshd_server))
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (["init", "-q", "-b", "main"], ["commit", "-q", "--allow-empty", "-m", "i"]):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                       check=True)  # fmt: skip
    out = _hal(tmp_path, "run", "--detach", "--provider", "ssh", "--agent", AGENT, "x")
    assert out.returncode == 0, out.stderr
    task_id = out.stdout.strip()
    mirrors = sshd_server.home / ".hal9999" / "sandboxes"
    try:
        # The run is held by a tmux server of the remote user, in the sandbox's mirror.
        _wait_for(lambda: list(mirrors.glob("*/r-*/sock")), 60, "the remote tmux session")
        assert _remote_processes(sshd_server, "tmux")
        pid, fd = pty.fork()
        if pid == 0:  # the child: `hal task attach` on a terminal of its own
            os.chdir(repo)
            os.execve(sys.executable, [sys.executable, "-m", "hal9999", "task", "attach",
                                       task_id], _environ(tmp_path))  # fmt: skip
        try:
            screen = _read_until(fd, b"attached-view", 30)
            assert b"attached-view" in screen, screen
            # The CLI became the system ssh client, checking the key strictly against
            # hal's own known_hosts file (holding exactly the configured key).
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert Path(cmdline[0].decode()).name == "ssh", cmdline
            assert b"StrictHostKeyChecking=yes" in cmdline and b"BatchMode=yes" in cmdline
            [known] = [a[len(b"UserKnownHostsFile="):].strip(b'"') for a in cmdline
                       if a.startswith(b"UserKnownHostsFile=")]  # fmt: skip
            assert Path(known.decode()).read_text().split()[1:] == sshd_server.host_key.split()
            assert Path(known.decode()).stat().st_mode & 0o077 == 0
            # The terminal is a tmux client of the remote user, attached to the run's
            # session in the sandbox's mirror (no host-side tmux relays it).
            _wait_for(lambda: any("attach-session" in line
                                  for line in _remote_processes(sshd_server, "tmux")),
                      15, "remote client")  # fmt: skip
            os.write(fd, b"\x02d")  # detach (Ctrl-b d): the run goes on
            _read_until(fd, b"detached", 15)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            pid = 0
        finally:
            if pid:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            os.close(fd)
        shown = json.loads(_hal(tmp_path, "task", "show", task_id, "--json").stdout)
        assert shown["status"] == "running", shown
    finally:
        _hal(tmp_path, "task", "cancel", task_id)
    # Cancelled: the remote session and everything in it are gone.
    _wait_for(lambda: not list(mirrors.glob("*/r-*/sock"))
              and not _remote_processes(sshd_server, "tmux"),
              30, "the remote session to go")  # fmt: skip


def test_attach_refuses_a_host_whose_key_is_not_the_configured_one(
    sshd_server: Sshd, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = " ".join(Path(f"{other}.pub").read_text().split()[:2])
    host = SshHost.model_validate(sshd_server.host_entry(host_key=wrong))
    argv = session.attach_argv(host, "/nonexistent", tmp_path / "state")
    known = tmp_path / "state" / "known_hosts" / "box"
    before = known.read_text()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)  # fmt: skip
    assert out.returncode == 255
    assert "Host key verification failed" in out.stderr or "REMOTE HOST IDENTIFICATION" in (
        out.stderr
    ), out.stderr
    assert known.read_text() == before  # nothing learnt
