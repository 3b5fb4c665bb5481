"""PM2 INSIDE a sandbox that hosts daemons: a real Podman container (the docker provider)
with the host's node and the pinned PM2 of scripts/install-pm2.sh bound in read-only.

The process-manager contract (output and status, secrets masked and in no argv, stop kills
the tree, a missing program is 127) plus what is PM2's own: the restart policy, ``pm2 jlist``
and the output through ``logs()``, no payload left behind, the daemon inside the container.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.pm2_home import pm2_manager
from tests.support.process import spec_for, wait_exit

from hal9999.process.pm2 import Pm2ProcessManager
from hal9999.process.pm2inside import HOME
from hal9999.providers.docker.provider import DockerProvider
from hal9999.providers.registry import load_provider
from hal9999.spec import ArgvCommand, Bind, ProcessSpec, RestartPolicy, SandboxSpec, ShellCommand

pytestmark = [pytest.mark.podman, pytest.mark.pm2, pytest.mark.timeout(240)]

NODE_DIR = "/opt/hal-node"


def _pm2_prefix() -> Path:
    found = shutil.which("pm2")
    assert found is not None
    # .../hal-pm2/node_modules/.bin/pm2 -> the install prefix
    return Path(found).resolve().parents[2].parent


@pytest.fixture
async def manager() -> AsyncIterator[Pm2ProcessManager]:
    """The host-side PM2 daemon (it runs the supervisor of the follower) of this test."""
    async with pm2_manager() as pm2:
        yield pm2


@pytest.fixture
async def container(hal_home: Path, tmp_path: Path) -> AsyncIterator[object]:
    """A container with node and PM2 on its PATH (bound read-only from the host)."""
    provider = load_provider("docker", state_dir=hal_home / "sandboxes" / "docker")
    assert isinstance(provider, DockerProvider)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    node = Path(shutil.which("node") or "/usr/bin/node").resolve()
    prefix = _pm2_prefix()
    spec = SandboxSpec(
        provider="docker", network="none", workspace=workspace,
        binds=(Bind(source=node, target=f"{NODE_DIR}/node"),
               Bind(source=prefix, target=str(prefix))),
        env={"PATH": f"{prefix}/node_modules/.bin:{NODE_DIR}:/usr/local/bin:/usr/bin:/bin"},
    )  # fmt: skip
    sandbox = await provider.create(spec)
    try:
        yield sandbox
    finally:
        for info in await provider.list():
            await provider.destroy(info.id)


async def _inside(sandbox: object, script: str) -> str:
    result = await sandbox.exec(ShellCommand(script=script))  # type: ignore[attr-defined]
    return str(result.stdout.decode())


async def test_the_app_runs_under_a_pm2_daemon_inside_the_container(
    manager: Pm2ProcessManager, container: object, tmp_path: Path
) -> None:
    secret = "s3cret-value-inside-5678"
    spec = spec_for(tmp_path, ShellCommand(script='echo "key=$API_KEY"; echo oops >&2; '
                                                  "sleep 8; exit 7"))  # fmt: skip
    await manager.start(container, spec, env={"API_KEY": secret})  # type: ignore[arg-type]
    # The daemon is inside: `pm2 jlist` there lists the app, online, and the secret is in
    # no argv (PM2 keeps it in memory, as a tmux server does).
    jlist = f'test -S "$HOME/{HOME}/rpc.sock" && PM2_HOME="$HOME/{HOME}" pm2 jlist 2>/dev/null'
    found: list[dict[str, Any]] = []
    for _ in range(100):
        out = await _inside(container, jlist)
        listed = json.loads(out[out.index("[") :]) if "[" in out else []
        found = [a for a in listed if a["name"] == manager.app_name(spec)]
        if found:
            break
        await asyncio.sleep(0.2)
    [app] = found
    assert app["pm2_env"]["status"] == "online" and app["pm2_env"]["autorestart"] is False
    argvs = await _inside(container, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
    assert "PM2" in argvs and secret not in argvs
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            assert secret.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
    assert await wait_exit(manager, spec, timeout=60) == 7
    log = spec.log_path.read_text()
    assert "key=[REDACTED]" in log and "oops" in log and secret not in log
    # The payload (with the values) was read by PM2 and removed.
    left = await _inside(container, f'ls -a "$HOME/{HOME}"')
    assert f"{manager.app_name(spec)}.json" not in left, left
    assert secret not in await _inside(container, f'cat "$HOME/{HOME}"/*.json')
    logs = await manager.logs(spec, lines=20)
    assert "oops" in logs


async def test_restart_policy_acts_inside(
    manager: Pm2ProcessManager, container: object, tmp_path: Path
) -> None:
    spec = spec_for(tmp_path, ShellCommand(script="echo run; exit 3"))
    spec = spec.model_copy(update={"restart": RestartPolicy(mode="on-failure", max_restarts=2)})
    await manager.start(container, spec)  # type: ignore[arg-type]
    assert await wait_exit(manager, spec, timeout=90) == 3
    # The first run and two restarts, all inside; then PM2 gives up and the status comes back.
    assert spec.log_path.read_text().count("run") == 3


async def test_max_restarts_holds_inside_for_runs_longer_than_pm2s_min_uptime(
    manager: Pm2ProcessManager, container: object, tmp_path: Path
) -> None:
    # PM2 counts an exit toward max_restarts only when its run was shorter than min_uptime
    # (hal's was 5 s): runs failing after 5.5 s were restarted for ever.
    spec = spec_for(tmp_path, ShellCommand(script="echo run; sleep 5.5; exit 3"))
    spec = spec.model_copy(update={"restart": RestartPolicy(mode="on-failure", max_restarts=1)})
    await manager.start(container, spec)  # type: ignore[arg-type]
    assert await wait_exit(manager, spec, timeout=40) == 3
    assert spec.log_path.read_text().count("run") == 2, "the first run and one restart"


async def test_stop_kills_the_app_inside(
    manager: Pm2ProcessManager, container: object, tmp_path: Path
) -> None:
    spec = spec_for(tmp_path, ShellCommand(script="sleep 300 & echo $! > /tmp/child; wait"))
    await manager.start(container, spec)  # type: ignore[arg-type]
    for _ in range(200):
        if (await _inside(container, "cat /tmp/child 2>/dev/null")).strip():
            break
        await asyncio.sleep(0.1)
    child = (await _inside(container, "cat /tmp/child")).strip()
    assert (await manager.status(spec)).state == "running"
    await manager.stop(spec)
    for _ in range(100):
        if not (await _inside(container, f"kill -0 {child} 2>/dev/null && echo alive")).strip():
            break
        await asyncio.sleep(0.1)
    assert not (await _inside(container, f"kill -0 {child} 2>/dev/null && echo alive")).strip()
    assert "sleep 300" not in await _inside(container, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
    assert (await manager.status(spec)).state in ("exited", "missing")


async def test_a_missing_program_is_127(
    manager: Pm2ProcessManager, container: object, tmp_path: Path
) -> None:
    spec: ProcessSpec = spec_for(tmp_path, ArgvCommand(argv=("definitely-not-a-program-xyz",)))
    await manager.start(container, spec)  # type: ignore[arg-type]
    code = await wait_exit(manager, spec, timeout=60)
    assert code == 127, spec.log_path.read_text()
    assert "definitely-not-a-program-xyz" in spec.log_path.read_text()


async def test_an_agent_that_silences_its_pm2_daemon_cannot_hang_the_stop(
    manager: Pm2ProcessManager, container: object, tmp_path: Path, monkeypatch: Any
) -> None:
    """The daemon inside is the agent's: its home is under the agent's HOME. An agent that
    kills it and listens on its ``rpc.sock`` without answering made ``pm2 delete`` inside wait
    for ever, and with it the stop of a task that timed out (the task never ended, its
    container never went) and `hal task stop`."""
    from hal9999.process import pm2inside

    monkeypatch.setattr(pm2inside, "STOP_TIMEOUT_S", 3.0)
    home = f"$HOME/{HOME}"
    script = (
        f"node -e \"require('net').createServer(()=>{{}}).listen(process.argv[1])\" "
        f"{home}/mute.sock & "
        f"while ! test -S {home}/mute.sock; do sleep 0.1; done; "
        f"kill -9 $(cat {home}/pm2.pid); mv -f {home}/mute.sock {home}/rpc.sock; "
        "touch /tmp/muted; sleep 300"
    )
    spec = spec_for(tmp_path, ShellCommand(script=script))
    await manager.start(container, spec)  # type: ignore[arg-type]
    for _ in range(300):
        if (await _inside(container, "test -e /tmp/muted && echo yes")).strip():
            break
        await asyncio.sleep(0.1)
    assert (await _inside(container, "test -e /tmp/muted && echo yes")).strip() == "yes"
    # pm2 inside now waits for an answer that never comes (seen: `pm2 jlist` there hangs).
    await asyncio.wait_for(manager.stop(spec), timeout=60)
    assert (await manager.status(spec)).state in ("exited", "missing")


async def test_the_last_output_of_every_run_reaches_the_log(
    manager: Pm2ProcessManager, container: object, tmp_path: Path
) -> None:
    """PM2 copied the app's output to its log and destroyed its streams when the app exited,
    dropping what it had read but not yet written: the end of a run that printed fast and
    exited (an agent's last lines, its result) never reached hal. The app now appends to
    the log itself (pm2inside.APP)."""
    spec = spec_for(tmp_path, ShellCommand(script="seq 1 300000; exit 3"))
    spec = spec.model_copy(update={"restart": RestartPolicy(mode="on-failure", max_restarts=2)})
    await manager.start(container, spec)  # type: ignore[arg-type]
    assert await wait_exit(manager, spec, timeout=180) == 3
    lines = spec.log_path.read_text().splitlines()
    assert len(lines) == 900_000 and lines.count("300000") == 3, (len(lines), lines[-1])


async def test_an_app_killed_by_a_signal_is_not_a_success(
    manager: Pm2ProcessManager, container: object, tmp_path: Path
) -> None:
    """PM2 reports an app a signal ended as exit 0 (fork mode's ``code || 0``): an agent the
    OOM killer ended came back as a success. It is 128+n, as the supervisor reports it."""
    spec = spec_for(tmp_path, ShellCommand(script="echo dying; kill -9 $$"))
    await manager.start(container, spec)  # type: ignore[arg-type]
    assert await wait_exit(manager, spec, timeout=60) == 137
    assert "dying" in spec.log_path.read_text()
