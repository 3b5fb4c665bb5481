"""What a command leaves running on a bare ssh host (the real sshd of tests/sshd.py): ended
when the command does, however it hid (environment cleared, a session of its own, a double
fork), and by ``end_processes`` before collection when a command's end spared it (PM2's
marker); the work collected afterwards stays as it is."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from tests.sshd import Sshd, running_sshd

from hal9999.providers.registry import load_provider
from hal9999.providers.ssh.provider import SshProvider
from hal9999.providers.ssh.sandbox import SshSandbox
from hal9999.spec import SandboxSpec, ShellCommand

pytestmark = [pytest.mark.ssh, pytest.mark.usefixtures("ssh_connections_closed")]

# Writers that hide from the command's marker (environment cleared, a session of their own),
# one under a name with the stat file's separators in it, one forking all the time.
LEAVE = r"""
(env -i setsid sh -c 'while :; do date +%s%N >> f; sleep 0.01; done' >/dev/null 2>&1 &)
cp /bin/sleep "$HOME/x) 1 1) S 1"
(env -i setsid "$HOME/x) 1 1) S 1" 600 >/dev/null 2>&1 &)
(env -i setsid sh -c 'while :; do sleep 0.01 & wait; done' >/dev/null 2>&1 &)
until [ -s f ]; do sleep 0.01; done
"""
# What a command's end spares (PM2 inside carries the command's marker plus "d"), with an
# unmarked writer under it.
SPARED = r"""
(HAL_EXEC="${HAL_EXEC}d" setsid sh -c '
  env -i sh -c "while :; do date +%s%N >> g; sleep 0.01; done" & wait' >/dev/null 2>&1 &)
until [ -s g ]; do sleep 0.01; done
"""


def bare_provider(server: Sshd, state: Path) -> SshProvider:
    provider = load_provider("ssh", state_dir=state, settings={
        "hosts": [server.host_entry()], "isolation": "disposable"})  # fmt: skip
    assert isinstance(provider, SshProvider)
    return provider


def left_in(server: Sshd, root: str) -> list[str]:
    """The command lines of the test user's live processes working under ``root``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != server.uid:
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cwd = os.readlink(entry / "cwd")
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if state != "Z" and (cwd == root or cwd.startswith(root + "/")):
            found.append(line)
    return found


async def assert_stable(sandbox: SshSandbox, workspace: Path, *names: str) -> None:
    """The writers' files on the host stay as they are, and the work pulled back is them."""
    files = [Path(sandbox.workdir) / name for name in names]
    sizes = [written.stat().st_size for written in files]
    assert all(sizes), sizes
    await sandbox.pull()
    await asyncio.sleep(0.3)
    assert [written.stat().st_size for written in files] == sizes, "a writer went on"
    for written in files:
        assert (workspace / written.name).read_bytes() == written.read_bytes()


async def test_what_a_command_left_ends_with_it_however_it_hid(
    sshd_server: Sshd, hal_home: Path, workspace: Path
) -> None:
    from hal9999.tasks import finish

    provider = bare_provider(sshd_server, hal_home / "ssh")
    spec = SandboxSpec(provider="ssh", network="host", workspace=workspace)
    async with await provider.create(spec) as sandbox:
        assert (await sandbox.exec(ShellCommand(script=LEAVE))).ok
        assert left_in(sshd_server, sandbox.record.root) == []
        # The runner's step before collection finds nothing more to end.
        assert await finish.end_leftovers(provider, sandbox) is sandbox
        await assert_stable(sandbox, workspace, "f")


async def test_a_launched_agent_s_leftovers_end_before_its_work_is_collected(
    sshd_server: Sshd, hal_home: Path, workspace: Path
) -> None:
    # The agent's own path: the relay, the run in tmux on the host.
    from hal9999.tasks import finish

    provider = bare_provider(sshd_server, hal_home / "ssh")
    spec = SandboxSpec(provider="ssh", network="host", workspace=workspace)
    async with await provider.create(spec) as sandbox:
        launch = sandbox.launch(ShellCommand(script=LEAVE + SPARED))
        here = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}
        relay = await asyncio.create_subprocess_exec(*launch.argv, env=launch.env | here)
        assert await asyncio.wait_for(relay.wait(), 30) == 0
        left = left_in(sshd_server, sandbox.record.root)
        # The spared writer (and its `sleep`s) only.
        assert any(">> g" in line for line in left), left
        gone = (">> f", "x) 1 1)", "& wait; done")
        assert not [line for line in left if any(mark in line for mark in gone)], left
        assert await finish.end_leftovers(provider, sandbox) is sandbox
        assert left_in(sshd_server, sandbox.record.root) == []
        await assert_stable(sandbox, workspace, "f", "g")


async def test_end_processes_ends_what_a_command_s_end_spared(
    sshd_server: Sshd, hal_home: Path, workspace: Path
) -> None:
    provider = bare_provider(sshd_server, hal_home / "ssh")
    spec = SandboxSpec(provider="ssh", network="host", workspace=workspace)
    async with (
        await provider.create(spec) as sandbox,
        await provider.create(spec) as other,
    ):
        assert (await sandbox.exec(ShellCommand(script=SPARED))).ok
        assert (await other.exec(ShellCommand(script=SPARED))).ok
        assert left_in(sshd_server, sandbox.record.root) != []
        started = time.monotonic()
        assert await sandbox.end_processes()
        assert time.monotonic() - started < 10
        assert left_in(sshd_server, sandbox.record.root) == []
        await assert_stable(sandbox, workspace, "g")
        # Another sandbox's processes on the same host and user live on.
        assert left_in(sshd_server, other.record.root) != []


async def test_doctor_warns_of_a_bare_host_without_python3(
    sshd_server: Sshd, hal_home: Path
) -> None:
    # Without python3 a bare host's commands run without the reaper: what one leaves with
    # a cleared environment in a session of its own outlives it, and doctor said nothing.
    from hal9999.providers.ssh.doctor import ssh_findings

    def bare(server: Sshd) -> dict[str, object]:
        return {"hosts": [server.host_entry()], "isolation": "disposable"}

    [found] = await ssh_findings(bare(sshd_server), hal_home / "ssh")
    assert found.ok and "isolation disposable" in found.detail and "python3" not in found.detail
    programs = Path(tempfile.mkdtemp(prefix="hal-no-python-"))  # the test user must reach it
    try:
        programs.chmod(0o755)
        for name in ("sh", "prlimit"):
            (programs / name).symlink_to(str(shutil.which(name)))
        with contextlib.ExitStack() as stack:
            server = await asyncio.to_thread(
                stack.enter_context, running_sshd(login_path=str(programs))
            )
            [found] = await ssh_findings(bare(server), hal_home / "ssh")
            await asyncio.to_thread(stack.close)
    finally:
        shutil.rmtree(programs)
    assert not found.ok, found
    assert (
        "reachable, isolation disposable but has no python3: what a command leaves "
        "running detached (env -i setsid) outlives it" in found.detail
    )
    assert found.fix == "install python3 on that host (apt-get install python3)"
