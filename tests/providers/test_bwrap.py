"""The bwrap provider's isolation and limits, tried for real from inside a sandbox."""

from __future__ import annotations

import asyncio
import errno
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hal9999.providers.bwrap.provider import BwrapConfig, BwrapProvider, BwrapSandbox
from hal9999.providers.host import exec as hostexec
from hal9999.spec import ArgvCommand, Resources, SandboxSpec, ShellCommand

pytestmark = pytest.mark.bwrap


def py(code: str) -> ArgvCommand:
    """Run ``code`` with the sandbox's (host /usr) python3."""
    return ArgvCommand(argv=("/usr/bin/python3", "-c", code))


@pytest.fixture
def provider(hal_home: Path) -> BwrapProvider:
    return BwrapProvider(state_dir=hal_home / "sandboxes" / "bwrap")


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    return path


@pytest.fixture
async def make(provider: BwrapProvider, workspace: Path) -> AsyncIterator[Any]:
    created: list[str] = []

    async def create(**fields: Any) -> BwrapSandbox:
        sandbox = await provider.create(SandboxSpec(workspace=workspace, **fields))
        assert isinstance(sandbox, BwrapSandbox)
        created.append(sandbox.id)
        return sandbox

    yield create
    for sandbox_id in created:
        await provider.destroy(sandbox_id)


@pytest.fixture
async def sandbox(make: Any) -> BwrapSandbox:
    created: BwrapSandbox = await make()
    return created


async def _errno_of(sandbox: BwrapSandbox, call: str) -> int:
    """Errno left by a libc ``call`` (expression on ``libc``) inside the sandbox."""
    code = (
        "import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
        f"rc = {call}; print(0 if rc == 0 else ctypes.get_errno())"
    )
    result = await sandbox.exec(py(code))
    assert result.ok, result.stderr
    return int(result.stdout)


# -- privilege ------------------------------------------------------------------------------


async def test_no_capabilities_left(sandbox: BwrapSandbox) -> None:
    status = (await sandbox.exec(ArgvCommand(argv=("cat", "/proc/self/status")))).text()
    for line in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert f"{line}:\t0000000000000000" in status


async def test_cannot_mount(sandbox: BwrapSandbox) -> None:
    mount = 'libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)'
    assert await _errno_of(sandbox, mount) == errno.EPERM


async def test_cannot_set_the_clock(sandbox: BwrapSandbox) -> None:
    # Setting it to "now" keeps the host clock right even if the sandbox were broken.
    result = await sandbox.exec(ShellCommand(script='date -s "@$(date +%s)"'))
    assert not result.ok
    assert b"not permitted" in result.stderr


async def test_cannot_load_or_unload_kernel_modules(sandbox: BwrapSandbox) -> None:
    calls = ('libc.init_module(None, 0, b"")', 'libc.delete_module(b"hal_none", 0)')
    for call in calls:
        inside = await _errno_of(sandbox, call)
        if inside == errno.ENOSYS:
            # A kernel built without modules answers ENOSYS before checking privilege;
            # then the proof is that CAP_SYS_MODULE (bit 16) is not even in the bounding set.
            status = (await sandbox.exec(ArgvCommand(argv=("cat", "/proc/self/status")))).text()
            bounding = int(status.split("CapBnd:")[1].split()[0], 16)
            assert not bounding & (1 << 16)
        else:
            assert inside == errno.EPERM, call


async def test_root_is_read_only_and_workspace_writable(sandbox: BwrapSandbox) -> None:
    assert b"Read-only" in (await sandbox.exec(ArgvCommand(argv=("touch", "/x")))).stderr
    assert b"Read-only" in (await sandbox.exec(ArgvCommand(argv=("touch", "/usr/x")))).stderr
    assert (await sandbox.exec(ArgvCommand(argv=("touch", "/workspace/x", "/tmp/x")))).ok


# -- what the sandbox can see -----------------------------------------------------------------


