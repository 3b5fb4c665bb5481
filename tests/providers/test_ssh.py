"""The ssh provider against a real OpenSSH sshd in a network namespace (tests/sshd.py).

The contract suite runs against it too (``test_contract.py``, id ``ssh``); these are the
promises of the ssh provider that the contract does not cover.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.sshd import Sshd
from tests.support.ssh import ssh_provider

from hal9999.errors import ConfigError, ExecError, HostKeyRejected, ProviderError
from hal9999.providers.registry import load_provider
from hal9999.providers.ssh.connections import connect
from hal9999.providers.ssh.sandbox import SshSandbox
from hal9999.spec import ArgvCommand, SandboxSpec, ShellCommand

pytestmark = [pytest.mark.ssh, pytest.mark.usefixtures("ssh_connections_closed")]


async def test_one_connection_per_host_is_reused(
    sshd_server: Sshd, hal_home: Path, workspace: Path
) -> None:
    provider = ssh_provider(sshd_server, hal_home / "ssh")
    spec = SandboxSpec(provider="ssh", network="none", workspace=workspace)
    async with await provider.create(spec) as first, await provider.create(spec) as second:
        for sandbox in (first, second) * 3:
            assert (await sandbox.exec(ArgvCommand(argv=("true",)))).ok
        assert provider.pool.opened == 1  # two sandboxes, eight commands, one connection
        # What reuse saves: a command on the open connection is far cheaper than a new
        # connection and the same command (loaded machines vary).
        [host] = provider.hosts()
        conn = await provider.pool.get(host)
        reused = new = float("inf")
        for _ in range(3):
            started = time.monotonic()
            await conn.run("true")
            reused = min(reused, time.monotonic() - started)
            started = time.monotonic()
            fresh = await connect(host, limit_s=15, keepalive=5)
            await fresh.run("true")
            new = min(new, time.monotonic() - started)
            fresh.close()
            await fresh.wait_closed()
        assert reused < new, (reused, new)


async def test_a_host_with_a_different_key_is_refused(
    sshd_server: Sshd, hal_home: Path, workspace: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = " ".join(Path(f"{other}.pub").read_text().split()[:2])
    provider = ssh_provider(sshd_server, hal_home / "ssh", host_key=wrong)
    with pytest.raises(HostKeyRejected) as info:
        await provider.create(SandboxSpec(provider="ssh", network="none", workspace=workspace))
    assert "does not match its configured known-hosts entry" in info.value.message
    assert info.value.hint is not None and "host_key" in info.value.hint
    assert await provider.list() == []
    # And a host key is never taken on first sight: the entry must say what it is.
    entry = sshd_server.host_entry()
    del entry["host_key"]
    with pytest.raises(ConfigError, match="never auto-accepted"):
        load_provider("ssh", state_dir=hal_home / "x", settings={"hosts": [entry]})


async def test_a_host_that_refuses_the_key_fails_clearly(
    sshd_server: Sshd, hal_home: Path, workspace: Path, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    provider = ssh_provider(sshd_server, hal_home / "ssh", key_file=str(stranger))
    with pytest.raises(ProviderError, match="refused the key") as info:
        await provider.create(SandboxSpec(provider="ssh", network="none", workspace=workspace))
    assert info.value.hint is not None and "authorized_keys" in info.value.hint


def test_bare_on_a_shared_host_needs_the_opt_in(sshd_server: Sshd, hal_home: Path) -> None:
    hosts = [sshd_server.host_entry()]
    with pytest.raises(ConfigError, match="allow_bare_shared_host"):
        load_provider(
            "ssh", state_dir=hal_home / "x", settings={"hosts": hosts, "isolation": "none"}
        )
    settings = {"hosts": hosts, "isolation": "none", "allow_bare_shared_host": True}
    assert (
        load_provider("ssh", state_dir=hal_home / "x", settings=settings).capabilities.isolation
        == "none"
    )


async def test_commands_run_inside_bubblewrap_on_the_host(
    sshd_server: Sshd, hal_home: Path, workspace: Path
) -> None:
    provider = ssh_provider(sshd_server, hal_home / "ssh")
    spec = SandboxSpec(provider="ssh", network="none", workspace=workspace)
    async with await provider.create(spec) as sandbox:
        # The remote user's HOME (the mirror's parent) is not visible; a pid namespace.
        probe = ShellCommand(script='echo $$; test -e "$1" && echo home-visible; true')
        probe = probe.model_copy(
            update={"script": probe.script.replace("$1", str(sshd_server.home))}
        )
        out = (await sandbox.exec(probe)).stdout.decode().split()
        assert "home-visible" not in out
        assert out[0] in ("1", "2"), out


async def test_secrets_never_appear_in_any_argv(
    sshd_server: Sshd, hal_home: Path, workspace: Path
) -> None:
    secret = "s3cr3t-value-9f2e"
    provider = ssh_provider(sshd_server, hal_home / "ssh")
    spec = SandboxSpec(provider="ssh", network="none", workspace=workspace)
    async with await provider.create(spec) as sandbox:
        assert isinstance(sandbox, SshSandbox)
        command = ShellCommand(script='printf %s "$TOKEN" > /tmp/seen; sleep 2')
        running = asyncio.create_task(sandbox.exec(command, env={"TOKEN": secret}))
        seen: list[str] = []
        for _ in range(30):
            await asyncio.sleep(0.05)
            seen += sshd_server.remote_argvs()
        assert (await running).ok
        assert any("sleep 2" in line for line in seen), "the probe saw nothing running"
        assert not any(secret in line for line in seen)
        assert await sandbox.read_file("/tmp/seen") == secret.encode()
        # The relay a process manager starts: names in its argv, values in its environment.
        launch = sandbox.launch(ShellCommand(script='printf %s "$TOKEN"; sleep 1'),
                                env={"TOKEN": secret})  # fmt: skip
        relay = await asyncio.create_subprocess_exec(
            *launch.argv, env=launch.env, stdout=asyncio.subprocess.PIPE
        )
        seen = []
        for _ in range(20):
            await asyncio.sleep(0.05)
            seen += sshd_server.remote_argvs()
            seen.append(Path(f"/proc/{relay.pid}/cmdline").read_bytes().decode(errors="replace"))
        out, _ = await relay.communicate()
        assert (relay.returncode, out) == (0, secret.encode())
        assert not any(secret in line for line in seen)


async def test_a_dropped_connection_fails_the_run_clearly_and_keeps_the_work(
    sshd_server: Sshd, hal_home: Path, workspace: Path
) -> None:
    provider = ssh_provider(sshd_server, hal_home / "ssh")
    spec = SandboxSpec(provider="ssh", network="none", workspace=workspace)
    async with await provider.create(spec) as sandbox:
        agent = ShellCommand(script="echo done-before-the-drop > made; sleep 60")
        launch = sandbox.launch(agent)
        relay = await asyncio.create_subprocess_exec(
            *launch.argv, env=launch.env, stderr=asyncio.subprocess.PIPE
        )
        # The agent runs (a loaded machine may take a while to get there).
        for _ in range(1200):
            if await sandbox.exists("/workspace/made"):
                break
            await asyncio.sleep(0.05)
        # Cut every connection to the host (the relay's and hal's own) from the server side.
        for pid in sshd_server.session_pids():
            subprocess.run(["kill", "-9", str(pid)], check=False)
        _, err = await asyncio.wait_for(relay.communicate(), 90)
        assert relay.returncode == 255, err.decode()
        assert b"connection to box was lost" in err and b"Traceback" not in err
        # hal's pooled connection was cut too: the next command reconnects, and the work
        # made before the drop comes back to the hal host.
        assert (await sandbox.exec(ArgvCommand(argv=("true",)))).ok
        assert provider.pool.opened == 2
        assert (workspace / "made").read_text() == "done-before-the-drop\n"


async def test_a_lost_connection_mid_command_is_an_exec_error(
    sshd_server: Sshd, hal_home: Path, workspace: Path
) -> None:
    provider = ssh_provider(sshd_server, hal_home / "ssh")
    spec = SandboxSpec(provider="ssh", network="none", workspace=workspace)
    async with await provider.create(spec) as sandbox:
        # A duration of this test's own: a `sleep 30` left by another test must not pass
        # for this command.
        sleep = f"sleep 30.{secrets.randbelow(10**6):06d}"
        running = asyncio.create_task(sandbox.exec(ShellCommand(script=sleep)))
        # Cut the connection once the command runs (not while its channel opens, which is
        # retried on a new connection: nothing ran yet).
        for _ in range(200):
            if any(sleep in line for line in sshd_server.remote_argvs()):
                break
            await asyncio.sleep(0.05)
        for pid in sshd_server.session_pids():
            subprocess.run(["kill", "-9", str(pid)], check=False)
        with pytest.raises(ExecError, match="connection was lost"):
            await asyncio.wait_for(running, 20)


def test_relay_without_asyncssh_names_the_install(tmp_path: Path) -> None:
    script = (
        "import sys; sys.modules['asyncssh'] = None\n"
        "from hal9999.providers.ssh.connections import load_asyncssh\n"
        "from hal9999.errors import HalError\n"
        "try:\n    load_asyncssh()\nexcept HalError as e:\n    print(e.one_line())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert "pip install 'hal9999[ssh]'" in out.stdout


async def test_doctor_says_which_hosts_are_reachable_and_isolated(
    sshd_server: Sshd, hal_home: Path, tmp_path: Path
) -> None:
    from hal9999.providers.ssh.doctor import ssh_findings

    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = " ".join(Path(f"{other}.pub").read_text().split()[:2])
    hosts = [sshd_server.host_entry(), sshd_server.host_entry(name="impostor", host_key=wrong)]
    good, bad = await ssh_findings({"hosts": hosts}, hal_home / "ssh")
    assert good.ok and "reachable" in good.detail and "bubblewrap" in good.detail
    assert "0/4 sandboxes" in good.detail
    assert "disk limit enforced; cpu, memory and pid limits are not" in good.detail
    assert not bad.ok and "does not match" in bad.detail and bad.fix
    assert await ssh_findings(None, hal_home / "ssh") == []


async def test_many_commands_at_once_share_the_connection_within_sshds_session_limit(
    sshd_server: Sshd, hal_home: Path, workspace: Path
) -> None:
    # The test sshd keeps OpenSSH's default MaxSessions 10: 24 concurrent commands on one
    # connection would have channels refused without hal's own limit.
    provider = ssh_provider(sshd_server, hal_home / "ssh")
    spec = SandboxSpec(provider="ssh", network="none", workspace=workspace)
    async with await provider.create(spec) as sandbox:
        assert isinstance(sandbox, SshSandbox)
        results = await asyncio.gather(*(
            sandbox._run(ShellCommand(script=f"sleep 0.3; echo {n}"), None, b"", 60)
            for n in range(24)
        ))  # fmt: skip
        assert [r.stdout for r in results] == [f"{n}\n".encode() for n in range(24)]
        assert provider.pool.opened == 1


async def test_pool_status_shows_each_host_and_how_full_it_is(
    sshd_server: Sshd, hal_home: Path, workspace: Path, tmp_path: Path
) -> None:
    from hal9999.pool.pool import WarmPool
    from hal9999.pool.settings import ProviderSettings
    from hal9999.pool.slots import SlotDir

    provider = ssh_provider(sshd_server, hal_home / "ssh", capacity=3)
    pool = WarmPool(
        providers=lambda name: provider,
        settings=lambda name: ProviderSettings(max_size=3),
        slots=SlotDir(tmp_path / "slots"),
    )
    spec = SandboxSpec(provider="ssh", network="none", workspace=workspace)
    lease = await pool.claim(spec, task_id="t1")
    try:
        [host] = pool.status()["providers"]["ssh"]["hosts"]
        address = f"haltest@{sshd_server.address}:22"
        assert host == {"host": "box", "address": address, "capacity": 3, "sandboxes": 1}
    finally:
        await pool.release(lease, reuse=False)
        await pool.close()


async def test_hostile_links_are_left_out_of_a_pull_and_the_rest_comes_back(
    sshd_server: Sshd, hal_home: Path, workspace: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "host-secret"
    outside.write_text("host only")
    provider = ssh_provider(sshd_server, hal_home / "ssh")
    spec = SandboxSpec(provider="ssh", network="none", workspace=workspace)
    async with await provider.create(spec) as sandbox:
        script = (
            f"ln -s {outside} abs; ln -s ../../../../../../etc escape; mkdir d; "
            "ln -s ../README d/ok; echo work > work.txt"
        )
        assert (await sandbox.exec(ShellCommand(script=script))).ok
    assert (workspace / "work.txt").read_text() == "work\n"
    assert os.readlink(workspace / "d" / "ok") == "../README"  # a link inside stays
    assert not (workspace / "abs").is_symlink() and not (workspace / "escape").is_symlink()
    assert outside.read_text() == "host only"


async def test_a_pull_over_the_limit_is_refused_and_the_host_copy_kept(
    sshd_server: Sshd, hal_home: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hal9999.providers.ssh import mirror

    monkeypatch.setattr(mirror, "PULL_LIMIT", 1 << 20)
    provider = ssh_provider(sshd_server, hal_home / "ssh")
    spec = SandboxSpec(provider="ssh", network="none", workspace=workspace)
    async with await provider.create(spec) as sandbox:
        assert isinstance(sandbox, SshSandbox)
        big = ShellCommand(script="head -c 3000000 /dev/zero > big")
        assert (await sandbox.exec(big)).ok  # the pull after it fails quietly...
        assert not (workspace / "big").exists()
        with pytest.raises(ExecError, match="not brought back"):
            await sandbox.pull()  # ...and loudly when asked for
        assert (workspace / "README").read_text() == "hello\n"


async def test_a_bare_agent_forging_the_pull_stream_writes_no_host_file(
    sshd_server: Sshd, hal_home: Path, workspace: Path, tmp_path: Path
) -> None:
    # Without bwrap the agent is the ssh user: its ~/.ssh/rc runs before every command and
    # writes ahead of the pull's tar, which may then be anything (here CVE-2025-4517's links
    # out of the tree, past the data filter of Python < 3.11.13, aimed at tmp_path).
    from tests.support.ssh import realpath_overflow

    settings = {"hosts": [sshd_server.host_entry()], "isolation": "none",
                "allow_bare_shared_host": True}  # fmt: skip
    provider = load_provider("ssh", state_dir=hal_home / "ssh", settings=settings)
    dest = str(Path(os.path.realpath(workspace)).parent / ".workspace.hal-pull-12345678")
    forged = realpath_overflow(dest, ups=1, ended=False)
    dotssh = sshd_server.home / ".ssh"
    script = (f"mkdir -p {dotssh} && cat > {dotssh}/forged.tar && "
              f"echo 'cat {dotssh}/forged.tar' > {dotssh}/rc && echo work > work.txt")  # fmt: skip
    try:
        async with await provider.create(SandboxSpec(provider="ssh", network="host",
                                                     workspace=workspace)) as sandbox:  # fmt: skip
            assert (await sandbox.exec(ShellCommand(script=script), stdin=forged)).ok
            await sandbox.pull()
            assert (workspace / "work.txt").read_text() == "work\n"  # the real tar followed
            assert (workspace / "escape" / "pwned").exists()  # a plain file in the tree
    finally:
        for name in ("rc", "forged.tar"):
            (dotssh / name).unlink(missing_ok=True)
    assert not (tmp_path / "pwned").exists()
    assert [p for p in tmp_path.rglob("pwned") if workspace not in p.parents] == []
