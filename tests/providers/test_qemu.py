"""What the ``qemu`` provider promises beyond the common contract: overlays, restore, VM
shape, network modes, no TCP ports, stop/start, boot deadline, orphans, snapshot and fork."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from hal9999.errors import ProviderError
from hal9999.images.store import ImageMeta, ImageStore, now
from hal9999.providers import hostexec, qemuagent, qemussh, qemuvm
from hal9999.providers.qemu import QemuConfig, QemuProvider, QemuSandbox
from hal9999.spec import ArgvCommand, Resources, SandboxSpec, ShellCommand

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(300)]


def sh(script: str) -> ShellCommand:
    return ShellCommand(script=script)


def make_provider(hal_home: Path, config: QemuConfig | None = None) -> QemuProvider:
    state = hal_home / "sandboxes" / "qemu"
    state.mkdir(parents=True, exist_ok=True)
    return QemuProvider(state_dir=state, config=config)


@pytest.fixture
def provider(hal_home: Path) -> QemuProvider:
    return make_provider(hal_home)


@pytest.fixture
async def box(provider: QemuProvider, workspace: Path) -> AsyncIterator[QemuSandbox]:
    sandbox = await provider.create(SandboxSpec(provider="qemu", workspace=workspace))
    try:
        yield sandbox
    finally:
        await provider.destroy(sandbox.id)


def vms_of(provider: QemuProvider) -> dict[str, int]:
    """Running QEMUs whose command line is under this provider's state dir."""
    mine = f"{provider.state_dir}/".encode()
    found = {}
    for vm_id, pid in qemuvm.find_vms().items():
        try:
            if mine in Path(f"/proc/{pid}/cmdline").read_bytes():
                found[vm_id] = pid
        except OSError:
            continue
    return found


def assert_nothing_left(provider: QemuProvider, sandbox_id: str) -> None:
    assert sandbox_id not in qemuvm.find_vms(), "the VM outlived its sandbox"
    assert not qemuvm.RunDir(sandbox_id).path.exists(), "its sockets outlived it"
    assert not (provider.state_dir / sandbox_id).exists(), "its overlay outlived it"


async def test_a_sandbox_is_an_overlay_restored_from_the_saved_state(
    provider: QemuProvider, workspace: Path
) -> None:
    sandbox = await provider.create(SandboxSpec(provider="qemu", workspace=workspace))
    try:
        await _check_overlay_and_restore(provider, sandbox)
    finally:
        await provider.destroy(sandbox.id)
    assert_nothing_left(provider, sandbox.id)


async def _check_overlay_and_restore(provider: QemuProvider, sandbox: QemuSandbox) -> None:
    disk = provider.state_dir / sandbox.id / "disk.qcow2"
    info = json.loads(
        subprocess.check_output(["qemu-img", "info", "-U", "--output=json", str(disk)], text=True)
    )
    image = provider.images.get("default")
    assert Path(info["backing-filename"]).is_relative_to(image.dir / "states")
    assert disk.stat().st_blocks * 512 < 32 << 20, "create must not copy the image"
    vm = provider.vm_record(sandbox.id)
    assert vm is not None and vm.started == "restore" and vm.start_s > 0
    kernel = await sandbox.exec(ArgvCommand(argv=("uname", "-r")))
    assert kernel.text().strip() == image.meta.kernel
    where = await sandbox.exec(sh("pwd; cat README; id -un"))
    assert where.text().split() == ["/workspace", "hello", "root"]


@pytest.fixture(scope="session")
def ssh_only_image() -> Iterator[str]:
    """An image as built before the exec agent: its guest serves no agent port, so its
    saved state (made on first use, a cold boot) has none and every command goes over ssh.
    Its disk is an overlay of the test image's (the agent binary there is never started)."""
    store = ImageStore(Path(os.environ["HAL_QEMU_IMAGES"]))
    base = store.get("default")
    name = "ssh-only"
    if store.path(name).exists():
        store.remove(name)
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
    """Issue 16: no ssh handshake on the way to the first command; ssh connects (once) when
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
    monkeypatch.setattr(qemuagent, "claim", lambda run, ports: None)
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
    """Issue 16, an image without the exec agent: the ssh master's start overlaps the
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


