"""An ssh host's bwrap sandbox keeps the boundary a local one has (providers/ssh/remote.py
builds its bwrap from providers/bwrap/args.py): ``network = "host"`` is a namespace of its
own with slirp4netns, so nothing on the ssh host's loopback or abstract sockets is in
reach; the agent is never host root and ``/proc/sys`` is never writable; a host that logs
in as root is refused in one line (bwrap there would run the agent as host uid 0), by
create, by every command of a sandbox made there before, and by ``hal doctor``. Probes only
look (``test -w``, ``connect``), never write."""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.sshd import Sshd, running_sshd
from tests.support.ssh import ssh_provider

from hal9999.errors import ProviderError
from hal9999.providers.registry import load_provider
from hal9999.providers.ssh.doctor import ssh_findings
from hal9999.spec import SandboxSpec, ShellCommand

pytestmark = [
    pytest.mark.ssh,
    pytest.mark.usefixtures("ssh_connections_closed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the sshd test host is made by root"),
]

LISTEN = r"""
import socket, sys, threading
tcp = socket.socket(); tcp.bind(("127.0.0.1", 0)); tcp.listen(16)
unix = socket.socket(socket.AF_UNIX); unix.bind(sys.argv[1].encode().replace(b"@", b"\0", 1))
unix.listen(16)
print(tcp.getsockname()[1], flush=True)
def serve(sock):
    while True:
        sock.accept()[0].close()
threading.Thread(target=serve, args=(unix,), daemon=True).start()
serve(tcp)
"""
"""On the ssh host (its network namespace): a TCP service on its 127.0.0.1 and one on an
abstract unix socket (``@name``); prints the TCP port."""

CONNECT = r"""
import socket, sys
for target in sys.argv[1:]:
    if target.startswith("@"):
        s = socket.socket(socket.AF_UNIX); where = target.encode().replace(b"@", b"\0", 1)
    else:
        s = socket.socket(); host, port = target.rsplit(":", 1); where = (host, int(port))
    s.settimeout(10)
    try:
        s.connect(where); print(target, "reached")
    except OSError as e:
        print(target, "refused", e.errno)
"""
"""Inside: connect to each target (``host:port`` or ``@abstract``), saying which answered."""


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """The sandbox's workspace on the hal host."""
    (path := tmp_path / "ws").mkdir()
    return path


@pytest.fixture
def host_services(sshd_server: Sshd) -> Iterator[tuple[int, str]]:
    """(the port on the ssh host's 127.0.0.1, the ``@name`` of its abstract socket)."""
    name = f"@hal-test-{secrets.token_hex(4)}"
    # Into the namespace of the sshd process itself: `ip netns exec NAME` failed its setns
    # (EINVAL) in the two-worker suite, the name's file under /run/netns not the namespace.
    netns = f"/proc/{sshd_server.proc.pid}/ns/net"
    proc = subprocess.Popen(
        ["nsenter", f"--net={netns}", sys.executable, "-c", LISTEN, name],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, f"the service did not start in {netns}"
        port = int(line)
        yield port, name
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def outside() -> Iterator[tuple[socket.socket, int]]:
    """A listener outside the ssh host (on this machine's end of its veth), standing for the
    world a ``host`` sandbox must still reach; bound in the test's own namespace."""
    server = socket.socket()
    server.bind(("0.0.0.0", 0))
    server.listen(16)
    try:
        yield server, server.getsockname()[1]
    finally:
        server.close()


async def test_network_host_reaches_the_world_but_nothing_of_the_ssh_hosts_own(
    sshd_server: Sshd, hal_home: Path, workspace: Path,
    host_services: tuple[int, str], outside: tuple[socket.socket, int],
) -> None:  # fmt: skip
    port, abstract = host_services
    # This machine's end of the veth: the ssh host's address less one (tests/sshd.py).
    world = f"{ipaddress.ip_address(sshd_server.address) - 1}:{outside[1]}"
    provider = ssh_provider(sshd_server, hal_home / "ssh")
    spec = SandboxSpec(provider="ssh", network="host", workspace=workspace)
    async with await provider.create(spec) as sandbox:
        probe = ShellCommand(script='exec python3 -c "$0" "$@"')
        targets = [f"127.0.0.1:{port}", abstract, world]
        script = probe.script.replace('"$0" "$@"', " ".join(f"'{a}'" for a in [CONNECT, *targets]))
        result = await sandbox.exec(ShellCommand(script=script))
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 3, result
    assert lines[0].startswith(f"127.0.0.1:{port} refused"), lines
    assert lines[1].startswith(f"{abstract} refused"), lines
    assert lines[2] == f"{world} reached", lines


PROC_PROBE = (
    "test -w /proc/sys/kernel/core_pattern && echo core_pattern-writable; "
    "find /proc/sys -type f -writable 2>/dev/null | wc -l; : > /workspace/made-by-agent"
)
"""Inside: whether ``/proc/sys`` is writable (``test -w``, ``find -writable``: access
checks only), and a file whose owner tells the host uid the agent runs as."""


@pytest.mark.parametrize("network", ["none", "host"])
async def test_the_agent_is_the_login_user_and_proc_sys_is_read_only(
    sshd_server: Sshd, hal_home: Path, workspace: Path, network: str
) -> None:
    provider = ssh_provider(sshd_server, hal_home / "ssh")
    spec = SandboxSpec(provider="ssh", network=network, workspace=workspace)  # type: ignore[arg-type]
    async with await provider.create(spec) as sandbox:
        result = await sandbox.exec(ShellCommand(script=PROC_PROBE))
        mirror = provider.records.load(sandbox.id).root
        owner = os.lstat(Path(mirror, "ws", "made-by-agent")).st_uid
    assert result.ok and result.stdout == b"0\n", result
    assert owner == sshd_server.uid != 0


@pytest.fixture(scope="module")
def root_sshd() -> Iterator[Sshd]:
    """A test host where root may log in (with the test user's key)."""
    with running_sshd(root_login=True) as server:
        yield server


async def test_a_host_that_logs_in_as_root_is_refused_in_one_line(
    root_sshd: Sshd, hal_home: Path, workspace: Path
) -> None:
    provider = ssh_provider(root_sshd, hal_home / "ssh", user="root")
    spec = SandboxSpec(provider="ssh", network="none", workspace=workspace)
    with pytest.raises(ProviderError) as refused:
        await provider.create(spec)
    line = refused.value.one_line()
    assert "\n" not in line and "root" in line and "uid 0" in line, line
    assert provider.records.all() == []


def chown_tree(root: str, uid: int) -> None:
    """Hand the tree ``root`` (a mirror hal made, no link followed) to ``uid``."""
    for path, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(path, name), uid, uid)
    os.lchown(root, uid, uid)


