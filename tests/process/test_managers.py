"""Both process managers, run against the real local provider."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.pm2_home import pm2_manager
from tests.support.process import SETS_TITLE, TITLE, _pane_title, _status_line, spec_for, wait_exit

from hal9999 import procs
from hal9999.process.base import ProcessManager
from hal9999.process.direct import DirectProcessManager
from hal9999.process.registry import available_process_managers, load_process_manager
from hal9999.process.tmux import TmuxProcessManager
from hal9999.providers.base import Sandbox
from hal9999.providers.local import LocalProvider
from hal9999.spec import ArgvCommand, ProcessSpec, ShellCommand


@pytest.fixture(
    params=[
        pytest.param("tmux", marks=pytest.mark.tmux),
        "direct",
        pytest.param("pm2", marks=pytest.mark.pm2),
    ]
)
async def manager(request: pytest.FixtureRequest) -> AsyncIterator[ProcessManager]:
    """Each process manager in turn (tmux needs tmux; pm2 gets a daemon of its own)."""
    if request.param == "tmux":
        yield TmuxProcessManager()
    elif request.param == "pm2":
        async with pm2_manager() as pm2:
            yield pm2
    else:
        yield DirectProcessManager()


def test_registry_lists_builtins() -> None:
    assert {"tmux", "direct", "pm2"} <= set(available_process_managers())
    assert load_process_manager("direct").name == "direct"


async def test_output_to_log_and_exit_status(
    manager: ProcessManager, sandbox: Sandbox, tmp_path: Path
) -> None:
    spec = spec_for(tmp_path, ShellCommand(script="echo hello; echo oops >&2; exit 7"))
    await manager.start(sandbox, spec)
    assert await wait_exit(manager, spec) == 7
    log = spec.log_path.read_text()
    assert "hello" in log and "oops" in log
    assert spec.log_path.stat().st_mode & 0o777 == 0o600


async def test_secrets_from_env_are_masked_and_not_in_argv(
    manager: ProcessManager, sandbox: Sandbox, tmp_path: Path
) -> None:
    secret = "s3cret-value-for-masking-1234"
    spec = spec_for(tmp_path, ShellCommand(script='echo "key=$API_KEY"; sleep 1'))
    await manager.start(sandbox, spec, env={"API_KEY": secret})
    await asyncio.sleep(0.3)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            assert secret.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
    assert await wait_exit(manager, spec) == 0
    log = spec.log_path.read_text()
    assert "key=[REDACTED]" in log and secret not in log


async def test_stop_kills_the_process_tree(
    manager: ProcessManager, sandbox: Sandbox, tmp_path: Path
) -> None:
    marker = tmp_path / "child-pid"
    script = f"sleep 300 & echo $! > {marker}; wait"
    spec = spec_for(tmp_path, ShellCommand(script=script))
    await manager.start(sandbox, spec)
    deadline = time.monotonic() + 10
    while not (marker.exists() and marker.read_text().strip()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    child = int(marker.read_text())
    assert (await manager.status(spec)).state == "running"
    await manager.stop(spec)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or _zombie(child)
    assert (await manager.status(spec)).state in ("exited", "missing")


async def test_a_stop_ends_with_its_command_though_another_process_holds_its_output(
    manager: ProcessManager, sandbox: Sandbox, tmp_path: Path
) -> None:
    # A process outside the command's group holding its output (a sandbox's init that
    # outlived a stop landing as bwrap started) kept the supervisor reading, and the stop
    # waiting, until it ended by itself (a cancel of a `sleep 120` agent took 120 s).
    if manager.name == "pm2":
        pytest.skip("PM2's own stop waits for every holder of the app's inherited fds")
    marker = tmp_path / "escaped-pid"
    spec = spec_for(tmp_path, ShellCommand(script=f"setsid sleep 600 & echo $! > {marker}; wait"))
    await manager.start(sandbox, spec)
    deadline = time.monotonic() + 10
    while not (marker.exists() and marker.read_text().strip()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    escaped = int(marker.read_text())
    try:
        started = time.monotonic()
        await manager.stop(spec)
        assert time.monotonic() - started < 60, "the stop waited for the escaped process"
        assert (await manager.status(spec)).state in ("exited", "missing")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(escaped, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


async def test_arguments_reach_the_command_verbatim(
    manager: ProcessManager, sandbox: Sandbox, tmp_path: Path
) -> None:
    # tmux reads an argument ending in `;` as the end of a command: the run failed to start
    # (the next argument taken for a tmux command, run on the host) unless it is escaped.
    args = ("a;", "b\\;", ";", "kill-server", "d")
    script = 'printf "<%s>" "$@"'
    spec = spec_for(tmp_path, ArgvCommand(argv=("sh", "-c", script, "sh", *args)))
    await manager.start(sandbox, spec)
    assert await wait_exit(manager, spec) == 0
    assert spec.log_path.read_text() == "".join(f"<{arg}>" for arg in args)


async def test_missing_program_reports_127(
    manager: ProcessManager, sandbox: Sandbox, tmp_path: Path
) -> None:
    spec = spec_for(tmp_path, ArgvCommand(argv=("definitely-not-a-program-xyz",)))
    await manager.start(sandbox, spec)
    assert await wait_exit(manager, spec) == 127


@pytest.mark.tmux
async def test_tmux_process_outlives_its_starter_and_can_be_attached(
    tmp_path: Path, sock_dir: Path
) -> None:
    """A separate process starts the agent and exits; the pane lives on and shows output."""
    spec_dir = tmp_path / "run"
    starter = f"""
