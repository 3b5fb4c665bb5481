"""The tmux session that holds an agent's run ON the ssh host reads the agent's command
verbatim: no argument of it is taken for tmux syntax (real sshd of tests/sshd.py, real tmux
on the "remote" host)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from tests.sshd import Sshd
from tests.support.ssh import ssh_provider

import hal9999
from hal9999.providers.ssh.sandbox import SshSandbox
from hal9999.spec import ArgvCommand, SandboxSpec

pytestmark = [pytest.mark.ssh, pytest.mark.tmux, pytest.mark.usefixtures("ssh_connections_closed")]

SOURCES = os.path.dirname(os.path.dirname(hal9999.__file__))
"""The relay runs this checkout's code (its environment is the command's, no PYTHONPATH)."""


async def test_an_argument_ending_in_a_semicolon_runs_no_tmux_command_on_the_host(
    sshd_server: Sshd, hal_home: Path, workspace: Path
) -> None:
    # Outside every bind of the sandbox: only a process on the host itself can write it.
    marker = sshd_server.home / f"escaped-{os.getpid()}"
    provider = ssh_provider(sshd_server, hal_home / "ssh")
    spec = SandboxSpec(provider="ssh", network="none", workspace=workspace)
    async with await provider.create(spec) as sandbox:
        assert isinstance(sandbox, SshSandbox)
        # tmux reads an argument ending in ';' as the end of a command: unescaped, the
        # arguments after it ran as `run-shell` on the ssh host, outside the sandbox.
        agent = ArgvCommand(argv=("sh", "-c", 'echo "said $0 $1";', "run-shell",
                                  f"touch {marker}"))  # fmt: skip
        launch = sandbox.launch(agent)
        assert "--session" in launch.argv
        relay = await asyncio.create_subprocess_exec(
            *launch.argv, env=launch.env | {"PYTHONPATH": SOURCES},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(relay.communicate(), 60)
        assert not marker.exists()
        assert (relay.returncode, out.decode().split("\n")[0]) == (
            0, f"said run-shell touch {marker}"), err  # fmt: skip


async def test_the_ssh_users_tmux_conf_never_reaches_the_session(
    sshd_server: Sshd, hal_home: Path, workspace: Path
) -> None:
    # The host user's ~/.tmux.conf (hooks, run-shell) would run host commands in hal's
    # session and change how the run ends: the session's server loads none.
    marker = sshd_server.home / f"tmux-conf-{os.getpid()}"
    conf = sshd_server.home / ".tmux.conf"
    conf.write_text(
        f'run-shell "touch {marker}"\n'
        f"set-hook -g session-created 'run-shell \"touch {marker}\"'\n"
        "set-option -g remain-on-exit on\n"
    )
    provider = ssh_provider(sshd_server, hal_home / "ssh")
    spec = SandboxSpec(provider="ssh", network="none", workspace=workspace)
    try:
        async with await provider.create(spec) as sandbox:
            assert isinstance(sandbox, SshSandbox)
            home = {"HOME": str(sshd_server.home)}  # the session's server's, whatever inside
            launch = sandbox.launch(ArgvCommand(argv=("echo", "ran")), env=home)
            assert "--session" in launch.argv
            relay = await asyncio.create_subprocess_exec(
                *launch.argv, env=launch.env | {"PYTHONPATH": SOURCES},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(relay.communicate(), 60)
            assert (relay.returncode, out.decode().split("\n")[0]) == (0, "ran"), err
    finally:
        conf.unlink()
    assert not marker.exists()