async def test_resources_set_the_vm_shape_and_the_pid_limit(
    provider: QemuProvider, workspace: Path
) -> None:
    spec = SandboxSpec(
        provider="qemu",
        workspace=workspace,
        resources=Resources(cpus=2, memory_mb=512, pids=40),
    )
    async with await provider.create(spec) as sandbox:
        out = await sandbox.exec(
            sh("nproc; grep MemTotal /proc/meminfo; cat /sys/fs/cgroup/hal/pids.max")
        )
        cpus, _, mem_kb, _, pids = out.text().split()
        assert cpus == "2"
        assert 400_000 < int(mem_kb) <= 512 * 1024
        assert pids == "40"
        # dash, not bash: bash retries a failed fork for up to 15 s, so on a slow guest its
        # loop could still finish once earlier children exit; dash fails the first time.
        loop = "i=0; while [ $i -lt 80 ]; do sleep 120 >/dev/null 2>&1 & i=$((i+1)); done"
        bomb = await sandbox.exec(ArgvCommand(argv=("dash", "-c", loop)))
        assert bomb.exit_code != 0 and b"cannot fork" in bomb.stderr.lower(), bomb


@pytest.fixture
def loopback_server() -> Iterator[int]:
    """A TCP server on the host's 127.0.0.1 that greets with ``hello``."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"hello")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


# QEMU's user-mode network maps the guest's gateway 10.0.2.2 to the host's loopback; the
# packets never leave the QEMU process.
REACH = "timeout 10 bash -c 'exec 3<>/dev/tcp/10.0.2.2/{port}; head -c 5 <&3'"


async def test_network_is_off_by_default_and_user_mode_when_asked(
    provider: QemuProvider, workspace: Path, loopback_server: int
) -> None:
    script = REACH.format(port=loopback_server)
    async with await provider.create(SandboxSpec(provider="qemu", workspace=workspace)) as box:
        closed = await box.exec(sh(script))
        assert closed.exit_code != 0 and closed.text() == ""
    spec = SandboxSpec(provider="qemu", workspace=workspace, network="host")
    async with await provider.create(spec) as box:
        opened = await box.exec(sh(script))
        assert opened.exit_code == 0, opened.stderr
        assert opened.text() == "hello"


def tcp_listeners(pid: int) -> list[str]:
    """TCP sockets in LISTEN state that process ``pid`` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    listening = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                listening.append(fields[1])
    return listening


async def test_many_vms_run_at_once_and_open_no_tcp_port(
    provider: QemuProvider, workspace: Path
) -> None:
    spec = SandboxSpec(provider="qemu", workspace=workspace)
    boxes = await asyncio.gather(*(provider.create(spec) for _ in range(4)))
    try:
        assert len({b.id for b in boxes}) == 4
        pids = vms_of(provider)
        assert set(pids) == {b.id for b in boxes}
        for pid in pids.values():
            assert tcp_listeners(pid) == []
        outs = await asyncio.gather(
            *(b.exec(sh(f"echo {b.id} > /var/tmp/me; cat /var/tmp/me")) for b in boxes)
        )
        assert [o.text().strip() for o in outs] == [b.id for b in boxes]
    finally:
        await asyncio.gather(*(provider.destroy(b.id) for b in boxes))
    for b in boxes:
        assert_nothing_left(provider, b.id)


async def test_stop_ends_the_vm_and_keeps_its_files_start_boots_a_new_one(
    provider: QemuProvider, box: QemuSandbox, workspace: Path
) -> None:
    await box.exec(sh("echo on-disk > /var/tmp/kept; echo shared > /workspace/kept"))
    first = provider.vm_record(box.id)
    assert first is not None
    await provider.stop(box.id)
    assert box.id not in qemuvm.find_vms()
    assert (workspace / "kept").read_text() == "shared\n"
    again = await provider.start(box.id)
    vm = provider.vm_record(box.id)
    assert vm is not None and vm.started == "cold" and vm.pid != first.pid
    out = await again.exec(sh("cat /var/tmp/kept /workspace/kept"))
    assert out.text().split() == ["on-disk", "shared"]


async def test_a_vm_that_does_not_boot_in_time_is_killed_and_its_console_reported(
    hal_home: Path, workspace: Path
) -> None:
    slow = make_provider(hal_home, QemuConfig(boot="cold", boot_timeout_s=1.0))
    with pytest.raises(ProviderError, match="did not boot in time; console: "):
        await slow.create(SandboxSpec(provider="qemu", workspace=workspace))
    assert vms_of(slow) == {}
    assert [p for p in slow.state_dir.iterdir()] == []


