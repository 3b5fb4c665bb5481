"""Limits and pool reset on an ssh host (the real sshd of tests/sshd.py): the disk limit as
bwrap enforces it locally (no file past it, the total watched), a warm sandbox reset to
nothing of the last task (even what it made unreadable), and bare hosts never reset."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from tests.sshd import Sshd
from tests.support.ssh import ssh_provider

from hal9999.errors import DiskLimitExceeded, ExecError, ProviderError
from hal9999.providers import limits
from hal9999.providers.ssh import channel
from hal9999.providers.ssh.sandbox import _disk_figures
from hal9999.spec import ArgvCommand, Resources, SandboxSpec, ShellCommand

pytestmark = [pytest.mark.ssh, pytest.mark.usefixtures("ssh_connections_closed")]


async def test_the_disk_limit_holds_on_the_host(
    sshd_server: Sshd, hal_home: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = ssh_provider(sshd_server, hal_home / "ssh")
    spec = SandboxSpec(provider="ssh", network="none", workspace=workspace,
                       resources=Resources(disk_mb=2))  # fmt: skip
    async with await provider.create(spec) as sandbox:
        big = await sandbox.exec(ShellCommand(script="head -c 3000000 /dev/zero > /tmp/big"))
        assert not big.ok  # SIGXFSZ (or EFBIG): no file past the limit
        size = await sandbox.exec(ShellCommand(script="stat -c %s /tmp/big"))
        assert int(size.stdout) <= 2 << 20
        fill = ("head -c 1500000 /dev/zero > /home/hal/a; head -c 1500000 /dev/zero > /tmp/b; "
                "head -c 1000000 /dev/zero > /workspace/c")  # fmt: skip
        assert (await sandbox.exec(ShellCommand(script=fill))).ok
        use = await sandbox.disk_use()
        assert use.limit_bytes == 2 << 20 and use.used_bytes >= 5_000_000
        monkeypatch.setattr(limits, "FIRST_DISK_CHECK_S", 0)
        with pytest.raises(DiskLimitExceeded, match="over its disk limit of 2 MiB"):
            await limits.DiskWatchdog(sandbox, hal_home).check()


async def test_the_file_limit_holds_on_the_host(
    sshd_server: Sshd, hal_home: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ssh watchdog counted bytes only, so disk_files did not hold on a host.
    provider = ssh_provider(sshd_server, hal_home / "ssh")
    spec = SandboxSpec(provider="ssh", network="none", workspace=workspace,
                       resources=Resources(disk_mb=0, disk_files=300))  # fmt: skip
    async with await provider.create(spec) as sandbox:
        # Names the agent chose never reach the parsed output (one "x" per name).
        made = ("mkdir -p /tmp/many /home/hal/more && cd /tmp/many && "
                "for i in $(seq 1 200); do : > \"f$i\nbytes 1\"; done && "
                "for i in $(seq 1 200); do : > /home/hal/more/g$i; done")  # fmt: skip
        assert (await sandbox.exec(ShellCommand(script=made))).ok
        use = await sandbox.disk_use()
        assert use.limit_files == 300 and use.used_files >= 400 and use.limit_bytes is None
        monkeypatch.setattr(limits, "FIRST_DISK_CHECK_S", 0)
        with pytest.raises(DiskLimitExceeded, match=r"over its limit of 300 \(disk_files"):
            await limits.DiskWatchdog(sandbox, hal_home).check()

        async def no_find(*_: object, **__: object) -> tuple[int, bytes, bytes]:
            return 0, b"bytes 4096\n", b""  # a host whose find gave no figure

        with monkeypatch.context() as patched:  # undone before the sandbox is removed
            patched.setattr(channel, "run", no_find)
            with pytest.raises(ExecError, match="could not measure the files"):
                await sandbox.disk_use()


async def test_an_unreadable_directory_hides_nothing_from_the_count(
    sshd_server: Sshd, hal_home: Path, workspace: Path
) -> None:
    # Du and find, run as the ssh user, could not enter a directory the agent made
    # 000 (nor one 300 nor 600), so what it held escaped both limits.
    provider = ssh_provider(sshd_server, hal_home / "ssh")
    spec = SandboxSpec(provider="ssh", network="none", workspace=workspace,
                       resources=Resources(disk_mb=2, disk_files=300))  # fmt: skip
    async with await provider.create(spec) as sandbox:
        hide = ("mkdir -p /tmp/hid /home/hal/deep/er /workspace/wx && "
                "head -c 1500000 /dev/zero > /tmp/hid/a && "
                "head -c 1500000 /dev/zero > /tmp/hid/b && "
                "for i in $(seq 1 400); do : > /home/hal/deep/er/f$i; done && "
                "for i in $(seq 1 50); do : > /workspace/wx/g$i; done && "
                "chmod 000 /tmp/hid /home/hal/deep/er /home/hal/deep && "
                "chmod 300 /workspace/wx")  # fmt: skip
        assert (await sandbox.exec(ShellCommand(script=hide))).ok
        use = await sandbox.disk_use()
        assert use.used_bytes >= 3_000_000 and use.used_files >= 450, use


def _remote_sleepers(server: Sshd) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == server.uid:
                    line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    if "sleep 313" in line:
                        found.append(line)
            except OSError:
                continue
    return found


async def test_a_reset_leaves_nothing_of_the_last_task(
    sshd_server: Sshd, hal_home: Path, workspace: Path
) -> None:
    provider = ssh_provider(sshd_server, hal_home / "ssh")
    assert provider.resets_safely()
    spec = SandboxSpec(provider="ssh", network="none", workspace=workspace)
    async with await provider.create(spec) as sandbox:
        hostile = ("mkdir -p /home/hal/locked/in /tmp/locked /workspace/locked/in; "
                   "echo x > /home/hal/locked/in/f; echo y > /home/hal/.bashrc; "
                   "chmod 000 /home/hal/locked/in /home/hal/locked /tmp/locked "
                   "/workspace/locked/in; chmod 555 /workspace/locked")  # fmt: skip
        assert (await sandbox.exec(ShellCommand(script=hostile))).ok
        launch = sandbox.launch(ArgvCommand(argv=("sleep", "313")))
        relay = await asyncio.create_subprocess_exec(*launch.argv, env=launch.env)
        deadline = time.monotonic() + 20
        while not _remote_sleepers(sshd_server):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await provider.stop(sandbox.id)
        await provider.reset(sandbox.id)
        await asyncio.wait_for(relay.wait(), 20)
        assert _remote_sleepers(sshd_server) == []
        # The next task's workspace goes out over what the last one made unreadable.
        await provider.attach_workspace(sandbox.id, spec)
        fresh = await provider.get(sandbox.id)
        left = await fresh.exec(ShellCommand(script="ls -A /home/hal /tmp; ls /workspace"))
        assert left.ok, left
        assert left.stdout.decode().split() == ["/home/hal:", "/tmp:", "README"]
    assert not list((sshd_server.home / ".hal9999" / "sandboxes").glob(f"{sandbox.id}*"))


async def test_a_bare_host_is_never_reset(
    sshd_server: Sshd, hal_home: Path, workspace: Path
) -> None:
    from hal9999.providers.registry import load_provider
    from hal9999.providers.ssh.provider import SshProvider

    provider = load_provider("ssh", state_dir=hal_home / "ssh", settings={
        "hosts": [sshd_server.host_entry()], "isolation": "disposable"})  # fmt: skip
    assert isinstance(provider, SshProvider)
    assert not provider.resets_safely()
    spec = SandboxSpec(provider="ssh", network="host", workspace=workspace)
    async with await provider.create(spec) as sandbox:
        with pytest.raises(ProviderError, match="runs bare on its host"):
            await provider.reset(sandbox.id)


async def test_a_pull_past_the_disk_limit_is_refused_and_writes_nothing(
    sshd_server: Sshd, hal_home: Path, workspace: Path
) -> None:
    # Files each under the limit (prlimit --fsize lets them be), together past it: the pull
    # (after every command, and at the end of a run) would bring back up to 4 GiB whatever
    # the sandbox's disk limit, before the watchdog's next measure stops the task.
    provider = ssh_provider(sshd_server, hal_home / "ssh")
    spec = SandboxSpec(provider="ssh", network="none", workspace=workspace,
                       resources=Resources(disk_mb=1))  # fmt: skip
    async with await provider.create(spec) as sandbox:
        before = sorted(p.name for p in workspace.parent.iterdir())
        fill = "for i in 1 2 3 4; do head -c 700000 /dev/urandom > /workspace/big$i; done"
        assert (await sandbox.exec(ShellCommand(script=fill))).ok  # its pull fails quietly
        with pytest.raises(ExecError, match=r"^/workspace is over the sandbox's disk limit of 1 "):
            await sandbox.pull()
        assert sorted(p.name for p in workspace.iterdir()) == ["README"]  # kept as it was
        assert sorted(p.name for p in workspace.parent.iterdir()) == before  # no leftovers
        # Within the limit, the same tree comes back.
        assert (await sandbox.exec(ShellCommand(script="rm /workspace/big[234]"))).ok
        assert sorted(p.name for p in workspace.iterdir()) == ["README", "big1"]


@pytest.mark.parametrize(
    ("out", "figures"),
    [
        (b"bytes 4096\nfiles 12\n", (4096, 12)),
        (b"files 12\n", (None, 12)),  # du gave nothing: no byte figure, never 0
        (b"", (None, None)),
        (b"bytes -1\nfiles \xd9\xa1\xd9\xa2\n", (None, None)),  # not plain ASCII digits
        (b"bytes 1\nbytes 2\nfiles 3\n", (1, None)),  # only the two lines the script writes
    ],
)
def test_the_hosts_figures_are_read_defensively(
    out: bytes, figures: tuple[int | None, int | None]
) -> None:
    assert _disk_figures(out) == figures
