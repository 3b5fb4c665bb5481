"""Resume across two ssh hosts (two real sshd, in two network namespaces on 169.254.77.x and
169.254.78.x): a task stopped on host A, then A lost, carries on on host B from the work the
hal host kept; and a push streams the workspace instead of holding its tar in memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.sshd import Sshd, running_sshd
from tests.support.hal import git

from hal9999.providers.registry import load_provider
from hal9999.providers.ssh.provider import SshProvider
from hal9999.spec import ArgvCommand, SandboxSpec

pytestmark = [pytest.mark.ssh, pytest.mark.usefixtures("ssh_connections_closed")]


@pytest.fixture(scope="module")
def host_a() -> Iterator[Sshd]:
    with running_sshd("169.254.77") as server:
        yield server


@pytest.fixture(scope="module")
def host_b() -> Iterator[Sshd]:
    with running_sshd("169.254.78") as server:
        yield server


def toml_hosts(*servers: tuple[str, Sshd]) -> str:
    text = ""
    for name, server in servers:
        lines = [f"{k} = {json.dumps(v)}" for k, v in server.host_entry(name=name).items()]
        text += "[[providers.ssh.hosts]]\n" + "\n".join(lines) + "\n"
    return text


async def test_a_push_streams_the_workspace(host_a: Sshd, hal_home: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    with (workspace / "big.bin").open("wb") as out:
        for _ in range(96):
            out.write(os.urandom(1 << 20))
    provider = load_provider("ssh", state_dir=hal_home / "ssh",
                             settings={"hosts": [host_a.host_entry()]})  # fmt: skip
    assert isinstance(provider, SshProvider)
    spec = SandboxSpec(provider="ssh", network="none", workspace=workspace)
    async with await provider.create(spec) as sandbox:
        tracemalloc.start()
        try:
            await sandbox.push()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # 96 MiB went out; this process held a few MiB of it at a time at most.
        assert peak < 32 << 20, f"peak {peak >> 20} MiB"
        check = await sandbox.exec(ArgvCommand(argv=("sh", "-c", "wc -c < big.bin")))
        assert check.stdout.strip() == str(96 << 20).encode()


AGENT = (
    "sh -c 'if [ -f first.txt ]; then echo second > second.txt; "
    "else echo first > first.txt; sleep 120; fi'"
)


@pytest.mark.slow
def test_a_task_stopped_on_a_lost_host_resumes_on_another(host_b: Sshd, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README").write_text("hi\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "initial")
    config = tmp_path / "xdg" / "hal9999" / "config.toml"
    config.parent.mkdir(parents=True)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    environ |= {"HAL_HOME": str(tmp_path / "halhome"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}

    def hal(*args: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([sys.executable, "-m", "hal9999", *args], cwd=repo, env=environ,
                             capture_output=True, text=True, timeout=240,
                             stdin=subprocess.DEVNULL)  # fmt: skip
        assert "Traceback" not in out.stderr, out.stderr
        return out

    # Host A of its own (it is lost below): first in the list, so the task starts there.
    with running_sshd("169.254.77") as host_a:
        config.write_text(toml_hosts(("a", host_a), ("b", host_b)))
        started = hal("run", "--detach", "--provider", "ssh", "--agent", AGENT, "go")
        assert started.returncode == 0, started.stderr
        task_id = started.stdout.strip()
        mirrors_a = host_a.home / ".hal9999" / "sandboxes"
        deadline = time.monotonic() + 90
        while not list(mirrors_a.glob("*/ws/first.txt")):
            assert time.monotonic() < deadline, "the agent did not start on host a"
            time.sleep(0.2)
        stopped = hal("task", "stop", task_id, "--json")
        assert stopped.returncode == 0, stopped.stderr
    # Host A is gone now (its sshd, namespace and files). The hal host kept the work.
    session = tmp_path / "halhome" / "sessions" / task_id / "workspace"
    assert (session / "first.txt").read_text() == "first\n"
    resumed = hal("task", "resume", task_id, "--json")
    task = json.loads(resumed.stdout)
    assert task["status"] == "succeeded", (task["error_message"], resumed.stderr)
    # It ran on host B (A is unreachable), from the work made on A.
    assert (host_b.home / ".hal9999" / "sandboxes").is_dir()
    assert git(repo, "show", f"{task['branch']}:first.txt") == "first"
    assert git(repo, "show", f"{task['branch']}:second.txt") == "second"
