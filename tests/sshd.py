"""A real OpenSSH ``sshd`` for tests, in a network namespace of its own.

The namespace is reached over a veth pair with link-local addresses (a random /30 in
169.254.77.0/24, so a leftover of a crashed run never collides). sshd runs in a private
mount namespace too, where copies of /etc/passwd, /etc/group and /etc/shadow add the test
user ``haltest`` with an empty HOME under the test's tmp dir; the machine's own files are
never changed. Everything (processes, namespace, veth) goes in the finalizer.

Each server's ``haltest`` has a uid of its own (:func:`_free_uid`): the finalizer kills
every process of that uid (what a sandbox command left, however it hid), and sshd's
per-connection process runs as the user too, so with one uid for all, a finished server
(another test session's, on the same machine) killed the live connections of every other
one: a command lost mid-run (no exit status) or a push reset mid-stream.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SSHD = "/usr/sbin/sshd"
USER = "haltest"
UIDS = range(100_000, 1_000_000)
"""Where a server's uid is drawn from: far from the system's and from the sandbox users'
(:data:`hal9999.providers.host.user.UID_BASE`)."""


@functools.cache
def missing_sshd() -> str | None:
    """Why the ssh tests cannot run here (None when they can)."""
    if not Path(SSHD).exists():
        return "OpenSSH's sshd is not installed (apt-get install openssh-server)"
    if shutil.which("ip") is None or shutil.which("ssh-keygen") is None:
        return "ip (iproute2) or ssh-keygen is missing"
    if os.geteuid() != 0:
        return "the sshd tests need root (network namespaces)"
    try:
        import asyncssh  # noqa: F401
    except ImportError:
        return "asyncssh is not installed (uv sync installs the dev group)"
    return None


@dataclass
class Sshd:
    """A running sshd and what a client needs to reach it."""

    netns: str
    address: str
    host_veth: str
    key_file: Path
    host_key: str
    home: Path
    proc: subprocess.Popen[bytes]
    host_key_file: Path
    uid: int
    """The test user's uid on this server (its own, see the module docstring)."""

    def host_entry(self, name: str = "box", **extra: Any) -> dict[str, Any]:
        """A ``[[providers.ssh.hosts]]`` entry for this server."""
        entry = {"name": name, "address": self.address, "user": USER,
                 "key_file": str(self.key_file), "host_key": self.host_key}  # fmt: skip
        return entry | extra

    def session_pids(self) -> list[int]:
        """sshd's per-connection processes: the listener's sshd descendants (the listener
        excluded). Found by parentage, not by ``ip netns pids``: that one opens the name under
        /run/netns, which a long test session can leave pointing at no namespace (seen: an
        empty answer while the listener served connections)."""
        return [pid for pid in _descendants(self.proc.pid) if _comm(pid) == "sshd"]

    def remote_argvs(self) -> list[str]:
        """The command line of every process of the test user (what ``ps`` shows there)."""
        lines = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == self.uid:
                    lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        return lines


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _descendants(root: int) -> list[int]:
    """Every live process below ``root`` (children of children included)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                # The command name is in parentheses and may hold spaces: split after it.
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _netns_pids(netns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _keygen(path: Path) -> str:
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hal-test", "-f", str(path))
    return path.with_suffix(".pub").read_text().strip() if path.suffix else Path(
        f"{path}.pub").read_text().strip()  # fmt: skip


def _free_uid() -> int:
    """A uid of :data:`UIDS` that no live process has and no live server's HOME (one with
    no connection has no process), random from the OS as :func:`_free_block` is; two
    servers starting at the same moment may draw the same one: one chance in 900,000."""
    used = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                used.add(entry.stat().st_uid)
    for home in Path(tempfile.gettempdir()).glob("hal-sshd-*/home"):
        with contextlib.suppress(OSError):
            used.add(home.stat().st_uid)
    for _ in range(1000):
        if (uid := UIDS[secrets.randbelow(len(UIDS))]) not in used:
            return uid
    raise RuntimeError(f"no free uid left in {UIDS} (leftover test servers?)")


def _free_block(subnet: str) -> tuple[int, socket.socket]:
    """A /30 of ``subnet``.0/24 no live veth of this machine uses, and what reserves it.

    Two servers alive at once (a session's droplets and a test's host) must never share a
    block: the host would route the test's address to the other server. The choice is
    random from the OS, not from ``random``, whose state tests may seed. A block is free
    from when it is chosen until its address is on the veth: two servers starting at the
    same moment (the other xdist worker's) chose the same one (3 rounds of 4 of 8 started
    at once). So each holds, while it lives, a unix socket in the abstract namespace named
    for its block: a block whose name is taken is another server's."""
    shown = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=False
    ).stdout
    used = {int(last) // 4 * 4 for last in re.findall(rf"inet {re.escape(subnet)}\.(\d+)/", shown)}
    free = [block for block in range(0, 256, 4) if block not in used]
    while free:
        block = free.pop(secrets.randbelow(len(free)))
        claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            claim.bind(f"\0hal-test-sshd-{subnet}.{block}")
        except OSError:
            claim.close()
            continue
        return block, claim
    raise RuntimeError(f"no free /30 left in {subnet}.0/24 (leftover test namespaces?)")


@contextlib.contextmanager
def running_sshd(
    subnet: str = "169.254.77",
    *,
    login_path: str | None = None,
    login_shell: str = "/bin/sh",
    root_login: bool = False,
) -> Iterator[Sshd]:
    """Start sshd in a fresh namespace (a random /30 of ``subnet``.0/24, a link-local
    block); stop and remove everything afterwards. ``login_path``: the PATH its sessions
    get (sshd's ``SetEnv``), to stand for a host that lacks a program; ``login_shell``: the
    test user's shell, which runs every command sshd is given; ``root_login``: ``root`` may
    log in too, with the test user's key (a host configured with ``user = "root"``)."""
    # Not pytest's tmp_path: its parents are mode 700, and the test user must reach its
    # HOME and sshd must read the authorized keys as that user.
    tmp = Path(tempfile.mkdtemp(prefix="hal-sshd-"))
    tmp.chmod(0o755)
    tag = os.urandom(3).hex()
    netns, host_veth, ns_veth = f"halssh-{tag}", f"hsh{tag}", f"hsn{tag}"
    block, claim = _free_block(subnet)
    host_ip, ns_ip = f"{subnet}.{block + 1}", f"{subnet}.{block + 2}"
    etc = tmp / "etc"
    etc.mkdir()
    home = tmp / "home"
    home.mkdir()
    uid = _free_uid()
    os.chown(home, uid, uid)
    host_key_file, client_key = etc / "host_key", tmp / "client_key"
    host_key = " ".join(_keygen(host_key_file).split()[:2])
    client_pub = _keygen(client_key)
    (etc / "authorized_keys").write_text(client_pub + "\n")
    etc.chmod(0o755)
    (etc / "authorized_keys").chmod(0o644)
    for name, line in (("passwd", f"{USER}:x:{uid}:{uid}::{home}:{login_shell}\n"),
                       ("group", f"{USER}:x:{uid}:\n"),
                       ("shadow", f"{USER}:*:19000:0:99999:7:::\n")):  # fmt: skip
        (etc / name).write_text(Path(f"/etc/{name}").read_text() + line)
    config = etc / "sshd_config"
    config.write_text(
        f"ListenAddress {ns_ip}\nPort 22\nHostKey {host_key_file}\nPidFile none\n"
        f"AuthorizedKeysFile {etc}/authorized_keys\nStrictModes no\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        + ("PermitRootLogin prohibit-password\n" if root_login else "PermitRootLogin no\n")
        + f"AllowUsers {USER}{' root' if root_login else ''}\n"
        "MaxSessions 10\nMaxStartups 100\nLogLevel ERROR\n"
        "X11Forwarding no\nAllowAgentForwarding no\n"
        # Remote forwards only (the gateway's socket, see relay.py): sshd ties unix socket
        # forwards to AllowTcpForwarding.
        "AllowTcpForwarding remote\nAllowStreamLocalForwarding remote\n"
        + (f"SetEnv PATH={login_path}\n" if login_path else "")
    )
    proc: subprocess.Popen[bytes] | None = None
    log = (tmp / "sshd.log").open("wb")
    try:
        _run("ip", "netns", "add", netns)
        _run("ip", "link", "add", host_veth, "type", "veth", "peer", "name", ns_veth)
        _run("ip", "link", "set", ns_veth, "netns", netns)
        _run("ip", "addr", "add", f"{host_ip}/30", "dev", host_veth)
        _run("ip", "link", "set", host_veth, "up")
        _run("ip", "-n", netns, "addr", "add", f"{ns_ip}/30", "dev", ns_veth)
        _run("ip", "-n", netns, "link", "set", ns_veth, "up")
        _run("ip", "-n", netns, "link", "set", "lo", "up")
        script = (
            'set -e; for f in passwd group shadow; do mount --bind "$1/$f" "/etc/$f"; done; '
            "mount -t tmpfs -o mode=755 tmpfs /run; mkdir -p /run/sshd; "
            f'exec {SSHD} -D -e -f "$1/sshd_config"'
        )
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "unshare", "--mount", "--propagation", "private",
             "sh", "-c", script, "sh", str(etc)],
            stdin=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as probe:
                probe.settimeout(0.2)
                if probe.connect_ex((ns_ip, 22)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start: {(tmp / 'sshd.log').read_text()}")
            time.sleep(0.05)
        yield Sshd(netns, ns_ip, host_veth, client_key, host_key, home, proc, host_key_file, uid)
    finally:
        pids = _netns_pids(netns) + ([*_descendants(proc.pid), proc.pid] if proc else [])
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _kill_user_processes(uid)
        if proc is not None:
            proc.wait()
        log.close()
        subprocess.run(["ip", "link", "del", host_veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        claim.close()  # the block is free again once its veth is gone
        shutil.rmtree(tmp, ignore_errors=True)


def _kill_user_processes(uid: int) -> None:
    # What the test user ran (sandbox commands) dies with the server, even a stray one; only
    # this server's user (its own uid): another server's connections live on.
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    os.kill(int(entry.name), signal.SIGKILL)


def fake_lima_env(server: Sshd, root: Path) -> dict[str, str]:
    """Environment that puts the fake ``limactl`` (tests/fakes/limactl.py) first on PATH,
    with its "VM" being ``server`` and ``$LIMA_HOME`` under ``root``."""
    import sys

    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    fake = Path(__file__).parent / "fakes" / "limactl.py"
    launcher = bin_dir / "limactl"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{fake}" "$@"\n')
    launcher.chmod(0o755)
    return {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "LIMA_HOME": str(root / "lima"),
        "FAKE_LIMA_SSH_ADDRESS": server.address,
        "FAKE_LIMA_USER": USER,
        "FAKE_LIMA_USER_KEY": str(server.key_file),
        "FAKE_LIMA_HOST_KEY": str(server.host_key_file),
        "FAKE_LIMA_SSHD_PID": str(server.proc.pid),
    }
