"""What the ``docker`` provider promises beyond the common contract, against real Podman:
the boundary a hostile agent meets, limits, snapshot and fork, and the warm pool."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shlex
from collections.abc import AsyncIterator
from pathlib import Path

import docker.errors
import pytest
from tests.support.docker import docker_provider, docker_workspace

from hal9999 import hostlimits
from hal9999.errors import CapabilityError, ConfigError, ProviderError
from hal9999.providers import limits
from hal9999.providers.docker.provider import DockerProvider, container_name
from hal9999.spec import ArgvCommand, Resources, SandboxSpec, ShellCommand

pytestmark = [pytest.mark.podman, pytest.mark.timeout(180)]


# The image has perl, not python: a ring set up (io_uring_setup with zeroed parameters),
# and N_TTY set on a pty's master (TIOCSETD).
IO_URING = "perl -e " + shlex.quote('my $p = "\\0" x 120; exit(syscall(425, 4, $p) < 0)')
# vmsplice of nothing into stdout, which the engine's own default refuses.
VMSPLICE = "perl -e " + shlex.quote("exit(syscall(278, 1, 0, 0, 0) < 0)")
TIOCSETD = "perl -e " + shlex.quote(
    'open(my $m, "+<", "/dev/ptmx") or die; my $d = pack("i", 0); ioctl($m, 0x5423, $d) or exit 1'
)


def sh(script: str) -> ShellCommand:
    return ShellCommand(script=script)


@pytest.fixture
async def provider(hal_home: Path) -> AsyncIterator[DockerProvider]:
    async with docker_provider(hal_home) as made:
        yield made


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return docker_workspace(tmp_path)


async def test_a_hostile_agent_meets_the_boundary(
    provider: DockerProvider, workspace: Path
) -> None:
    spec = SandboxSpec(provider="docker", workspace=workspace)
    async with await provider.create(spec) as box:
        ident = await box.exec(sh("id -u; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status"))
        uid, *status = ident.text().split("\n")
        assert int(uid) not in (0, 1000), "never root, never the image's login uid"
        assert "CapEff:\t0000000000000000" in status and "CapBnd:\t0000000000000000" in status
        assert "NoNewPrivs:\t1" in status
        attacks = {
            "write the root": "echo x > /etc/hal-owned",
            "write /usr": "touch /usr/bin/hal-owned",
            "mount": "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m",
            "user namespace": "unshare -r true",
            "network": "test $(ls /sys/class/net | grep -vx lo | wc -l) -gt 0",
            "raw socket to the host": "exec 3<>/dev/tcp/169.254.1.1/80",
            "setuid root": "su -c true root </dev/null",
            # Kernel surface bwrap's filter refuses as well (providers/bwrap/seccomp.py).
            "io_uring": IO_URING,
            "line discipline": TIOCSETD,
            "vmsplice": VMSPLICE,
        }
        for what, script in attacks.items():
            result = await box.exec(sh(script), timeout=20)
            assert not result.ok, f"{what} worked: {result}"
        # What the agent may write: its workspace, home and tmp.
        wrote = await box.exec(sh("echo w > /workspace/w && echo h > ~/h && echo t > /tmp/t"))
        assert wrote.ok, wrote
        host = workspace / "w"
        assert host.read_text() == "w\n" and host.stat().st_uid == int(uid)


async def test_exec_time_secrets_never_reach_the_engines_records(
    provider: DockerProvider, workspace: Path
) -> None:
    secret = f"hal-secret-{os.getpid()}-{id(provider)}"
    command = ArgvCommand(argv=("printenv", "SECRET"))
    async with await provider.create(SandboxSpec(provider="docker", workspace=workspace)) as box:
        assert (await box.exec(command, env={"SECRET": secret})).stdout == f"{secret}\n".encode()
        launch = box.launch(command, env={"SECRET": secret})
        assert not any(secret in arg for arg in launch.argv)
        proc = await asyncio.create_subprocess_exec(
            *launch.argv, env=launch.env, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        assert out == f"{secret}\n".encode()
        api = provider.client().api
        execs = api.inspect_container(container_name(box.id)).get("ExecIDs") or []
        assert execs, "the engine recorded the execs"
        for exec_id in execs:
            assert secret not in json.dumps(api.exec_inspect(exec_id))
        state = Path("/var/lib/containers/storage/libpod/bolt_state.db")
        if state.exists():  # Podman's own database, on disk
            assert secret.encode() not in state.read_bytes()


async def test_limits_default_and_explicit(provider: DockerProvider, workspace: Path) -> None:
    limited = Resources(pids=64, memory_mb=256, cpus=0.5)
    spec = SandboxSpec(provider="docker", workspace=workspace, resources=limited)
    async with await provider.create(spec) as box:
        host = provider.client().api.inspect_container(container_name(box.id))["HostConfig"]
        assert (host["PidsLimit"], host["Memory"], host["NanoCpus"]) == (64, 256 << 20, 5 * 10**8)
        assert host["MemorySwap"] == host["Memory"], "no swap beyond the memory limit"
        bomb = await box.exec(sh("for i in $(seq 100); do sleep 5 & done; wait"), timeout=60)
        assert b"retry" in bomb.stderr or b"Resource temporarily unavailable" in bomb.stderr
    async with await provider.create(SandboxSpec(provider="docker")) as box:
        host = provider.client().api.inspect_container(container_name(box.id))["HostConfig"]
        # Unset fields get the defaults: each the totals' share of one concurrent task.
        expected = limits.effective(Resources())
        assert expected.pids is not None and expected.memory_mb is not None
        assert (host["PidsLimit"], host["Memory"]) == (expected.pids, expected.memory_mb << 20)
        total = hostlimits.default_totals().pids
        assert total is not None and expected.pids * 8 <= total


async def test_network_other_than_none_is_refused(provider: DockerProvider) -> None:
    with pytest.raises(CapabilityError, match="no network"):
        await provider.create(SandboxSpec(provider="docker", network="host"))
    with pytest.raises(ConfigError, match="no-such-image") as info:
        await provider.create(SandboxSpec(provider="docker", image="hal9999:no-such-image"))
    assert info.value.hint is not None and "hal image container" in info.value.hint
    assert await provider.list() == []


async def test_snapshot_keeps_home_and_fork_starts_copies(
    provider: DockerProvider, workspace: Path, tmp_path: Path
) -> None:
    spec = SandboxSpec(provider="docker", workspace=workspace)
    name = f"test-snap-{os.getpid()}"
    async with await provider.create(spec) as box:
        assert (await box.exec(sh("mkdir -p ~/.agent && echo remembered > ~/.agent/state"))).ok
        image = await provider.snapshot(box.id, name)
    try:
        assert image == f"hal9999:{name}"
        other = tmp_path / "ws2"
        other.mkdir()
        forks = await provider.fork(image, 2, SandboxSpec(provider="docker", workspace=other))
        assert len({f.id for f in forks}) == 2
        for fork in forks:
            assert (await fork.read_file("/home/hal/.agent/state")) == b"remembered\n"
            assert (await fork.exec(sh("echo mine > ~/.agent/state"))).ok
            assert not await fork.exists("/workspace/task.txt"), "the fork has its own workspace"
        assert (await forks[0].read_file("/home/hal/.agent/state")) == b"mine\n"
        for fork in forks:
            await provider.destroy(fork.id)
    finally:
        provider.client().api.remove_image(image, force=True)


async def test_a_home_of_sparse_files_is_not_snapshotted_past_the_disk_limit(
    provider: DockerProvider, workspace: Path
) -> None:
    # Three 60 MiB files of nothing: no disk used (the watchdog sees none), under the per-file
    # limit, yet 180 MiB of archive, which the snapshot held in hal's memory whole (a home of
    # such files under the default 20 GiB limit is any amount of memory).
    spec = SandboxSpec(provider="docker", workspace=workspace, resources=Resources(disk_mb=64))
    name = f"test-sparse-{os.getpid()}"
    try:
        async with await provider.create(spec) as box:
            assert (await box.exec(sh("truncate -s 60M ~/a ~/b ~/c && du -sk ~"))).ok
            with pytest.raises(ProviderError, match="not snapshotted"):
                await provider.snapshot(box.id, name)
        assert not provider.client().images.list(name=f"hal9999:{name}")
    finally:
        for image in provider.client().images.list(name=f"hal9999:{name}"):
            provider.client().api.remove_image(image.id, force=True)


async def test_a_pooled_container_is_reset_and_handed_the_next_workspace(
    provider: DockerProvider, tmp_path: Path
) -> None:
    from hal9999.pool import ProviderSettings, SlotDir, WarmPool

    pool = WarmPool(
        providers=lambda name: provider,
        settings=lambda name: ProviderSettings(max_size=1, policy="reset"),
        slots=SlotDir(tmp_path / "slots"),
    )
    specs = []
    for name in ("one", "two"):
        ws = tmp_path / name
        ws.mkdir()
        (ws / "task.txt").write_text(f"{name}\n")
        specs.append(SandboxSpec(provider="docker", workspace=ws, labels={"hal.task": name}))
    first = await pool.claim(specs[0], task_id="one")
    first_id = first.sandbox.id
    script = "cat task.txt; echo left > ~/left; echo left > /tmp/left; sleep 300 & echo ok"
    assert (await first.sandbox.exec(sh(script))).text().split() == ["one", "ok"]
    await pool.release(first)
    second = await pool.claim(specs[1], task_id="two")
    try:
        assert second.sandbox.id == first_id, "the same sandbox, reused"
        leftovers = "ls ~ /tmp | grep -c left; ps -eo args | grep -c '^sleep 300$' || true"
        seen = await second.sandbox.exec(sh(f"cat task.txt; {leftovers}"))
        assert seen.text().split() == ["two", "0", "0"], "nothing of task one is left"
        assert (await second.sandbox.exec(sh("echo two > out"))).ok
        assert (tmp_path / "two" / "out").read_text() == "two\n"
        assert not (tmp_path / "one" / "out").exists()
    finally:
        await pool.release(second, reuse=False)
    assert await provider.list() == []


# Run as the agent (perl: the image has no python): ptrace, /proc/<pid>/mem and SIGKILL
# against the init, the init's `sleep` (its oldest child) and a child of the agent's own.
# Syscall 101 is x86_64's ptrace; 16 and 17 are PTRACE_ATTACH and PTRACE_DETACH (a number,
# never a string: perl's syscall passes a string as a pointer).
TRACE = r"""
sub trace { my $p = 0 + shift; syscall(101, 16, $p, 0, 0) == 0 or return "$!";
            waitpid($p, 0); syscall(101, 17, $p, 0, 0); "traced" }
