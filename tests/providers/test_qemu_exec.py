"""How commands reach a ``qemu`` guest: over hal's exec agent, with ssh connected only when
something needs it, or over ssh on images without the agent, with the same results either
way; a restore starts that ssh while QEMU still loads the state."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.providers.qemu_helpers import (
    assert_nothing_left,
    box_fixture,  # noqa: F401  (the fixture box)
    provider_fixture,  # noqa: F401  (the fixture provider)
    sh,
    vms_of,
)

from hal9999.errors import ExecError, ProviderError
from hal9999.providers.host import exec as hostexec
from hal9999.providers.qemu import agent as qemuagent
from hal9999.providers.qemu import ssh as qemussh
from hal9999.providers.qemu import vm as qemuvm
from hal9999.providers.qemu.image.store import ImageMeta, ImageStore, now
from hal9999.providers.qemu.provider import QemuProvider
from hal9999.providers.qemu.sandbox import QemuSandbox
from hal9999.spec import ArgvCommand, SandboxSpec

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(300)]
SSH_ONLY = "ssh-only-"
"""The prefix of the ssh-only image's name; the rest is the pid of the run that made it."""


@pytest.fixture(scope="session")
def ssh_only_image() -> Iterator[str]:
    """An image as built before the exec agent: its guest serves no agent port, so its
    saved state (made on first use, a cold boot) has none and every command goes over ssh.
    Its disk is an overlay of the test image's (the agent binary there is never started).
    Named by this process: the store is shared by xdist's workers (and by runs beside this
    one), and one fixed name had a worker remove the image the other was booting."""
    store = ImageStore(Path(os.environ["HAL_QEMU_IMAGES"]))
    base = store.get("default")
    for image in store.all():  # a killed run's (its process is gone)
        pid = image.name.removeprefix(SSH_ONLY)
        if image.name.startswith(SSH_ONLY) and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            store.remove(image.name)
    name = f"{SSH_ONLY}{os.getpid()}"
    target = store.new_dir(name)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base.disk),
         str(target / "disk.qcow2")], check=True,
    )  # fmt: skip
    for part in ("vmlinuz", "initrd.img", "id_ed25519", "id_ed25519.pub", "known_hosts"):
        (target / part).write_bytes((base.dir / part).read_bytes())
    (target / "id_ed25519").chmod(0o600)
    meta = base.meta.model_dump() | {"name": name, "created_at": now(), "exec_ports": 0}
    store.save_meta(target, ImageMeta.model_validate(meta))
    yield name
    store.remove(name)