async def test_a_sandbox_made_on_a_root_host_before_runs_nothing_as_root(
    root_sshd: Sshd, hal_home: Path, workspace: Path
) -> None:
    provider = ssh_provider(root_sshd, hal_home / "ssh")
    spec = SandboxSpec(provider="ssh", network="none", workspace=workspace)
    async with await provider.create(spec) as made:
        # As an older hal left a sandbox of a host configured with user = "root" (its mirror
        # root's); a provider of that configuration (its own connection, as root) runs its
        # next command.
        record = provider.records.load(made.id)
        chown_tree(record.root, 0)
        provider.records.save(
            record.model_copy(update={"host": record.host.model_copy(update={"user": "root"})})
        )
        as_root = ssh_provider(root_sshd, hal_home / "ssh", user="root")
        sandbox = await as_root.get(made.id)
        result = await sandbox.exec(ShellCommand(script=PROC_PROBE))
        assert not Path(record.root, "ws", "made-by-agent").exists()
        # The test user's again, to be destroyed.
        chown_tree(record.root, root_sshd.uid)
        provider.records.save(record)
    assert result.exit_code == 125 and b"core_pattern" not in result.stdout, result
    assert b"logs in as root" in result.stderr, result


async def test_doctor_says_a_root_login_host_is_refused(root_sshd: Sshd, hal_home: Path) -> None:
    settings = {"hosts": [root_sshd.host_entry(user="root"), root_sshd.host_entry(name="user")]}
    root, user = await ssh_findings(settings, hal_home / "ssh")
    assert not root.ok and "root" in root.detail and root.fix, root
    assert user.ok, user


async def test_a_bubblewrap_that_cannot_disable_nested_user_namespaces_is_refused(
    sshd_server: Sshd, hal_home: Path, workspace: Path
) -> None:
    # bwrap before 0.8 has no --disable-userns, which a local sandbox's options hold: every
    # command there would fail; create and doctor say why instead.
    programs = Path(tempfile.mkdtemp(prefix="hal-old-bwrap-"))  # the test user must reach it
    try:
        programs.chmod(0o755)
        old = programs / "bwrap"
        old.write_text("#!/bin/sh\necho 'bubblewrap 0.6.1'\n")
        old.chmod(0o755)
        settings = {"hosts": [sshd_server.host_entry()], "bwrap": str(old)}
        provider = load_provider("ssh", state_dir=hal_home / "ssh", settings=settings)
        with pytest.raises(ProviderError) as refused:
            await provider.create(SandboxSpec(provider="ssh", network="none", workspace=workspace))
        [found] = await ssh_findings(settings, hal_home / "ssh")
    finally:
        shutil.rmtree(programs)
    assert "bubblewrap 0.6.1, older than 0.8" in refused.value.one_line()
    assert not found.ok and "older than 0.8" in found.detail and found.fix, found