async def test_host_files_outside_binds_are_invisible(
    sandbox: BwrapSandbox, workspace: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "host-secret.txt"
    secret.write_text("do not read")
    result = await sandbox.exec(ArgvCommand(argv=("cat", str(secret))))
    assert not result.ok and b"No such file" in result.stderr
    # A link planted in the workspace means the sandbox's view, not the host's, to hal too.
    (workspace / "link").symlink_to(secret)
    assert not await sandbox.exists("/workspace/link")
    with pytest.raises(Exception, match="No such file"):
        await sandbox.read_file("/workspace/link")


async def test_file_ops_resolve_links_the_way_the_sandbox_does(sandbox: BwrapSandbox) -> None:
    # Inside, /workspace/t -> /tmp is the sandbox's /tmp; resolved on the host it would be
    # the host's /tmp. hal must mean what the sandbox means, so it works from inside.
    assert (await sandbox.exec(ArgvCommand(argv=("ln", "-s", "/tmp", "/workspace/t")))).ok
    name = f"hal-link-{sandbox.id}"
    await sandbox.write_file_atomic(f"/workspace/t/{name}/f", b"via link", mode=0o600)
    assert (sandbox.dir / "tmp" / name / "f").read_bytes() == b"via link"
    assert not Path("/tmp", name).exists()
    stat = await sandbox.exec(ArgvCommand(argv=("stat", "-c", "%a", f"/tmp/{name}/f")))
    assert stat.stdout == b"600\n"
    assert await sandbox.read_file(f"/workspace/t/{name}/f") == b"via link"
    assert await sandbox.exists(f"/workspace/t/{name}/f")
    await sandbox.mkdir(f"/workspace/t/{name}/d")
    assert (sandbox.dir / "tmp" / name / "d").is_dir()
    await sandbox.remove(f"/workspace/t/{name}", recursive=True)
    assert not (sandbox.dir / "tmp" / name).exists()


async def test_etc_is_curated(sandbox: BwrapSandbox) -> None:
    assert await sandbox.exists("/etc/passwd")
    for private in ("/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/machine-id"):
        assert not await sandbox.exists(private), private


def _tiny_rootfs(root: Path) -> Path:
    """A root filesystem holding only dash and cat, with the libraries ldd says they need."""
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text("NAME=tiny\n")
    (root / "usr/bin").mkdir(parents=True)
    for program in ("/usr/bin/dash", "/usr/bin/cat"):
        shutil.copy2(program, root / "usr/bin")
        ldd = subprocess.run(["ldd", program], capture_output=True, text=True, check=True)
        for lib in (w for w in ldd.stdout.split() if w.startswith("/")):
            target = root / "usr" / lib.lstrip("/").removeprefix("usr/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lib, target)
    for name in ("bin", "lib", "lib64"):
        if (root / "usr" / name).exists():
            (root / name).symlink_to(f"usr/{name}")
    return root


async def test_rootfs_replaces_host_usr_and_etc(make: Any, tmp_path: Path) -> None:
    rootfs = _tiny_rootfs(tmp_path / "rootfs")
    sandbox = await make(rootfs=rootfs)

    async def dash(script: str) -> bytes:
        result = await sandbox.exec(ArgvCommand(argv=("dash", "-c", script)))
        assert result.ok, result.stderr
        return result.stdout

    assert await dash("cat /etc/os-release") == b"NAME=tiny\n"
    own = {f"/{p.name}" for p in rootfs.iterdir()}
    assert set((await dash("echo /*")).split()) == {
        n.encode() for n in own | {"/dev", "/proc", "/tmp", "/home", "/workspace"}
    }
    assert await dash("echo /usr/bin/*") == b"/usr/bin/cat /usr/bin/dash\n"
    assert await dash("test -e /etc/passwd || echo absent") == b"absent\n"
    await sandbox.write_file_atomic("/workspace/f", b"ok")
    assert await dash("cat /workspace/f") == b"ok"


async def test_host_processes_are_invisible(sandbox: BwrapSandbox) -> None:
    host = await asyncio.create_subprocess_exec("sleep", "61.37")
    try:
        script = 'for f in /proc/[0-9]*/cmdline; do tr "\\0" " " < "$f"; echo; done'
        listing = (await sandbox.exec(ShellCommand(script=script))).stdout
        assert b"61.37" not in listing
        assert 0 < len(listing.splitlines()) < 10  # bwrap's init, the shell, its children
    finally:
        host.kill()
        await host.wait()


async def test_network_none_has_only_loopback_and_cannot_reach_host(
    make: Any, hal_home: Path
) -> None:
    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connect = py(f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3)")
    async with server:
        isolated = await make(network="none")
        devices = (await isolated.read_file("/proc/net/dev")).decode()
        names = {line.split(":")[0].strip() for line in devices.splitlines()[2:]}
        assert names == {"lo"}
        refused = await isolated.exec(connect)
        assert not refused.ok and b"ConnectionRefused" in refused.stderr
        # The same probe sharing the host's network proves the listener was reachable at all
        # (network "host" itself no longer reaches it: tests/security/test_network.py).
        shared = BwrapProvider(
            state_dir=hal_home / "sandboxes" / "shared", config=BwrapConfig(host_network="shared")
        )
        sandbox = await shared.create(SandboxSpec(network="host"))
        try:
            assert (await sandbox.exec(connect)).ok
        finally:
            await shared.destroy(sandbox.id)


async def test_secrets_stay_out_of_argv(sandbox: BwrapSandbox) -> None:
    secret = "hal-secret-7f3a9c"
    stream = sandbox.exec_stream(
        ShellCommand(script='echo "len=${#SECRET}"; sleep 30'), env={"SECRET": secret}
    )
    first = await anext(aiter(stream))
    assert first.data == f"len={len(secret)}\n".encode()
    try:
        cmdlines, environs = b"", b""
        for pid in hostexec.marked_pids(sandbox.id):
            cmdlines += Path(f"/proc/{pid}/cmdline").read_bytes()
            environs += Path(f"/proc/{pid}/environ").read_bytes()
        assert secret.encode() not in cmdlines
        assert secret.encode() in environs  # the processes checked are the right ones
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


# -- limits ---------------------------------------------------------------------------------


@pytest.mark.cgroup
async def test_memory_hog_is_killed_and_reported(make: Any) -> None:
    sandbox = await make(resources=Resources(memory_mb=64))
    result = await sandbox.exec(py("b = b'x' * (512 << 20); print('survived')"))
    assert result.exit_code == 137
    assert b"survived" not in result.stdout
    assert b"memory limit (64 MiB)" in result.stderr
    assert sandbox.oom_kills() >= 1
    assert (await sandbox.exec(ArgvCommand(argv=("true",)))).ok


FORK_LOOP = """
import os, time
n, failure = 0, 0
while n < 500:
    try:
        pid = os.fork()
    except OSError as exc:
        failure = exc.errno
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    n += 1
open("/workspace/forks.tmp", "w").write(f"{n} {failure}")
os.rename("/workspace/forks.tmp", "/workspace/forks")
time.sleep(60)
"""


@pytest.mark.cgroup
async def test_fork_loop_is_contained_and_cleaned_up(
    provider: BwrapProvider, make: Any, workspace: Path
) -> None:
    sandbox = await make(resources=Resources(pids=64))
    assert sandbox.cgroup is not None
    launch = sandbox.launch(py(FORK_LOOP))
    # Run the way a process manager does: a host process, outside hal's own group.
    host = await asyncio.create_subprocess_exec(
        *launch.argv, env=launch.env, cwd=launch.cwd, start_new_session=True
    )
    deadline = time.monotonic() + 20
    while not (workspace / "forks").exists():
        assert time.monotonic() < deadline, "the fork loop never finished"
        await asyncio.sleep(0.05)
    forks, failure = map(int, (workspace / "forks").read_text().split())
    assert (forks < 64, failure) == (True, errno.EAGAIN)
    assert 50 < len(sandbox.cgroup.pids()) <= 64
    probe = await asyncio.create_subprocess_exec("true")  # the host can still fork
    assert await probe.wait() == 0
    await provider.destroy(sandbox.id)
    assert await asyncio.wait_for(host.wait(), 5) != 0
    assert not sandbox.cgroup.exists()
    assert hostexec.marked_pids(sandbox.id) == set()


@pytest.mark.cgroup
async def test_cpu_quota_is_written(make: Any) -> None:
    sandbox = await make(resources=Resources(cpus=0.5))
    assert sandbox.cgroup is not None
    if sandbox.cgroup.version == 2:
        assert (sandbox.cgroup.dirs[0] / "cpu.max").read_text().split() == ["50000", "100000"]
    else:
        (cpu,) = [d for d in sandbox.cgroup.dirs if (d / "cpu.cfs_quota_us").exists()]
        assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"


@pytest.mark.cgroup
async def test_launch_joins_the_cgroup_and_stop_or_destroy_end_it(
    provider: BwrapProvider, make: Any
) -> None:
    sandbox = await make()
    assert sandbox.cgroup is not None
    launch = sandbox.launch(ArgvCommand(argv=("sleep", "30")))
    host = await asyncio.create_subprocess_exec(
        *launch.argv, env=launch.env, cwd=launch.cwd, start_new_session=True
    )
    deadline = time.monotonic() + 5
    while host.pid not in sandbox.cgroup.pids():
        assert time.monotonic() < deadline, "launched process never joined the cgroup"
        await asyncio.sleep(0.02)
    await provider.stop(sandbox.id)
    assert await asyncio.wait_for(host.wait(), 5) != 0
    assert sandbox.cgroup.exists() and not sandbox.cgroup.pids()  # stop keeps the cgroup
    await provider.destroy(sandbox.id)
    assert not sandbox.cgroup.exists()