async def test_a_restore_runs_its_first_commands_over_the_agent_and_connects_no_ssh(
    provider: QemuProvider, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ssh handshake on the way to the first command; ssh connects (once) when
    something needs it (a launch, a forward, every agent port busy)."""
    masters: list[str] = []
    real_master = qemussh.start_master

    async def master(run: qemuvm.RunDir, **kwargs: Any) -> None:
        masters.append(run.path.name)
        await real_master(run, **kwargs)

    monkeypatch.setattr(qemussh, "start_master", master)
    sandbox = await provider.create(SandboxSpec(provider="qemu", workspace=workspace))
    run = qemuvm.RunDir(sandbox.id)
    try:
        assert sandbox.agent_ports == qemuagent.PORTS
        assert (await sandbox.exec(sh("cat /workspace/README"))).text() == "hello\n"
        assert masters == [] and not qemussh.master_up(run), "ssh connected for nothing"
        # A launch (what tmux runs for an agent) connects ssh itself when it is not up.
        launched = await hostexec.run(
            sandbox.launch(sh("echo launched; echo $SECRET"), env={"SECRET": "s3"}),
            stdin=None, time_limit=120, what="launch",
        )  # fmt: skip
        assert launched.exit_code == 0, launched.stderr
        assert launched.text().split() == ["launched", "s3"]
        assert qemussh.master_up(run)
        # Every agent port busy: the command goes over that ssh, the same way.
        held = [qemuagent.claim(run, sandbox.agent_ports) for _ in range(qemuagent.PORTS)]
        assert all(held) and qemuagent.claim(run, sandbox.agent_ports) is None
        try:
            out = await sandbox.exec(sh("cat README; exit 4"))
            assert (out.exit_code, out.text()) == (4, "hello\n")
        finally:
            for port in held:
                assert port is not None
                port.release()
        assert masters == [], "the launch's own ssh was reused, not a second master"
    finally:
        await provider.destroy(sandbox.id)
    assert_nothing_left(provider, sandbox.id)


SEMANTICS = [
    ArgvCommand(argv=("sh", "-c", 'echo "$0|$1"; echo err >&2; exit 3', "a b", "'c'")),
    sh('pwd; id -u; id -g; echo "$HAL_SANDBOX" "$VAR" "$HOME"; env | sort | wc -l'),
    ArgvCommand(argv=("pwd",), cwd="/tmp"),
    ArgvCommand(argv=("/no/such/program",)),
    ArgvCommand(argv=("sh", "-c", "kill -TERM $$")),
    ArgvCommand(argv=("cat",)),
]


async def test_the_agent_and_ssh_give_a_command_the_same_world(
    box: QemuSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit status, output, argv, environment, directory and uid are what ssh gave."""

    async def results() -> list[tuple[int, bytes, bytes]]:
        found = []
        for command in SEMANTICS:
            done = await box.exec(command, env={"VAR": "v w"}, stdin=b"in\0put")
            found.append((done.exit_code, done.stdout, done.stderr))
        return found

    over_agent = await results()
    monkeypatch.setattr(qemuagent, "claim", lambda run, ports, pings: None)
    over_ssh = await results()
    assert over_agent == over_ssh
    assert over_agent[0] == (3, b"a b|'c'\n", b"err\n")
    assert over_agent[3][0] == 127 and over_agent[4][0] == 128 + 15
    assert over_agent[5][1] == b"in\0put"


async def test_a_secret_in_the_env_appears_in_no_guest_argv(box: QemuSandbox) -> None:
    secret = "hal-test-secret-value-1234"
    probe = sh("cat /proc/[0-9]*/cmdline | tr '\\0' ' '; echo; echo ${#SECRET}")
    out = await box.exec(probe, env={"SECRET": secret})
    assert out.exit_code == 0, out.stderr
    assert secret not in out.text()
    assert out.text().split()[-1] == str(len(secret))


async def test_closing_an_agent_stream_early_kills_the_commands_cgroup(
    box: QemuSandbox,
) -> None:
    events = box.exec_stream(sh("echo started; sleep 1000 & sleep 1000; echo never"))
    assert isinstance(events, AsyncGenerator)
    first = await anext(events)
    assert first.data == b"started\n"
    await events.aclose()
    left = await box.exec(sh("pgrep -c -x sleep || true; ls /sys/fs/cgroup/hal | grep -c '^x'"))
    assert left.text().split() == ["0", "1"], "only this command's own cgroup is left"
    with pytest.raises(Exception, match="timed out after 1s"):
        await box.exec(sh("sleep 1000"), timeout=1)
    left = await box.exec(sh("pgrep -c -x sleep || true"))
    assert left.text().split() == ["0"]


async def test_a_restore_starts_ssh_while_qemu_still_loads_the_state(
    provider: QemuProvider,
    workspace: Path,
    monkeypatch: pytest.MonkeyPatch,
    ssh_only_image: str,
) -> None:
    """An image without the exec agent: the ssh master's start overlaps the
    restore instead of following it, and every command goes over ssh."""
    spec = SandboxSpec(provider="qemu", workspace=workspace, image=ssh_only_image)
    warm = await provider.create(spec)  # its saved state is made now (a cold boot)
    await provider.destroy(warm.id)
    order: list[str] = []
    real_master, real_restored = qemussh.start_master, qemuvm.wait_restored

    async def master(run: qemuvm.RunDir, **kwargs: Any) -> None:
        order.append("ssh")
        await real_master(run, **kwargs)

    async def restored(qmp: qemuvm.Qmp, **kwargs: Any) -> None:
        await real_restored(qmp, **kwargs)
        order.append("restored")

    monkeypatch.setattr(qemussh, "start_master", master)
    monkeypatch.setattr(qemuvm, "wait_restored", restored)
    sandbox = await provider.create(spec)
    try:
        assert order == ["ssh", "restored"]
        assert sandbox.agent_ports == 0
        vm = provider.vm_record(sandbox.id)
        assert vm is not None and vm.pid is not None
        cmd = Path(f"/proc/{vm.pid}/cmdline").read_bytes().decode().split("\0")
        assert not any("hal.exec" in arg for arg in cmd), "an old image's device set"
        assert (await sandbox.exec(sh("cat /workspace/README"))).text() == "hello\n"
        out = await sandbox.exec(ArgvCommand(argv=("sh", "-c", "exit 5")), stdin=b"x")
        assert out.exit_code == 5
    finally:
        await provider.destroy(sandbox.id)


async def test_a_failed_restore_ends_the_ssh_started_beside_it(
    provider: QemuProvider,
    workspace: Path,
    monkeypatch: pytest.MonkeyPatch,
    ssh_only_image: str,
) -> None:
    spec = SandboxSpec(provider="qemu", workspace=workspace, image=ssh_only_image)
    warm = await provider.create(spec)  # its saved state exists (made now if missing)
    await provider.destroy(warm.id)
    started: list[str] = []
    real_master = qemussh.start_master

    async def master(run: qemuvm.RunDir, **kwargs: Any) -> None:
        started.append(run.path.name)
        await real_master(run, **kwargs)

    async def broken(qmp: qemuvm.Qmp, *, vm_id: str, deadline: float) -> None:
        await asyncio.sleep(0.2)  # ssh is running by now
        raise ProviderError(f"VM {vm_id}: restoring its saved state failed: test")

    monkeypatch.setattr(qemussh, "start_master", master)
    monkeypatch.setattr(qemuvm, "wait_restored", broken)
    with pytest.raises(ProviderError, match="restoring its saved state failed: test"):
        await provider.create(spec)
    assert len(started) == 1
    assert vms_of(provider) == {}
    config = str(qemussh.config_path(qemuvm.RunDir(started[0]))).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            assert config not in cmdline.split(b"\0"), "an ssh outlived the failed restore"


async def test_a_guest_that_stops_answering_fails_commands_and_prime_within_a_deadline(
    provider: QemuProvider, box: QemuSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hung guest (here QEMU stopped) held a running command, `prime` and the file helpers
    forever: the agent's keep-alive got no reply and nothing waited for one."""
    monkeypatch.setattr(qemuagent, "ANSWER_S", 3.0)
    monkeypatch.setattr(qemuagent, "HELLO_S", 3.0)
    monkeypatch.setattr(qemuagent, "KILL_S", 1.0)
    monkeypatch.setattr(qemuagent, "KEEPALIVE_S", 0.5)
    pid = vms_of(provider)[box.id]
    # `hal image build` says its agent answers pings; its VMs' commands are held to that.
    assert provider.images.get("default").meta.agent_pings
    vm = provider.vm_record(box.id)
    assert vm is not None and vm.agent_pings
    # A live guest's agent answers the pings: a command quiet for longer lives on.
    assert (await box.exec(sh("sleep 5; echo quiet"))).text() == "quiet\n"
    loop = asyncio.get_running_loop()
    events = box.exec_stream(sh("echo started; sleep 60"))
    try:
        first = await anext(events)
        assert first.data == b"started\n"
        os.kill(pid, signal.SIGSTOP)
        started = loop.time()
        with pytest.raises(ExecError, match=f"VM {box.id}'s exec agent answered nothing for 3s"):
            async for _ in events:
                pass
        assert loop.time() - started < 3.0 + 0.5 + 1.0 + 3.0
        # Connected (QEMU's backlog) but unanswered, or not even taken: 3 s, either way.
        late = rf"VM {box.id}'s exec agent( did not answer|: not accepted) in 3s"
        for call in (provider.prime(box.id), box.read_file("/etc/hostname")):
            started = loop.time()
            with pytest.raises(ExecError, match=late):
                await call
            assert loop.time() - started < 3.0 + 3.0
    finally:
        os.kill(pid, signal.SIGCONT)
        await events.aclose()
    monkeypatch.setattr(qemuagent, "HELLO_S", 60.0)
    assert (await box.exec(sh("echo back"))).text() == "back\n", "the guest goes on"


async def test_what_a_command_writes_to_stdout_over_the_agent_is_held_within_a_bound(
    box: QemuSandbox,
) -> None:
    # An agent-controlled command (a git filter during collection) writing without end held
    # all of it in the daemon; past the bound it is killed, its port free for the next.
    script = "head -c 1000000 /dev/zero; touch /tmp/after"
    with pytest.raises(ExecError, match="wrote more than 100000 bytes to stdout") as raised:
        await box.exec(sh(script), timeout=120, stdout_limit=100_000)
    assert "stdout" not in raised.value.details
    assert (await box.exec(sh("test -e /tmp/after || echo killed"))).text() == "killed\n"
