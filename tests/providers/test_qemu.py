"""What the ``qemu`` provider promises beyond the common contract: overlays, restore, VM
shape, network modes, no TCP ports, stop/start, boot deadline, orphans, snapshot and fork
(how commands reach the guest, over hal's exec agent or ssh: test_qemu_exec.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.providers.qemu_helpers import (
    assert_nothing_left,
    box_fixture,  # noqa: F401  (the fixture box)
    make_provider,
    provider_fixture,  # noqa: F401  (the fixture provider)
    sh,
    vms_of,
)
from tests.support.gateway import host_address

from hal9999.errors import ProviderError
from hal9999.providers.qemu import agent as qemuagent
from hal9999.providers.qemu import vm as qemuvm
from hal9999.providers.qemu.provider import QemuConfig, QemuProvider
from hal9999.providers.qemu.sandbox import QemuSandbox
from hal9999.spec import ArgvCommand, Resources, SandboxSpec

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(300)]


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
    where = await sandbox.exec(sh("pwd; cat README; id -u"))
    # The host user's uid; a root hal's sandbox has one of its own (never guest root).
    uid = provider.store.load(sandbox.id).uid
    assert where.text().split() == ["/workspace", "hello", str(os.getuid() if uid is None else uid)]


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
    with _greeter("127.0.0.1") as port:
        yield port


# QEMU's user-mode network maps the guest's gateway 10.0.2.2 (and every other address of its
# virtual network but the guest's and the resolver's) to the host's loopback; the packets
# never leave the QEMU process.
REACH = "timeout 10 bash -c 'exec 3<>/dev/tcp/{host}/{port}; head -c 5 <&3'"


async def test_network_is_off_by_default_and_user_mode_when_asked(
    provider: QemuProvider, workspace: Path, loopback_server: int
) -> None:
    script = REACH.format(host="10.0.2.2", port=loopback_server)
    async with await provider.create(SandboxSpec(provider="qemu", workspace=workspace)) as box:
        closed = await box.exec(sh(script))
        assert closed.exit_code != 0 and closed.text() == ""
    address = host_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to reach through the NAT")
    with _greeter(address) as port:
        spec = SandboxSpec(provider="qemu", workspace=workspace, network="host")
        async with await provider.create(spec) as box:
            opened = await box.exec(sh(REACH.format(host=address, port=port)))
            assert opened.exit_code == 0, opened.stderr
            assert opened.text() == "hello"
            # As bwrap's host mode: outbound through the NAT, never the host's loopback
            # (10.0.2.2 was one connection away from any 127.0.0.1 listener: the daemon's
            # port, another program's service), by any address QEMU maps to it.
            for host in ("10.0.2.2", "10.0.2.77", "[fec0::2]"):
                probe = REACH.format(host=host.strip("[]"), port=loopback_server)
                refused = await box.exec(sh(probe))
                assert refused.exit_code != 0 and refused.text() == "", host


@contextlib.contextmanager
def _greeter(address: str) -> Iterator[int]:
    """A TCP server on ``address`` that greets with ``hello``; yields its port."""
    server = socket.create_server((address, 0))
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
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        server.close()


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
        # Its guest runs its parent's exec agent, which answers pings.
        assert image.meta.exec_ports == qemuagent.PORTS and image.meta.agent_pings
        assert image.states(), "a snapshot carries its VM state"
        # The sandbox goes on from its snapshot.
        out = await box.exec(sh("cat /var/tmp/marker; cat /workspace/README"))
        assert out.text().split() == ["before", "hello"]

        forks = await provider.fork(name, 2, SandboxSpec(provider="qemu", workspace=workspace))
        try:
            for fork in forks:
                vm = provider.vm_record(fork.id)
                assert vm is not None and vm.started == "restore" and vm.image == name
                assert vm.agent_pings, "a fork's commands are held to its agent's pongs"
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


async def test_a_snapshot_that_fails_after_taking_the_disk_gives_it_back(
    provider: QemuProvider, box: QemuSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sandbox's disk is moved into the snapshot before the snapshot's own layer is made:
    a failure from there on deleted the unfinished snapshot with the sandbox's disk in it."""
    from hal9999.providers.qemu import snap as qemusnap

    async def failed(*args: object) -> None:
        raise ProviderError("qemu-img create failed: no space left")

    disk = provider.store.dir(box.id) / "disk.qcow2"
    inode = disk.stat().st_ino
    monkeypatch.setattr(qemusnap, "overlay", failed)
    name = f"test-snapfail-{box.id}"
    try:
        with pytest.raises(ProviderError, match="no space left"):
            await provider.snapshot(box.id, name)
        assert disk.stat().st_ino == inode, "the sandbox's own disk, back in its place"
        assert not provider.images.path(name).exists()
    finally:
        await provider.destroy(box.id)


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


@contextlib.contextmanager
def _udp_echo() -> Iterator[tuple[int, list[bytes]]]:
    """A UDP server on the host's 127.0.0.1 answering ``pong``: its port and what it got."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(0.2)
    got: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = server.recvfrom(100)
            except TimeoutError:
                continue
            got.append(data)
            server.sendto(b"pong", peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], got
    finally:
        stop.set()
        thread.join()
        server.close()


async def test_host_mode_keeps_the_hosts_loopback_shut_to_the_agent_every_other_way(
    provider: QemuProvider, workspace: Path, loopback_server: int
) -> None:
    # Beyond 10.0.2.2 over TCP: QEMU takes the resolver's address at any port but 53 for the
    # host's resolver (on loopback, 127.0.0.53, on many hosts), an IPv4-mapped IPv6 address
    # goes out as IPv4, UDP is mapped too; and the agent cannot take the rules away.
    port = loopback_server
    reach = "timeout 5 bash -c 'exec 3<>/dev/{proto}/{host}/{port}; {talk}'"
    with _udp_echo() as (udp_port, got):
        spec = SandboxSpec(provider="qemu", workspace=workspace, network="host")
        async with await provider.create(spec) as box:
            for proto, host, to, talk in (
                ("tcp", "10.0.2.3", port, "head -c 5 <&3"),
                ("tcp", "::ffff:10.0.2.2", port, "head -c 5 <&3"),
                ("udp", "10.0.2.2", udp_port, "echo ping >&3; head -c 4 <&3"),
            ):
                probe = reach.format(proto=proto, host=host, port=to, talk=talk)
                refused = await box.exec(sh(probe))
                assert refused.exit_code != 0 and refused.text() == "", (proto, host)
            removed = await box.exec(sh("ip rule del pref 101"))
            assert removed.exit_code != 0, "the agent is not guest root"
            rules = await box.exec(sh("ip rule"))
            assert "10.0.2.0/24 prohibit" in rules.text(), rules.text()
    assert got == [], "a UDP packet reached the host's loopback"
