"""The provider contract, one test body run against every built-in provider."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hal9999.errors import (
    CapabilityError,
    ConfigError,
    ExecError,
    ProviderUnavailable,
    SandboxNotFound,
    UnknownProvider,
)
from hal9999.providers.base import Provider, Sandbox, StreamEvent
from hal9999.providers.fake.provider import FakeCall, FakeProvider
from hal9999.providers.host import exec as hostexec
from hal9999.providers.registry import available_providers, load_provider
from hal9999.spec import ArgvCommand, Bind, Resources, SandboxSpec, ShellCommand

PROVIDERS = [
    pytest.param("local", id="local"),
    pytest.param("bwrap", id="bwrap", marks=pytest.mark.bwrap),
    pytest.param("fake", id="fake"),
    pytest.param("qemu", id="qemu", marks=pytest.mark.qemu),
    pytest.param("ssh", id="ssh", marks=pytest.mark.ssh),
    pytest.param("docker", id="docker", marks=pytest.mark.podman),
    pytest.param("lima", id="lima", marks=pytest.mark.ssh),
    pytest.param("digitalocean", id="digitalocean", marks=pytest.mark.ssh),
    pytest.param("morph", id="morph", marks=[pytest.mark.ssh, pytest.mark.bwrap]),
    pytest.param("ray", id="ray", marks=[pytest.mark.ray, pytest.mark.bwrap]),
    pytest.param("kubernetes", id="kubernetes", marks=pytest.mark.bwrap),
]

SpecFactory = Callable[..., SandboxSpec]


def sh(script: str, **kw: Any) -> ShellCommand:
    return ShellCommand(script=script, **kw)


def argv(*args: str, **kw: Any) -> ArgvCommand:
    return ArgvCommand(argv=args, **kw)


@pytest.fixture(params=PROVIDERS)
def provider(request: pytest.FixtureRequest, hal_home: Path) -> Provider:
    name: str = request.param
    settings = None
    if name == "ssh":  # a real sshd in a network namespace (tests/sshd.py)
        settings = {"hosts": [request.getfixturevalue("sshd_server").host_entry()]}
        request.getfixturevalue("ssh_connections_closed")
    if name == "lima":  # the fake limactl whose "VMs" are a real sshd (tests/fakes/)
        request.getfixturevalue("fake_lima")
        request.getfixturevalue("ssh_connections_closed")
    if name == "digitalocean":  # the fake API (tests/fakes/do_api.py) whose droplets are sshds
        settings = request.getfixturevalue("fake_do_settings")
        request.getfixturevalue("ssh_connections_closed")
    if name == "morph":  # the fake Morph API (tests/fakes/morph_api.py), sshd as its gateway
        settings = request.getfixturevalue("fake_morph_settings")
        request.getfixturevalue("ssh_connections_closed")
    if name == "kubernetes":  # the fake API server (tests/fakes/k8s_api.py), pods in bwrap
        settings = request.getfixturevalue("fake_k8s_settings")
    if name == "ray":  # a real two-node Ray cluster on loopback (tests/ray_cluster.py)
        cluster = request.getfixturevalue("ray_cluster")
        settings = cluster.settings()
        # A second provider made with no settings (a second hal process) finds it too.
        request.getfixturevalue("monkeypatch").setenv("HAL_RAY_ADDRESS", cluster.address)
    return load_provider(name, state_dir=hal_home / "sandboxes" / name, settings=settings)


@pytest.fixture
def spec(provider: Provider, workspace: Path) -> SpecFactory:
    """A spec the provider accepts, with overrides."""

    def make(**overrides: Any) -> SandboxSpec:
        network = "none" if "none" in provider.capabilities.network_modes else "host"
        fields: dict[str, Any] = {
            "provider": provider.name,
            "network": network,
            "workspace": workspace,
        }
        return SandboxSpec(**(fields | overrides))

    return make


@pytest.fixture
async def sandbox(provider: Provider, spec: SpecFactory) -> AsyncIterator[Sandbox]:
    async with await provider.create(spec()) as sandbox:
        yield sandbox


# -- lifecycle ----------------------------------------------------------------------------


async def test_registry_lists_and_loads_builtins(hal_home: Path) -> None:
    assert {"local", "bwrap", "fake"} <= set(available_providers())
    with pytest.raises(UnknownProvider) as info:
        load_provider("nope", state_dir=hal_home / "x")
    assert info.value.hint is not None and "bwrap" in info.value.hint and "fake" in info.value.hint
    with pytest.raises(ConfigError, match="cgroup"):
        load_provider("local", state_dir=hal_home / "x", settings={"cgroup": "sometimes"})
    with pytest.raises(ConfigError, match="colour"):
        load_provider("fake", state_dir=hal_home / "x", settings={"colour": "red"})
    # TOML writes numbers bare: text for one is a mistake, not the number it spells.
    with pytest.raises(ConfigError) as typed:
        load_provider("qemu", state_dir=hal_home / "x", settings={"boot_timeout_s": "9"})
    assert typed.value.message == "[providers.qemu] boot_timeout_s: expected a number"
    qemu = load_provider("qemu", state_dir=hal_home / "x", settings={"boot_timeout_s": 9})
    assert qemu.config.boot_timeout_s == 9.0  # type: ignore[attr-defined]


def test_missing_bwrap_names_the_package(
    hal_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no bwrap on it
    with pytest.raises(ProviderUnavailable) as info:
        load_provider("bwrap", state_dir=hal_home / "bwrap")
    assert info.value.hint is not None and "apt-get install bubblewrap" in info.value.hint


async def test_create_get_list_destroy(provider: Provider, spec: SpecFactory) -> None:
    sandbox = await provider.create(spec(labels={"hal.task": "t1"}))
    assert isinstance(sandbox, Sandbox)
    assert sandbox.provider == provider.name
    (info,) = await provider.list()
    assert (info.id, info.state, info.spec.labels) == (sandbox.id, "running", {"hal.task": "t1"})
    again = await provider.get(sandbox.id)
    assert (again.id, again.spec, again.workdir) == (sandbox.id, sandbox.spec, sandbox.workdir)
    await provider.destroy(sandbox.id)
    assert await provider.list() == []
    with pytest.raises(SandboxNotFound):
        await provider.get(sandbox.id)
    await provider.destroy(sandbox.id)  # idempotent


async def test_get_unknown_id(provider: Provider) -> None:
    for bad in ("0123456789ab", "../../etc", ""):
        with pytest.raises(SandboxNotFound):
            await provider.get(bad)


async def test_second_instance_sees_sandbox(
    provider: Provider, spec: SpecFactory, hal_home: Path
) -> None:
    first = await provider.create(spec())
    await first.write_file_atomic("/tmp/note", b"from the first process")
    other = load_provider(provider.name, state_dir=hal_home / "sandboxes" / provider.name)
    assert [info.id for info in await other.list()] == [first.id]
    handle = await other.get(first.id)
    assert await handle.read_file("/tmp/note") == b"from the first process"
    assert (await handle.exec(argv("true"))).ok
    await other.destroy(first.id)
    with pytest.raises(SandboxNotFound):
        await provider.get(first.id)


async def test_stop_and_start(provider: Provider, sandbox: Sandbox) -> None:
    await sandbox.write_file_atomic("/tmp/keep", b"kept")
    await provider.stop(sandbox.id)
    assert [i.state for i in await provider.list()] == ["stopped"]
    with pytest.raises(ExecError, match="stopped"):
        await sandbox.exec(argv("true"))
    started = await provider.start(sandbox.id)
    assert (await started.exec(argv("true"))).ok
    assert await started.read_file("/tmp/keep") == b"kept"


async def test_stop_kills_running_commands(provider: Provider, sandbox: Sandbox) -> None:
    # An hour's sleep: ended within the (generous) bound, it was killed, not waited out.
    running = asyncio.create_task(sandbox.exec(argv("sleep", "3600")))
    await asyncio.sleep(0.3)
    await provider.stop(sandbox.id)
    result = await asyncio.wait_for(running, 120)
    assert not result.ok


@pytest.mark.parametrize(
    ("name", "cgroup"),
    [
        pytest.param("local", "auto", id="local-cgroup"),
        pytest.param("local", "off", id="local-marker"),
        pytest.param("bwrap", "auto", id="bwrap-cgroup", marks=pytest.mark.bwrap),
        pytest.param("bwrap", "off", id="bwrap-marker", marks=pytest.mark.bwrap),
    ],
)
async def test_stop_kills_launched_processes_even_escaped_ones(
    name: str, cgroup: str, hal_home: Path
) -> None:
    provider = load_provider(name, state_dir=hal_home / name, settings={"cgroup": cgroup})
    network = "host" if name == "local" else "none"
    async with await provider.create(SandboxSpec(provider=name, network=network)) as sandbox:
        # A process manager runs launch() under a host supervisor, which must survive to
        # record the exit status; inside, one child leaves the process group.
        launch = sandbox.launch(sh("setsid sleep 30 & exec sleep 30"))
        status_file = hal_home / "status"
        supervisor = ["/bin/sh", "-c", '"$@"; echo $? > "$0"', str(status_file)]
        host = await asyncio.create_subprocess_exec(
            *supervisor, *launch.argv, env=launch.env, cwd=launch.cwd, start_new_session=True
        )
        for _ in range(100):
            if len(hostexec.marked_pids(sandbox.id)) >= 2:
                break
            await asyncio.sleep(0.02)
        assert len(hostexec.marked_pids(sandbox.id)) >= 2
        await provider.stop(sandbox.id)
        assert await asyncio.wait_for(host.wait(), 5) == 0
        assert status_file.read_text() == "137\n"
        assert hostexec.marked_pids(sandbox.id) == set()


async def test_context_manager_destroys_but_keeps_workspace(
    provider: Provider, spec: SpecFactory, workspace: Path
) -> None:
    async with await provider.create(spec()) as sandbox:
        await sandbox.write_file_atomic(sandbox.workdir + "/made-inside", b"x")
    with pytest.raises(SandboxNotFound):
        await provider.get(sandbox.id)
    assert (workspace / "README").read_text() == "hello\n"
    assert (workspace / "made-inside").read_bytes() == b"x"


async def test_declared_capabilities_are_honoured(provider: Provider, spec: SpecFactory) -> None:
    caps = provider.capabilities
    cases: list[tuple[dict[str, Any], bool]] = [
        ({"network": "none"}, "none" in caps.network_modes),
        ({"network": "host"}, "host" in caps.network_modes),
        ({"network": ("example.com:443",)}, "allow-list" in caps.network_modes),
        ({"resources": Resources(pids=100)}, caps.resource_limits),
    ]
    for overrides, supported in cases:
        if supported:
            await provider.destroy((await provider.create(spec(**overrides))).id)
        else:
            with pytest.raises(CapabilityError) as info:
                await provider.create(spec(**overrides))
            assert info.value.hint
    assert await provider.list() == []


# -- exec -----------------------------------------------------------------------------------


async def test_exit_codes_and_output(sandbox: Sandbox) -> None:
    assert (await sandbox.exec(argv("true"))).exit_code == 0
    assert (await sandbox.exec(argv("false"))).exit_code == 1
    assert (await sandbox.exec(sh("exit 3"))).exit_code == 3
    assert not (await sandbox.exec(argv("no-such-program-hal"))).ok
    result = await sandbox.exec(sh("echo out; echo err >&2"))
    assert (result.stdout, result.stderr) == (b"out\n", b"err\n")


async def test_stdin_is_passed(sandbox: Sandbox) -> None:
    data = b"line one\nbinary \x00\xff end"
    assert (await sandbox.exec(argv("cat"), stdin=data)).stdout == data


async def test_environment_layers_and_no_host_leak(
    provider: Provider, spec: SpecFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HAL_TEST_HOST_ONLY", "leaked")
    async with await provider.create(spec(env={"A": "spec", "B": "spec", "C": "spec"})) as sb:
        command = argv("printenv", "A", "B", "C", "SECRET", env={"B": "command", "C": "command"})
        result = await sb.exec(command, env={"C": "exec", "SECRET": "hunter2"})
        assert result.stdout.split() == [b"spec", b"command", b"exec", b"hunter2"]
        assert not (await sb.exec(argv("printenv", "HAL_TEST_HOST_ONLY"))).ok
        if provider.capabilities.host_launch:
            launch = sb.launch(command, env={"SECRET": "hunter2"})
            assert not any("hunter2" in arg for arg in launch.argv)
            assert launch.env["SECRET"] == "hunter2"


async def test_cwd(sandbox: Sandbox) -> None:
    assert (await sandbox.exec(argv("pwd"))).stdout == f"{sandbox.workdir}\n".encode()
    await sandbox.mkdir(sandbox.workdir + "/sub")
    result = await sandbox.exec(argv("pwd", cwd=sandbox.workdir + "/sub"))
    assert result.stdout == f"{sandbox.workdir}/sub\n".encode()


async def test_timeout_kills_and_raises(sandbox: Sandbox) -> None:
    # A microVM under TCG on a loaded machine can take well over 0.5 s to start a command;
    # the limit must leave time for `echo early`, or the test measures start-up, not the kill
    # (a Ray node starts its bwrap sandbox after a push, on a machine shared with the run).
    limit = 3.0 if sandbox.provider in ("qemu", "ray") else 0.5
    # An hour's sleep: raised within the (generous) bound, the command was killed at its
    # limit, not waited out.
    with pytest.raises(ExecError, match="timed out") as info:
        await asyncio.wait_for(sandbox.exec(sh("echo early; sleep 3600"), timeout=limit), 120)
    assert info.value.details["stdout"] == b"early\n"
    assert (await sandbox.exec(argv("true"), timeout=5)).ok


async def test_exec_returns_though_an_escaped_child_holds_its_pipes(
    provider: Provider, spec: SpecFactory
) -> None:
    if provider.capabilities.isolation == "fake":
        pytest.skip("fake commands start no processes")
    async with await provider.create(spec()) as sandbox:
        # The escapee sleeps an hour: returned within the (generous) bound, exec did not
        # wait for the pipes it holds.
        result = await asyncio.wait_for(
            sandbox.exec(sh("setsid sleep 3600 & sleep 0.2; echo done"), timeout=60), 120
        )
        assert result.stdout == b"done\n"
    assert hostexec.marked_pids(sandbox.id) == set()  # destroy got the escapee


async def test_exec_stream_orders_output_and_ends_with_exit(sandbox: Sandbox) -> None:
    events: list[StreamEvent] = [
        event async for event in sandbox.exec_stream(sh("echo a; echo b >&2; echo c; exit 4"))
    ]
    assert [e.kind for e in events].count("exit") == 1
    assert events[-1].kind == "exit" and events[-1].exit_code == 4
    assert b"".join(e.data for e in events if e.kind == "stdout") == b"a\nc\n"
    assert b"".join(e.data for e in events if e.kind == "stderr") == b"b\n"


async def test_exec_stream_closed_early_kills_command(sandbox: Sandbox) -> None:
    stream = sandbox.exec_stream(sh("echo ready; sleep 30"))
    first = await anext(aiter(stream))
    assert first == StreamEvent("stdout", b"ready\n")
    await stream.aclose()  # type: ignore[attr-defined]
    # Closing returns once the whole command is gone, including what bwrap started in a
    # session of its own inside the namespace.
    assert hostexec.marked_pids(sandbox.id) == set(), "the command outlived its closed stream"


async def test_launch_runs_inside_or_is_refused(provider: Provider, sandbox: Sandbox) -> None:
    command = argv("printenv", "SECRET")
    if not provider.capabilities.host_launch:
        with pytest.raises(CapabilityError):
            sandbox.launch(command)
        return
    launch = sandbox.launch(command, env={"SECRET": "s3"})
    proc = await asyncio.create_subprocess_exec(
        *launch.argv, env=launch.env, cwd=launch.cwd, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert (proc.returncode, out) == (0, b"s3\n")


async def test_attach_command_opens_a_shell_inside(provider: Provider, sandbox: Sandbox) -> None:
    if not provider.capabilities.host_launch:
        with pytest.raises(CapabilityError):
            sandbox.attach_command()
        return
    proc = await asyncio.create_subprocess_exec(
        *sandbox.attach_command(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={"HAL_TEST_HOST_ONLY": "leaked"},
    )
    script = b"pwd; echo ${HAL_TEST_HOST_ONLY:-clean} $HAL_SANDBOX; exit 0\n"
    out, _ = await asyncio.wait_for(proc.communicate(script), 10)
    assert out.decode().split() == [sandbox.workdir, "clean", sandbox.id]


# -- files ----------------------------------------------------------------------------------


async def test_write_file_atomic(sandbox: Sandbox, workspace: Path) -> None:
    path = sandbox.workdir + "/deep/er/secret.json"
    await sandbox.write_file_atomic(path, b'{"token": 1}', mode=0o600)
    host = workspace / "deep/er/secret.json"
    assert host.read_bytes() == b'{"token": 1}'
    assert stat.S_IMODE(host.stat().st_mode) == 0o600
    assert await sandbox.read_file(path) == b'{"token": 1}'
    # Replaced by rename: a reader holding the old file keeps the old bytes.
    with host.open("rb") as old:
        await sandbox.write_file_atomic(path, b"new", mode=0o640)
        assert old.read() == b'{"token": 1}'
    assert host.read_bytes() == b"new"
    assert stat.S_IMODE(host.stat().st_mode) == 0o640
    assert sorted(os.listdir(host.parent)) == ["secret.json"]  # no temp files left


async def test_write_replaces_a_planted_symlink_instead_of_following_it(
    sandbox: Sandbox, workspace: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "host-only.txt"
    outside.write_text("host data")
    (workspace / "link").symlink_to(outside)
    await sandbox.write_file_atomic(sandbox.workdir + "/link", b"sandbox data")
    assert outside.read_text() == "host data"
    assert (workspace / "link").read_bytes() == b"sandbox data"
    assert not (workspace / "link").is_symlink()


async def test_exists_mkdir_remove(sandbox: Sandbox) -> None:
    base = sandbox.workdir + "/tree"
    assert not await sandbox.exists(base)
    await sandbox.mkdir(base + "/a/b", mode=0o700)
    await sandbox.mkdir(base + "/a/b")  # already there: fine
    await sandbox.write_file_atomic(base + "/a/b/f", b"1")
    assert await sandbox.exists(base + "/a/b/f")
    assert (await sandbox.exec(sh(f"test -d {base}/a/b"))).ok
    await sandbox.remove(base + "/a/b/f")
    assert not await sandbox.exists(base + "/a/b/f")
    await sandbox.remove(base + "/a/b/f")  # already gone: fine
    with pytest.raises(ExecError, match="directory"):
        await sandbox.remove(base)
    await sandbox.remove(base, recursive=True)
    assert not await sandbox.exists(base)
    with pytest.raises(ExecError):
        await sandbox.read_file(base + "/missing")


async def test_binds_and_path(provider: Provider, spec: SpecFactory, tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    out.mkdir()
    (data / "in.txt").write_text("input")
    binds = (
        Bind(source=data, target="/hal-in"),
        Bind(source=out, target="/hal-out", read_only=False),
    )
    async with await provider.create(spec(binds=binds)) as sb:
        seen = sb.path("/hal-in") + "/in.txt"
        assert (await sb.exec(argv("cat", seen))).stdout == b"input"
        assert await sb.read_file("/hal-in/in.txt") == b"input"
        with pytest.raises(ExecError, match="read-only"):
            await sb.write_file_atomic("/hal-in/new.txt", b"no")
        await sb.write_file_atomic("/hal-out/result.txt", b"done")
        assert (out / "result.txt").read_bytes() == b"done"
        target = sb.path("/hal-out") + "/by-command"
        assert (await sb.exec(sh(f"echo hi > {target}"))).ok
        assert (out / "by-command").read_text() == "hi\n"
    assert (data / "in.txt").read_text() == "input"


# -- the fake's own promise: scripting --------------------------------------------------


async def test_fake_runs_registered_handlers(hal_home: Path) -> None:
    fake = FakeProvider(state_dir=hal_home / "fake")

    async def agent(call: FakeCall) -> int:
        call.out(f"prompt={call.stdin.decode()} key={call.env['KEY']}\n")
        host = call.host("answer.txt")
        assert host is not None
        host.write_text("42")
        return 7

    fake.commands["agent"] = agent
    async with await fake.create(SandboxSpec(provider="fake")) as sb:
        result = await sb.exec(argv("agent"), env={"KEY": "k"}, stdin=b"hi")
        assert (result.exit_code, result.stdout) == (7, b"prompt=hi key=k\n")
        assert await sb.read_file("/workspace/answer.txt") == b"42"
        chained = await sb.exec(sh("agent && echo no || echo yes"), env={"KEY": "k"})
        assert chained.stdout == b"prompt= key=k\nyes\n"