import asyncio
import contextlib
from pathlib import Path
from hal9999.process.pm2 import Pm2ProcessManager
from hal9999.process.tmux import TmuxProcessManager
from hal9999.providers.local import LocalProvider
from hal9999.spec import ProcessSpec, SandboxSpec, ShellCommand

async def main():
    provider = LocalProvider(state_dir=Path({str(tmp_path / "state")!r}))
    ws = Path({str(tmp_path / "ws2")!r}); ws.mkdir()
    sb = await provider.create(SandboxSpec(provider="local", network="host", workspace=ws))
    spec = ProcessSpec(name="hal-live", command=ShellCommand(script="echo live-output; sleep 30"),
                       log_path=Path({str(spec_dir / "out.log")!r}),
                       exit_path=Path({str(spec_dir / "exit")!r}))
    await TmuxProcessManager().start(sb, spec)

asyncio.run(main())
"""
    subprocess.run([sys.executable, "-c", starter], check=True, timeout=30)
    manager = TmuxProcessManager()
    spec = ProcessSpec(
        name="hal-live",
        command=ShellCommand(script="true"),
        log_path=spec_dir / "out.log",
        exit_path=spec_dir / "exit",
    )
    try:
        assert (await manager.status(spec)).state == "running"
        attach = manager.attach_command(spec)
        assert attach is not None and "attach-session" in attach
        # Attach for real from an outer tmux session and read the screen.
        outer = [attach[0], "-S", str(sock_dir / "outer.sock")]
        subprocess.run([*outer, "new-session", "-d", "-x", "120", "-y", "20", *attach], check=True)
        screen = ""
        deadline = time.monotonic() + 10
        while "live-output" not in screen and time.monotonic() < deadline:
            screen = subprocess.run(
                [*outer, "capture-pane", "-p"], capture_output=True, text=True
            ).stdout
            await asyncio.sleep(0.1)
        assert "live-output" in screen
        subprocess.run([*outer, "kill-server"], check=False)
    finally:
        await manager.stop(spec)
        provider = LocalProvider(state_dir=tmp_path / "state")
        for info in await provider.list():
            await provider.destroy(info.id)
    assert (await manager.status(spec)).state in ("exited", "missing")
    assert await LocalProvider(state_dir=tmp_path / "state").list() == []


@pytest.mark.tmux
async def test_tmux_session_never_passes_the_clipboard_escape(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    manager = TmuxProcessManager()
    spec = spec_for(tmp_path, ArgvCommand(argv=("sleep", "5")))
    await manager.start(sandbox, spec)
    try:
        socket = manager.socket(spec)
        shown = subprocess.run(
            ["tmux", "-S", str(socket), "show-options", "-s", "set-clipboard"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert shown.stdout.strip() == "set-clipboard off"
    finally:
        await manager.stop(spec)


@pytest.mark.tmux
async def test_the_agents_pane_title_never_reaches_the_status_line(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    # tmux's default status line shows the pane's title, which the agent sets: whoever
    # attached (hal task attach, the dashboard's terminal) read "hal: run succeeded" there.
    manager = TmuxProcessManager()
    spec = spec_for(tmp_path, ShellCommand(script=SETS_TITLE))
    await manager.start(sandbox, spec)
    try:
        socket = manager.socket(spec)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and TITLE not in _pane_title(socket):
            await asyncio.sleep(0.05)
        assert TITLE in _pane_title(socket)  # the agent did set it
        assert TITLE not in _status_line(socket, _session(socket))
    finally:
        await manager.stop(spec)


def _session(socket: Path | str) -> str:
    argv = ["tmux", "-S", str(socket), "list-sessions", "-F", "#{session_name}"]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()[0]


def _links_utempter(program: str) -> bool:
    linked = subprocess.run(["ldd", program], capture_output=True, text=True, check=False)
    return "libutempter" in linked.stdout


@pytest.mark.tmux
@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_a_tmux_pane_records_no_utmp_login_and_leaks_no_preload(tmp_path: Path) -> None:
    """tmux built with libutempter execs its setgid helper for each pane it opens and closes;
    the server hal starts loads build/hal-noutmp.so instead, which its pane never sees."""
    tmux = shutil.which("tmux")
    assert tmux is not None
    if not _links_utempter(tmux):
        pytest.skip("this tmux is not built with libutempter: it records no logins anyway")
    if TmuxProcessManager()._no_utmp is None:
        reason = "build/hal-noutmp.so is not built (scripts/setup.sh builds it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    env_file, exits = tmp_path / "pane-env", tmp_path / "run" / "exit"
    starter = f"""