sub mem { my $p = shift; open(my $f, "<", "/proc/$p/mem") or return "$!"; "opened" }
sub sig { my $p = shift; kill("KILL", $p) ? "killed" : "$!" }
sub stat_of { open(my $f, "<", "/proc/$_[0]/stat") or return (0, 0); my $s = <$f>;
              $s =~ s/.*\) //s; my @f = split / /, $s; ($f[1], $f[19]) }
my ($sleep, $first);
opendir(my $d, "/proc");
for my $p (grep { /^\d+$/ && $_ ne "1" } readdir $d) {
    my ($ppid, $start) = stat_of($p);
    ($sleep, $first) = ($p, $start) if $ppid == 1 && (!defined $first || $start < $first);
}
my $own = fork // die; exec("sleep", "60") if !$own;
print "own ", join("|", trace($own), mem($own)), "\n";
print "$_->[0] ", join("|", trace($_->[1]), mem($_->[1]), sig($_->[1])), "\n"
    for ["init", 1], ["sleep", $sleep];
kill("KILL", $own);
"""


async def test_the_agent_cannot_trace_or_signal_the_init_that_outlives_its_task(
    provider: DockerProvider, workspace: Path
) -> None:
    # The init and its `sleep` stay between tasks in a warm container: traced by one task's
    # agent (a host without Yama allows it between processes of one uid), they would carry
    # its code into the next task's. Debuggers still work on the agent's own processes.
    if platform.machine() != "x86_64":
        pytest.skip("the probe calls x86_64's ptrace by number")
    async with await provider.create(SandboxSpec(provider="docker", workspace=workspace)) as box:
        seen = await box.exec(ArgvCommand(argv=("perl", "-e", TRACE)), timeout=60)
        assert seen.ok, seen
        refused = "Operation not permitted|Permission denied|Operation not permitted"
        assert seen.text().splitlines() == [
            "own traced|opened",
            f"init {refused}",
            f"sleep {refused}",
        ]
        init = await box.exec(sh("grep -E '^(Uid|CapEff|CapBnd|NoNewPrivs)' /proc/1/status"))
        assert init.text().splitlines() == [
            "Uid:\t0\t0\t0\t0",
            "CapEff:\t0000000000000000",
            "CapBnd:\t0000000000000000",
            "NoNewPrivs:\t1",
        ], "root with no capability at all"
        # Tools still find the sandbox's user by its uid.
        user = await box.exec(sh("id -un; getent passwd $(id -u) | cut -d: -f6"))
        assert user.text().split() == ["hal", "/home/hal"]
    if os.geteuid() == 0:  # a uid per sandbox: its account files go with it
        assert sorted(p.name.split("-")[0] for p in provider.state_dir.iterdir()) == ["seccomp"]


class Killed(BaseException):
    """hal dying (SIGKILL) at this point: nothing after it runs."""


async def test_a_snapshot_killed_midway_leaves_no_container_once_its_sandbox_goes(
    provider: DockerProvider, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = provider.client().api
    made: list[str] = []
    real_create = api.create_container

    def create(*args: object, **kwargs: object) -> dict[str, str]:
        found: dict[str, str] = real_create(*args, **kwargs)
        made.append(found["Id"])
        return found

    def die(*args: object, **kwargs: object) -> None:
        raise Killed

    box = await provider.create(SandboxSpec(provider="docker", workspace=workspace))
    with monkeypatch.context() as patch:
        patch.setattr(api, "create_container", create)
        patch.setattr(api, "put_archive", die)  # killed while the home goes in
        patch.setattr(api, "remove_container", lambda *a, **k: None)  # so no finally runs
        with pytest.raises(Killed):
            await provider.snapshot(box.id, f"test-killed-{os.getpid()}")
    assert len(made) == 1 and api.containers(all=True, filters={"id": made[0]})
    base = api.inspect_container(made[0])["Image"]
    # The next hal's sweep destroys the orphaned sandbox: the staging container goes too, and
    # the commit it was made from.
    await provider.destroy(box.id)
    assert not api.containers(all=True, filters={"id": made[0]})
    with pytest.raises(docker.errors.NotFound):
        api.inspect_image(base)


async def test_a_failed_snapshot_leaves_no_image_or_container(
    provider: DockerProvider, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = provider.client().api
    commits: list[str] = []
    real_commit = api.commit

    def commit(*args: object, **kwargs: object) -> dict[str, str]:
        found: dict[str, str] = real_commit(*args, **kwargs)
        commits.append(found["Id"])
        return found

    def full(*args: object, **kwargs: object) -> None:
        raise docker.errors.APIError("no space left on device")

    name = f"test-failed-{os.getpid()}"
    async with await provider.create(SandboxSpec(provider="docker", workspace=workspace)) as box:
        with monkeypatch.context() as patch:
            patch.setattr(api, "commit", commit)
            patch.setattr(api, "put_archive", full)  # the home's layer cannot be written
            with pytest.raises(ProviderError, match="no space left"):
                await provider.snapshot(box.id, name)
        assert len(commits) == 1, "failed after the container's commit, before the home's"
        # Nothing of it stays while the sandbox lives on: no staging container, no image.
        staged = api.containers(all=True, filters={"label": f"hal9999.snapshot-of={box.id}"})
        assert staged == []
        images = {i.removeprefix("sha256:") for i in api.images(all=True, quiet=True)}
        assert commits[0].removeprefix("sha256:") not in images
        assert not api.images(name=f"hal9999:{name}")