async def test_a_vm_whose_first_commands_hang_is_started_again(
    provider: QemuProvider, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = qemuagent.run_root
    hangs: list[str] = []

    async def hang_once(run: qemuvm.RunDir, ports: int, argv: list[str], **kwargs: object) -> str:
        if not hangs:
            hangs.append(run.path.name)
            raise ProviderError("sh in the VM timed out")
        return await real(run, ports, argv, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(qemuagent, "run_root", hang_once)
    sandbox = await provider.create(SandboxSpec(provider="qemu", workspace=workspace))
    try:
        assert hangs == [sandbox.id]
        assert (await sandbox.exec(sh("cat /workspace/README"))).text() == "hello\n"
        assert list(vms_of(provider)) == [sandbox.id]
    finally:
        await provider.destroy(sandbox.id)
    assert_nothing_left(provider, sandbox.id)


async def test_reconcile_finishes_cut_short_destroys_and_kills_orphan_vms(
    hal_home: Path, workspace: Path
) -> None:
    first = make_provider(hal_home)
    spec = SandboxSpec(provider="qemu", workspace=workspace)
    orphan = await first.create(spec)
    kept = await first.create(spec)
    # A crash in the middle of destroy: the record says destroyed, the VM still runs.
    record = first.store.load(orphan.id)
    first.store.save(record.model_copy(update={"state": "destroyed"}))
    assert orphan.id in vms_of(first)

    second = make_provider(hal_home)  # a new hal process
    infos = await second.list()
    assert [i.id for i in infos] == [kept.id]
    assert orphan.id not in qemuvm.find_vms()
    assert_nothing_left(second, orphan.id)
    out = await (await second.get(kept.id)).exec(sh("echo alive"))
    assert out.text() == "alive\n"
    await second.destroy(kept.id)


async def test_snapshot_saves_a_layer_and_fork_starts_copies_from_it(
    provider: QemuProvider, box: QemuSandbox, workspace: Path
) -> None:
    await box.exec(sh("echo before > /var/tmp/marker"))
    name = f"test-snap-{box.id}"
    try:
        assert await provider.snapshot(box.id, name) == name
        image = provider.images.get(name)
        assert image.meta.kind == "snapshot" and image.meta.parent == "default"
        assert image.states(), "a snapshot carries its VM state"
        # The sandbox goes on from its snapshot.
        out = await box.exec(sh("cat /var/tmp/marker; cat /workspace/README"))
        assert out.text().split() == ["before", "hello"]

        forks = await provider.fork(name, 2, SandboxSpec(provider="qemu", workspace=workspace))
        try:
            for fork in forks:
                vm = provider.vm_record(fork.id)
                assert vm is not None and vm.started == "restore" and vm.image == name
            await forks[0].exec(sh("echo changed > /var/tmp/marker"))
            seen = [(await f.exec(sh("cat /var/tmp/marker"))).text() for f in forks]
            assert seen == ["changed\n", "before\n"], "forks share no disk state"
            assert (await box.exec(sh("cat /var/tmp/marker"))).text() == "before\n"
        finally:
            for fork in forks:
                await provider.destroy(fork.id)
    finally:
        await provider.destroy(box.id)
        if provider.images.path(name).exists():
            provider.images.remove(name)


async def test_a_warm_vm_is_handed_the_next_tasks_workspace(
    provider: QemuProvider, tmp_path: Path
) -> None:
    from hal9999.pool import ProviderSettings, SlotDir, WarmPool

    pool = WarmPool(
        providers=lambda name: provider,
        settings=lambda name: ProviderSettings(max_size=2),
        slots=SlotDir(tmp_path / "slots"),
    )
    tasks = []
    for name in ("one", "two"):
        ws = tmp_path / name
        ws.mkdir()
        (ws / "task.txt").write_text(f"{name}\n")
        tasks.append(SandboxSpec(provider="qemu", workspace=ws, labels={"hal.task": name}))
    assert await pool.warm(tasks[0], 2) == 2
    leases = [await pool.claim(spec, task_id=spec.labels["hal.task"]) for spec in tasks]
    try:
        assert all(lease.warm for lease in leases), "both came from the pool, already running"
        for lease, name in zip(leases, ("one", "two"), strict=True):
            out = await lease.sandbox.exec(sh("cat task.txt; echo out > result.txt; ls"))
            assert out.text().split() == [name, "result.txt", "task.txt"]
            assert (tmp_path / name / "result.txt").read_text() == "out\n"
            assert await lease.sandbox.read_file("task.txt") == f"{name}\n".encode()
    finally:
        for lease in leases:
            await pool.release(lease)
    # The VMs are gone, and destroying them removed nothing of the workspaces.
    assert vms_of(provider) == {}
    for name in ("one", "two"):
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["result.txt", "task.txt"]
    assert [p for p in provider.state_dir.iterdir()] == []
