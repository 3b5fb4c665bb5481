"""An agent in an ssh host's bwrap sandbox meets the seccomp filter a local bwrap sandbox
has (providers/ssh/remote.py): before, the host's bwrap ran it with none, so nested user
namespaces, io_uring, keyrings and perf events were all within its reach there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.sshd import Sshd
from tests.support.ssh import ssh_provider

from hal9999.providers.ssh.provider import SshProvider
from hal9999.spec import SandboxSpec, ShellCommand

pytestmark = [
    pytest.mark.ssh,
    pytest.mark.usefixtures("ssh_connections_closed"),
    # The test host (tests/sshd.py) is a user, a network namespace and a veth pair made by
    # root: the root pass runs these; the ordinary user's pass (scripts/test-nonroot.sh) not.
    pytest.mark.skipif(os.geteuid() != 0, reason="the sshd test host is made by root"),
]

PROBE = r"""
grep '^Seccomp:' /proc/self/status
unshare -Ur true 2>/dev/null && echo nested || echo refused
python3 -c '
import ctypes, errno, fcntl, os, struct, termios
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)
ring = libc.syscall(ctypes.c_long(425), ctypes.c_long(4), ctypes.c_long(ctypes.addressof(params)))
print("io_uring", "set up" if ring >= 0 else errno.errorcode[ctypes.get_errno()])
master, slave = os.openpty()
try:
    fcntl.ioctl(slave, termios.TIOCSETD, struct.pack("i", 0)); print("TIOCSETD done")
except OSError as e:
    print("TIOCSETD", errno.errorcode[e.errno])
'
"""


def provider_and_spec(
    server: Sshd, hal_home: Path, tmp_path: Path
) -> tuple[SshProvider, SandboxSpec]:
    """An ssh provider on ``server`` (bwrap isolation) and a spec of a sandbox there."""
    (workspace := tmp_path / "ws").mkdir()
    spec = SandboxSpec(provider="ssh", network="none", workspace=workspace)
    return ssh_provider(server, hal_home / "ssh"), spec


async def test_an_ssh_hosts_bwrap_sandbox_runs_under_the_filter(
    sshd_server: Sshd, hal_home: Path, tmp_path: Path
) -> None:
    provider, spec = provider_and_spec(sshd_server, hal_home, tmp_path)
    async with await provider.create(spec) as sandbox:
        result = await sandbox.exec(ShellCommand(script=PROBE))
    assert result.stdout.decode().splitlines() == [
        "Seccomp:\t2",
        "refused",
        "io_uring EPERM",
        "TIOCSETD EPERM",
    ], result


async def test_a_sandbox_an_older_hal_made_still_runs_its_commands(
    sshd_server: Sshd, hal_home: Path, tmp_path: Path
) -> None:
    provider, spec = provider_and_spec(sshd_server, hal_home, tmp_path)
    async with await provider.create(spec) as made:
        # As an older hal left it: no filter in its root, and a record that names none.
        record = provider.records.load(made.id)
        Path(record.root, "seccomp.bpf").unlink()
        provider.records.save(record.model_copy(update={"seccomp": False}))
        sandbox = await provider.get(made.id)
        result = await sandbox.exec(ShellCommand(script="grep '^Seccomp:' /proc/self/status"))
    assert result.stdout == b"Seccomp:\t0\n", result