import asyncio, time
from pathlib import Path
from hal9999.process.tmux import TmuxProcessManager
from hal9999.providers.local import LocalProvider
from hal9999.spec import ArgvCommand, ProcessSpec, SandboxSpec

async def main():
    provider = LocalProvider(state_dir=Path({str(tmp_path / "state")!r}))
    ws = Path({str(tmp_path / "ws")!r}); ws.mkdir()
    sb = await provider.create(SandboxSpec(provider="local", network="host", workspace=ws))
    spec = ProcessSpec(name="hal-utmp", command=ArgvCommand(argv=("sh", "-c", "env > {env_file}")),
                       log_path=Path({str(tmp_path / "run" / "out.log")!r}),
                       exit_path=Path({str(exits)!r}))
    manager = TmuxProcessManager()
    await manager.start(sb, spec)
    deadline = time.monotonic() + 20
    while (await manager.status(spec)).state == "running" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await manager.stop(spec)
    await provider.destroy(sb.id)

asyncio.run(main())
"""
    trace = tmp_path / "execs"
    subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=execve", "-o", str(trace), sys.executable, "-c",
         starter],
        check=True, timeout=60,
    )  # fmt: skip
    execs = trace.read_text()
    assert "/tmux" in execs and "env >" in execs  # the server and the pane were traced
    assert "utempter" not in execs
    assert exits.read_text().strip() == "0"
    pane_env = env_file.read_text().splitlines()
    assert not [line for line in pane_env if line.startswith("LD_PRELOAD=")]


@pytest.mark.tmux
async def test_tmux_status_asks_the_kernel_not_tmux(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether a run lives is read from /proc for the pane's process (a ``tmux
    has-session`` every second for each running agent): the manager that started the run
    never asks tmux, one that adopts it asks once; a reused pid is not taken for the
    supervisor, and a killed supervisor is seen as gone."""
    import signal

    from hal9999.process import tmux as tmux_module

    asked: list[list[str]] = []
    real_run_host = tmux_module.run_host

    async def counting(argv: list[str], **kwargs: object) -> tuple[int, str]:
        asked.append(list(argv))
        return await real_run_host(argv, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tmux_module, "run_host", counting)
    manager = TmuxProcessManager()
    spec = spec_for(tmp_path, ArgvCommand(argv=("sleep", "300")))
    await manager.start(sandbox, spec)
    try:
        panes = subprocess.run(
            ["tmux", "-S", str(manager.socket(spec)), "list-panes", "-F", "#{pane_pid}"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        pid = int(panes.stdout)
        started = procs.started(pid)
        assert started is not None
        asked.clear()
        for _ in range(3):
            assert (await manager.status(spec)).state == "running"
        assert asked == []
        # A later hal process (a restarted daemon adopting the run) asks tmux once.
        adopter = TmuxProcessManager()
        for _ in range(3):
            assert (await adopter.status(spec)).state == "running"
        assert [argv for argv in asked if "display-message" in argv] == asked and len(asked) == 1
        # Another process under the same pid would have another start time.
        monkeypatch.setitem(adopter._panes, adopter.socket(spec), (pid, started + 1))
        assert (await adopter.status(spec)).state == "missing"
        os.kill(pid, signal.SIGKILL)  # the supervisor dies without writing its exit status
        deadline = time.monotonic() + 10
        while (await manager.status(spec)).state == "running" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert (await manager.status(spec)).state == "missing"
    finally:
        await manager.stop(spec)


@pytest.mark.tmux
async def test_a_tmux_config_cannot_let_the_agents_escapes_through(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    # hal's tmux server loaded a tmux.conf (the system's, and the one under the HOME it was
    # started with); one with `allow-passthrough on` let an agent's `ESC P tmux; ...` reach
    # the terminal of whoever attached, an OSC 52 clipboard write inside it past
    # `set-clipboard off`.
    home = Path(sandbox.home)  # type: ignore[attr-defined]  # the HOME tmux is started with
    home.mkdir(parents=True, exist_ok=True)
    (home / ".tmux.conf").write_text("set -g allow-passthrough on\nset -s set-clipboard on\n")
    manager = TmuxProcessManager()
    spec = spec_for(tmp_path, ArgvCommand(argv=("sleep", "5")))
    await manager.start(sandbox, spec)
    try:
        base = ["tmux", "-S", str(manager.socket(spec))]
        for scope, option in (("-s", "set-clipboard"), ("-g", "allow-passthrough")):
            shown = subprocess.run([*base, "show-options", scope, option],
                                   capture_output=True, text=True, check=True)  # fmt: skip
            assert shown.stdout.strip() == f"{option} off"
    finally:
        await manager.stop(spec)


@pytest.mark.tmux
async def test_a_users_tmux_conf_never_reaches_hals_sessions(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    # Nor any of its hooks, run-shell or options: loaded (tmux's default: /etc/tmux.conf,
    # ~/.tmux.conf, XDG's), they ran host commands in hal's sessions.
    home = tmp_path / "home"
    marker = tmp_path / "marker"
    for conf in (home / ".tmux.conf", home / ".config" / "tmux" / "tmux.conf"):
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(
            f'run-shell "echo loaded {conf} >> {marker}"\n'
            f"set-hook -g session-created 'run-shell \"echo hook >> {marker}\"'\n"
            "set-option -g remain-on-exit on\n"
        )
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    manager = TmuxProcessManager()
    spec = spec_for(tmp_path, ShellCommand(script=f'test "$HOME" = {home} && echo same-home'))
    await manager.start(sandbox, spec, env=env)
    try:
        assert await wait_exit(manager, spec) == 0
        assert "same-home" in spec.log_path.read_text(), "the server had that HOME"
    finally:
        await manager.stop(spec)
    assert not marker.exists(), marker.read_text()
